"""The simulated accelerator and the summary's feeding figures (busy fraction, fill, drain, CPU per
audio-hour), computed from the timing the stages carry with the rows."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from operators.asr import check_model, load_backend
from operators.asr.checks import ModelCheckError
from operators.config import ModelConfig
from operators.output.report import Summary, block_stats
from operators.schema import ASR_OUT_SCHEMA, OK


def test_simulated_backend_sleeps_like_an_accelerator():
    b = load_backend("simulated", ModelConfig(options={"rtfx": 100, "per_call_s": 0.02}))
    clips = [np.zeros(16000 * 3, np.float32), np.zeros(16000 * 2, np.float32)]   # 5 s of audio
    t, c = time.perf_counter(), time.process_time()
    out = b.transcribe(clips, ["en", "en"])
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert [o.text for o in out] == ["", ""]
    assert 0.07 - 0.005 <= wall < 0.07 + 0.05          # 0.02 + 5 / 100
    assert cpu < 0.02                                   # it sleeps: no CPU
    assert (b.model_id, b.revision) == ("simulated", "rtfx100-call0.02s")
    assert b.transcribe([], []) == []
    with pytest.raises(ValueError, match="exceeds"):
        b.transcribe([np.zeros(16000 * 300, np.float32)], ["en"])


def test_simulated_options_are_checked_on_the_driver():
    assert "4000x" in check_model("simulated", ModelConfig())
    with pytest.raises(ModelCheckError, match="unknown simulated options"):
        check_model("simulated", ModelConfig(options={"speed": 2}))
    with pytest.raises(ModelCheckError, match="rtfx > 0"):
        check_model("simulated", ModelConfig(options={"rtfx": 0}))


def _block(ids, read_at, actor, started, ready, first, last, busy, audio_s=10.0):
    n = len(ids)
    rows = [{"audio_id": i, "status": OK, "duration_s": audio_s, "text": "", "segments": [],
             "perf_read_at": read_at, "perf_decode_cpu_s": 0.5, "perf_asr_busy_s": busy / n,
             "perf_asr_cpu_s": 0.1, "perf_actor": actor, "perf_actor_started": started,
             "perf_actor_ready": ready, "perf_call_first": first, "perf_call_last": last} for i in ids]
    t = pa.Table.from_pylist(rows, schema=pa.schema([ASR_OUT_SCHEMA.field(k) for k in rows[0]]))
    perf = t.select([c for c in t.column_names if c.startswith("perf_")])
    return t, perf


def test_feeding_figures_from_block_timing(monkeypatch):
    import operators.output.report as report

    s = Summary()
    # actor A starts at 100, is ready at 101; two blocks; actor B starts at 102; the last file is
    # written at 120 (time.time() inside block_stats)
    for ids, read_at, actor, started, ready, first, last, busy, written in [
        (["a", "b"], 100.5, "A", 100.0, 101.0, 102.0, 110.0, 8.0, 111.0),
        (["c"], 101.0, "A", 100.0, 101.0, 110.0, 118.0, 7.0, 119.0),
        (["d"], 103.0, "B", 102.0, 102.5, 104.0, 119.0, 15.0, 120.0),
    ]:
        monkeypatch.setattr(report.time, "time", lambda w=written: w)
        t, perf = _block(ids, read_at, actor, started, ready, first, last, busy)
        s.add(block_stats(t, "x", perf, write_cpu_s=0.2))
    d = s.as_dict(25.0, job_started=98.0)
    assert d["pipeline_wall_seconds"] == pytest.approx(120.0 - 100.5)
    assert d["model_busy_seconds"] == pytest.approx(30.0)
    # alive: A 100 -> 120 (20 s), B 102 -> 120 (18 s)
    assert d["model_busy_fraction"] == pytest.approx(30.0 / 38.0)
    assert d["asr_actors_seen"] == 2 and d["model_load_seconds"] == pytest.approx(1.0)
    assert d["first_model_call_after_first_read_s"] == pytest.approx(102.0 - 100.5)
    assert d["first_model_call_after_job_start_s"] == pytest.approx(4.0)
    assert d["last_file_written_after_last_model_call_s"] == pytest.approx(1.0)
    hours = 4 * 10.0 / 3600
    cpu = d["cpu_seconds_per_audio_hour"]
    assert cpu["decode"] == pytest.approx(4 * 0.5 / hours)
    assert cpu["asr_actor_overhead"] == pytest.approx(4 * 0.1 / hours)
    assert cpu["write"] == pytest.approx(3 * 0.2 / hours)
