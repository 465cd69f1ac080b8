"""operators.audio.vad and segment.plan_speech: speech found, silence left out, segments joined to the backend's
target and cut only in pauses, file times kept; on real speech (the espeak-ng corpus) and synthetic music."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from operators.config import JobConfig, SegmentConfig
from operators.audio.decode import decode_audio, decode_batch, from_pcm16
from operators.audio.segment import file_bounds, plan_segments, plan_speech
from operators.io.sources import source_table
from operators.audio.vad import PROBE_EVERY, WINDOW, EnergyVAD, SileroVAD, resolve_method, silero_available, speech_regions
from pipelines import demo_corpus

SR = 16_000
CFG = SegmentConfig().for_backend(30.0, 30.0)
needs_silero = pytest.mark.skipif(not silero_available(), reason="silero-vad not installed")


@pytest.fixture(scope="module")
def recording():
    """~4 min: uneven pauses, a 6-15 s silence every 6th sentence, 20 s of music in the middle."""
    data, text, speech, tunes = demo_corpus.build_recording(240.0, seed=3, music_s=20.0)
    return decode_audio(data), speech, tunes


@pytest.fixture(scope="module")
def silero():
    """The default detector (segment.vad silero): the model only where window energy leaves it open."""
    return SileroVAD()


@pytest.fixture(scope="module")
def silero_full():
    """segment.vad silero_full: the model on every window (the detector before issue 19)."""
    return SileroVAD(gate=False)


def _flac_table(files: dict[str, np.ndarray | bytes]):
    """Source rows embedding each audio as FLAC (bytes pass as they are: a bad file)."""
    blobs = []
    for x in files.values():
        if isinstance(x, bytes):
            blobs.append(x)
            continue
        buf = io.BytesIO()
        sf.write(buf, x, SR, format="FLAC")
        blobs.append(buf.getvalue())
    return source_table(list(files), [f"mem://{n}.flac" for n in files], blobs=blobs)


def _free_backend():
    """The simulated backend at no cost: the stage's own work is what a test sees."""
    from operators.asr.simulated import SimulatedBackend
    from operators.config import ModelConfig

    return SimulatedBackend(ModelConfig(options={"rtfx": 1e9, "per_call_s": 0}))


def _kept(spans) -> list[tuple[float, float]]:
    return [(s / SR, e / SR) for s, e in zip(spans[0], spans[1])]


def _overlap(ranges, a, b) -> float:
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in ranges)


def _longest_quiet_run(audio: np.ndarray, level: float = 3e-3) -> float:
    """Longest stretch (s) of 10 ms frames whose peak is below `level`."""
    n = len(audio) // 160
    quiet = np.abs(audio[: n * 160].reshape(n, 160)).max(axis=1) < level
    d = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    runs = np.flatnonzero(d == -1) - np.flatnonzero(d == 1)
    return float(runs.max()) * 0.01 if len(runs) else 0.0


@pytest.mark.parametrize("method", [pytest.param("silero", marks=needs_silero),
                                    pytest.param("silero_full", marks=needs_silero), "energy"])
def test_speech_kept_long_silences_left_out(recording, request, method):
    audio, speech, tunes = recording
    det = request.getfixturevalue(method) if method != "energy" else EnergyVAD()
    spans = plan_speech(audio, CFG, det.probs([audio])[0])
    kept = _kept(spans)
    # every sentence is kept (its voiced part: espeak clips end in ~0.2 s of their own silence)
    for a, b in speech:
        assert _overlap(kept, a, b) >= 0.85 * (b - a), (a, b, kept)
    # the silences between sentences are not: nothing kept lies far from speech or music
    sounding = speech + tunes
    for s, e in kept:
        assert _overlap(sounding, s, e) > 0
    gaps = [(b0, a1) for (_, b0), (a1, _) in zip(speech, speech[1:]) if a1 - b0 > 5.0
            and _overlap(tunes, b0, a1) == 0]
    assert len(gaps) >= 3
    for a, b in gaps:  # only the pads and the clips' own trailing silence at each side
        assert _overlap(kept, a, b) <= 2 * CFG.pad_s + 0.6, (a, b)
    # and the joined audio the model gets has no long silence inside
    joined = np.concatenate([audio[s:e] for s, e in zip(spans[0], spans[1])])
    assert _longest_quiet_run(joined) < 1.5
    assert _longest_quiet_run(audio) > 5.0


@needs_silero
def test_silero_leaves_music_out_energy_does_not(recording, silero, silero_full):
    audio, _, tunes = recording
    (a, b), = tunes
    music_kept = {name: _overlap(_kept(plan_speech(audio, CFG, det.probs([audio])[0])), a, b)
                  for name, det in (("silero", silero), ("silero_full", silero_full), ("energy", EnergyVAD()))}
    assert music_kept["silero"] <= 0.1 * (b - a), music_kept
    assert music_kept["silero_full"] <= 0.1 * (b - a), music_kept
    assert music_kept["energy"] >= 0.9 * (b - a), music_kept  # the fallback's known limit (README)


@needs_silero
def test_batched_probabilities_agree_with_one_sequential_pass(recording, silero_full):
    import torch

    silero = silero_full
    audio = recording[0][: 90 * SR]
    batched = silero.probs([audio, audio[: 7 * SR]])
    silero.model.reset_states()
    padded = np.pad(audio, (0, (-len(audio)) % WINDOW))
    with torch.inference_mode():
        seq = silero.model.audio_forward(torch.from_numpy(padded)[None], SR).numpy()[0]
    assert len(batched[0]) == len(seq)
    assert np.mean((batched[0] >= 0.5) != (seq >= 0.5)) < 0.01
    mine, theirs = speech_regions(batched[0], len(audio), CFG), speech_regions(seq, len(audio), CFG)
    assert len(mine) == len(theirs)
    for (a, b), (c, d) in zip(mine, theirs):  # edges within two windows (64 ms)
        assert abs(a - c) <= 2 * WINDOW and abs(b - d) <= 2 * WINDOW
    # a file's speech does not depend on what else is in the block (probabilities to float noise)
    alone = silero.probs([audio[: 7 * SR]])[0]
    np.testing.assert_allclose(batched[1], alone, atol=1e-4)
    assert speech_regions(batched[1], 7 * SR, CFG) == speech_regions(alone, 7 * SR, CFG)


def test_regions_hysteresis_short_pauses_and_blips():
    p = np.zeros(400, np.float32)
    p[10:60] = 0.9          # speech
    p[60:65] = 0.1          # 160 ms pause: bridged (min_silence 0.5 s)
    p[65:120] = 0.45        # between the thresholds: stays speech
    p[120:200] = 0.0        # 2.6 s pause: a cut
    p[200:203] = 0.95       # 96 ms blip: dropped (min_speech 0.25 s)
    p[300:350] = 0.8
    cfg = CFG.model_copy(update={"pad_s": 0.0})
    regions = speech_regions(p, 400 * WINDOW, cfg)
    assert regions == [(10 * WINDOW, 120 * WINDOW), (300 * WINDOW, 350 * WINDOW)]
    padded = speech_regions(p, 400 * WINDOW, CFG)
    pad = int(CFG.pad_s * SR)
    assert padded == [(10 * WINDOW - pad, 120 * WINDOW + pad), (300 * WINDOW - pad, 350 * WINDOW + pad)]


def _probs_for(regions_s: list[tuple[float, float]], total_s: float) -> np.ndarray:
    p = np.zeros(int(total_s * SR) // WINDOW, np.float32)
    for a, b in regions_s:
        p[int(a * SR) // WINDOW: int(b * SR) // WINDOW] = 1.0
    return p


def test_regions_join_up_to_target_and_cut_only_between_them():
    rng = np.random.default_rng(0)
    t, regions = 0.5, []
    while t < 200:
        length = rng.uniform(1.0, 9.0)
        regions.append((t, t + length))
        t += length + rng.uniform(0.6, 4.0)
    total = t + 1
    audio = (0.1 * rng.standard_normal(int(total * SR))).astype(np.float32)
    cfg = SegmentConfig(target_segment_s=20.0, max_segment_s=30.0, pad_s=0.1, min_silence_s=0.5)
    ss, se, gs, ge = plan_speech(audio, cfg, _probs_for(regions, total))
    assert ss == sorted(ss) and all(a < b for a, b in zip(ss, se)) and all(b <= c for b, c in zip(se, ss[1:]))
    kept_at = np.concatenate([[0], np.cumsum(np.subtract(se, ss))]).tolist()
    lengths = [(e - s) / SR for s, e in zip(gs, ge)]
    assert gs[0] == 0 and ge[-1] == kept_at[-1] and all(b == c for b, c in zip(ge, gs[1:]))
    assert all(x <= 20.0 + 1e-9 for x in lengths)
    # cuts only where one kept range ends and the next begins (a pause), never inside one
    assert set(gs) <= set(kept_at)
    # joined greedily: no two neighbours would have fitted in one segment
    assert all(a + b > 20.0 for a, b in zip(lengths, lengths[1:]))
    # file times: each segment starts where a region (padded) starts and ends where one ends
    fs, fe = file_bounds(gs, ge, ss, se)
    assert set(fs) <= set(ss) and set(fe) <= set(se)
    assert all(a < b for a, b in zip(fs, fe)) and all(b <= c for b, c in zip(fe, fs[1:]))


def test_a_region_over_the_target_is_cut_inside_at_its_quietest_point():
    audio, silences = __import__("audio_fixtures").pause_clip([5.0, 6.5, 4.0, 6.0, 4.5, 5.5, 6.2, 4.2],
                                                              pause_s=0.3)
    n = len(audio)
    cfg = SegmentConfig(target_segment_s=20.0, max_segment_s=25.0, min_silence_s=0.5)
    ss, se, gs, ge = plan_speech(audio, cfg, np.ones(-(-n // WINDOW), np.float32))  # all speech
    # one region, kept whole, in pieces that meet: kept offsets are file offsets
    assert ss[0] == 0 and se[-1] == n and se[:-1] == ss[1:]
    # cut before the target (not only past the maximum), in a pause: its quietest 200 ms
    assert max(e - s for s, e in zip(gs, ge)) <= 20 * SR and len(gs) >= 3
    for cut in gs[1:]:
        assert any(a <= cut <= b for a, b in silences)


def test_vad_none_keeps_everything_and_silence_is_nothing():
    audio = __import__("audio_fixtures").tone(70.0)
    ss, se, gs, ge = plan_speech(audio, CFG, None)
    assert (ss, se) == ([0], [len(audio)]) and (gs, ge) == tuple(map(list, plan_segments(audio, CFG)))
    assert plan_speech(np.zeros(SR * 5, np.float32), CFG, np.zeros(156, np.float32)) == ([], [], [], [])
    # speech nowhere (the detector found none): no segment, an empty transcript later
    noise = (1e-2 * np.random.default_rng(0).standard_normal(SR * 5)).astype(np.float32)
    assert plan_speech(noise, CFG, np.zeros(157, np.float32)) == ([], [], [], [])


def test_file_bounds_map_a_segment_end_to_its_own_range():
    ss, se = [1000, 5000, 9000], [2000, 6000, 9500]   # kept: 0-1000, 1000-2000, 2000-2500
    assert file_bounds([0, 1000], [1000, 2500], ss, se) == ([1000, 5000], [2000, 9500])
    assert file_bounds([0], [2500], ss, se) == ([1000], [9500])
    assert file_bounds([0], [500], [], []) == ([0], [500])


@needs_silero
def test_decode_batch_carries_only_the_kept_audio(recording, silero):
    audio, speech, _ = recording
    clip = audio[: 60 * SR]
    table = _flac_table({"rec": clip, "bad": b"xx"})
    rows = decode_batch(table, JobConfig(segment=CFG), silero).to_pylist()
    r, bad = rows
    assert bad["status"] == "error" and bad["speech_start"] == []
    kept = from_pcm16(r["pcm16"])
    assert len(kept) == sum(e - s for s, e in zip(r["speech_start"], r["speech_end"])) == r["seg_end"][-1]
    assert r["duration_s"] == pytest.approx(60.0, abs=0.01)
    assert r["perf_speech_s"] == pytest.approx(len(kept) / SR)
    assert 0.3 < r["perf_speech_s"] / r["duration_s"] < 0.9
    assert r["perf_vad_cpu_s"] > 0
    assert r["perf_vad"] == bad["perf_vad"] == "silero on decode CPU"
    # the kept audio is the file's own samples at the kept ranges, exactly (float: scale 32767 vs the
    # file's 32768)
    src = sf.read(io.BytesIO(table.column("audio_bytes")[0].as_py()), dtype="int16")[0]
    s, e = r["speech_start"][1], r["speech_end"][1]
    at = r["speech_end"][0] - r["speech_start"][0]
    np.testing.assert_array_equal(np.frombuffer(r["pcm16"], "<i2")[at: at + (e - s)], src[s:e])
    np.testing.assert_allclose(kept[at: at + (e - s)], clip[s:e], atol=2 / 32767)


def test_vad_method_resolution_names_the_fix(monkeypatch):
    import operators.audio.vad as vad

    assert resolve_method("energy") == "energy" and resolve_method("none") == "none"
    monkeypatch.setattr(vad, "silero_available", lambda: False)
    assert vad.resolve_method("auto") == "energy"
    with pytest.raises(ValueError, match="pip install silero-vad"):
        vad.resolve_method("silero")
    with pytest.raises(ValueError, match="pip install silero-vad"):
        vad.resolve_method("silero_full")
    with pytest.raises(ValueError, match="target_segment_s"):
        SegmentConfig(target_segment_s=40, max_segment_s=30)


def test_summary_reports_speech_kept_and_model_time_saved():
    import pyarrow as pa

    from operators.output.report import Summary, block_stats, format_summary

    rows = pa.Table.from_pylist([{"status": "ok", "error": None, "duration_s": 100.0, "segments": [], "text": "",
                                  "reference": None, "language": "en"}] * 2)
    perf = pa.Table.from_pylist([
        {"perf_read_at": 1.0, "perf_decode_cpu_s": 0.5, "perf_vad_cpu_s": 0.2, "perf_speech_s": 40.0,
         "perf_vad": "silero on decode CPU",
         "perf_asr_busy_s": 4.0, "perf_actor": "a", "perf_actor_started": 0.5, "perf_actor_ready": 0.9,
         "perf_call_first": 1.5, "perf_call_last": 5.0},
        {"perf_read_at": 1.2, "perf_decode_cpu_s": 0.5, "perf_vad_cpu_s": 0.2, "perf_speech_s": 60.0,
         "perf_asr_busy_s": 6.0, "perf_actor": "a", "perf_actor_started": 0.5, "perf_actor_ready": 0.9,
         "perf_call_first": 1.5, "perf_call_last": 5.5}])
    summary = Summary()
    summary.add(block_stats(rows, "x.parquet", perf))
    s = summary.as_dict(10.0)
    assert s["audio_seconds"] == 200.0 and s["speech_seconds_kept"] == 100.0 and s["speech_fraction"] == 0.5
    # 10 model-seconds for 100 s heard: the 100 s left out would have cost ~10 more
    assert s["model_seconds_saved_est"] == pytest.approx(10.0)
    assert s["cpu_seconds_per_audio_hour"]["vad"] == pytest.approx(0.4 / (200 / 3600))
    # where it ran, its share of decode, and the decode cores a GPU at 4000x needs: 1 CPU-s for 200 s
    assert s["vad"] == {"ran": ["silero on decode CPU"], "share_of_decode_cpu": pytest.approx(0.4),
                        "asr_actor_seconds": 0.0}
    assert s["cpus_per_gpu_needed_at"] == {"rtfx": 4000.0, "decode": pytest.approx(4000 * 1.0 / 200),
                                           "asr_actor": 0.0}
    assert "cpus_per_gpu_needed_at" in format_summary(s)


def test_summary_reports_voice_activity_on_the_actor_and_the_audio_carried():
    import pyarrow as pa

    from operators.output.report import Summary, block_stats, format_summary

    rows = pa.Table.from_pylist([{"status": "ok", "error": None, "duration_s": 1800.0, "segments": [],
                                  "text": "", "reference": None, "language": "en"}] * 2)
    row = {"perf_read_at": 1.0, "perf_decode_cpu_s": 0.25, "perf_vad_cpu_s": 0.0, "perf_speech_s": 900.0,
           "perf_vad": "silero on ASR actor cuda", "perf_carried_bytes": 1800 * 32000,
           "perf_asr_busy_s": 0.4, "perf_asr_cpu_s": 0.1, "perf_asr_vad_cpu_s": 0.04, "perf_asr_vad_s": 0.02,
           "perf_actor": "a", "perf_actor_started": 0.5, "perf_actor_ready": 0.9, "perf_call_first": 1.5,
           "perf_call_last": 2.0}
    summary = Summary()
    summary.add(block_stats(rows, "x.parquet", pa.Table.from_pylist([row, row])))
    s = summary.as_dict(10.0)   # one audio-hour
    cpu = s["cpu_seconds_per_audio_hour"]
    assert cpu["decode"] == pytest.approx(0.5) and cpu["vad"] == 0.0
    assert cpu["asr_actor_overhead"] == pytest.approx(0.2) and cpu["asr_actor_vad"] == pytest.approx(0.08)
    assert s["vad"] == {"ran": ["silero on ASR actor cuda"], "share_of_decode_cpu": 0.0,
                        "asr_actor_seconds": pytest.approx(0.04)}
    assert s["cpus_per_gpu_needed_at"]["decode"] == pytest.approx(4000 * 0.5 / 3600)
    assert s["cpus_per_gpu_needed_at"]["asr_actor"] == pytest.approx(4000 * 0.2 / 3600)
    # the whole audio as pcm16: 115.2 MB per audio-hour, 128 MB/s into a GPU at 4000x
    assert s["carried_to_asr"] == {"mb_per_audio_hour": pytest.approx(115.2),
                                   "mb_per_s_at_rtfx": pytest.approx(128.0)}
    assert "carried_to_asr" in format_summary(s)


def test_where_voice_activity_runs_is_resolved_on_the_driver():
    from operators.config import ConfigError, load_config
    from operators.audio.vad import resolve_where
    from pipelines.transcribe import segment_config

    # auto: the ASR actors only where they take GPUs, the detector is a model and the GPU nodes are short
    # of CPUs (on an H200 the actor's silero cost the stage 1.31x its wall; a decode core is cheaper)
    assert resolve_where("auto", "silero", 1, "auto", cpus_per_gpu=2) == "actor"
    assert resolve_where("auto", "silero_full", 0.5, "cuda", cpus_per_gpu=3.9) == "actor"
    assert resolve_where("auto", "silero", 1, "auto", cpus_per_gpu=4) == "decode"
    assert resolve_where("auto", "silero", 1, "cuda", cpus_per_gpu=16) == "decode"
    assert resolve_where("auto", "silero", 1, "auto") == "decode"      # no GPU node seen yet
    assert resolve_where("actor", "silero", 1, "auto", cpus_per_gpu=16) == "actor"   # as the user says
    # decode on CPU-only nodes (decode.avoid_gpu_nodes): a core there is cheap, the silence would cross
    # the network
    assert resolve_where("auto", "silero", 1, "auto", decode_apart=True, cpus_per_gpu=2) == "decode"
    assert resolve_where("actor", "silero", 1, "auto", decode_apart=True) == "actor"
    assert resolve_where("auto", "silero", 0, "auto", cpus_per_gpu=2) == "decode"   # CPU actors
    assert resolve_where("auto", "silero", 1, "cpu", cpus_per_gpu=2) == "decode"    # the model on CPU
    assert resolve_where("auto", "energy", 1, "auto", cpus_per_gpu=2) == "decode"   # nothing for a GPU
    assert resolve_where("auto", "none", 1, "auto") == "decode"
    assert resolve_where("actor", "energy", 0, "cpu") == "actor"       # as the user says
    assert resolve_where("decode", "silero", 1, "cuda") == "decode"
    assert resolve_where("actor", "none", 1, "cuda") == "decode"       # no detector: nothing to move
    seg = segment_config(load_config(overrides=["segment.vad=energy", "asr.num_gpus=1"]), cpus_per_gpu=2)
    assert (seg.vad, seg.vad_on) == ("energy", "decode")
    seg = segment_config(load_config(overrides=["segment.vad=silero", "asr.num_gpus=1"]), cpus_per_gpu=2)
    assert (seg.vad, seg.vad_on) == ("silero", "actor")
    seg = segment_config(load_config(overrides=["segment.vad=silero", "asr.num_gpus=1"]), cpus_per_gpu=16)
    assert (seg.vad, seg.vad_on) == ("silero", "decode")
    seg = segment_config(load_config(overrides=["segment.vad=energy", "segment.vad_on=actor"]))
    assert (seg.vad, seg.vad_on) == ("energy", "actor")
    with pytest.raises(ConfigError, match=r"segment\.vad_on"):
        load_config(overrides=["segment.vad_on=gpu"])


@needs_silero
def test_speech_found_on_the_asr_actor_gives_what_decode_gives(recording, silero):
    """segment.vad_on actor: decode carries the whole audio unplanned and runs no detector; the ASR
    actor finds speech and plans it; transcripts, segments, kept ranges and speech kept are those of
    decode's voice activity (the same gated detector, the same block), with a real model (whisper)."""
    from operators.asr.stage import ASRStage

    audio, _, _ = recording
    clip = audio[30 * SR: 75 * SR]      # speech, a long silence, speech
    table = _flac_table({"rec": clip, "quiet": np.zeros(3 * SR, np.float32), "short": audio[:4 * SR],
                         "bad": b"not audio"})
    seg = CFG.model_copy(update={"vad": "silero"})
    cfg_decode = JobConfig(segment=seg.model_copy(update={"vad_on": "decode"}))
    cfg_actor = JobConfig(segment=seg.model_copy(update={"vad_on": "actor"}))
    planned, whole = decode_batch(table, cfg_decode, silero), decode_batch(table, cfg_actor, None)
    p, w = planned.to_pylist(), whole.to_pylist()
    # decode in actor mode: the whole audio, no plan, no detector CPU
    assert len(from_pcm16(w[0]["pcm16"])) == len(clip) and w[0]["seg_start"] == w[0]["speech_start"] == []
    assert {r["perf_vad"] for r in w} == {"on the ASR actor"} and all(r["perf_vad_cpu_s"] == 0 for r in w)
    assert w[0]["perf_carried_bytes"] == 2 * len(clip) > p[0]["perf_carried_bytes"] > 0
    assert w[3]["status"] == p[3]["status"] == "error"

    on_decode = ASRStage(cfg_decode)
    on_actor = ASRStage(cfg_actor, backend=on_decode.backend)
    assert on_decode.detector is None and on_actor.vad_where == "silero on ASR actor cpu"
    a, b = on_decode(planned).to_pylist(), on_actor(whole).to_pylist()
    assert [r["status"] for r in b] == ["ok", "ok", "ok", "error"]
    assert b[3]["error"] == a[3]["error"]
    for x, y in zip(a, b):
        assert y["text"] == x["text"] and y["segments"] == x["segments"]
        assert y["perf_speech_s"] == pytest.approx(x["perf_speech_s"])
    assert b[1]["segments"] == [] and b[1]["text"] == ""     # silence: nothing heard
    assert a[0]["segments"] and len(a[0]["text"].split()) > 20
    assert a[0]["perf_speech_s"] < 0.8 * len(clip) / SR       # the silence was left out on both paths
    assert b[0]["perf_vad"] == "silero on ASR actor cpu" and b[0]["perf_asr_vad_cpu_s"] > 0
    assert b[0]["perf_asr_vad_s"] > 0 and a[0]["perf_asr_vad_s"] == 0


def test_times_inside_a_segment_map_across_the_silence_left_out():
    from operators.audio.segment import to_file_samples

    ss, se = [1000, 5000, 9000], [2000, 6000, 9500]   # kept: 0-1000, 1000-2000, 2000-2500
    assert to_file_samples([0, 999, 1000, 1500, 2499], ss, se).tolist() == [1000, 1999, 5000, 5500, 9499]
    assert to_file_samples([1000, 2000, 2500], ss, se, ends=True).tolist() == [2000, 6000, 9500]


def _one_to_one_edges(mine, theirs) -> list[float]:
    """For each of `theirs` that overlaps exactly one of `mine`: the larger of its two edge offsets (s)."""
    out = []
    for s, e in theirs:
        hit = [(a, b) for a, b in mine if min(b, e) > max(a, s)]
        if len(hit) == 1:
            out.append(max(abs(hit[0][0] - s), abs(hit[0][1] - e)))
    return out


@needs_silero
@pytest.mark.parametrize("seed,noise_db,music_s", [(3, -65.0, 20.0), (4, -45.0, 12.0), (5, -35.0, 30.0)])
def test_gated_silero_finds_the_regions_silero_full_finds(silero, silero_full, seed, noise_db, music_s):
    """The default path (the model only where energy leaves the answer open) against the model on every
    window, on 4-minute recordings of speech, uneven pauses, long silences, music and a noise floor
    from faint to loud: the same speech kept, the same music left out, edges within the pad, and the
    model run on a fraction of the windows."""
    data, _, speech, tunes = demo_corpus.build_recording(240.0, seed=seed, music_s=music_s, noise_db=noise_db)
    audio = decode_audio(data)
    silero.windows_run = silero.windows_seen = 0
    mine = [(s / SR, e / SR) for s, e in speech_regions(silero.probs([audio])[0], len(audio), CFG)]
    used = silero.windows_run / silero.windows_seen
    theirs = [(s / SR, e / SR) for s, e in speech_regions(silero_full.probs([audio])[0], len(audio), CFG)]
    kept_mine, kept_theirs = sum(e - s for s, e in mine), sum(e - s for s, e in theirs)
    assert abs(kept_mine / kept_theirs - 1) <= 0.04, (kept_mine, kept_theirs)
    assert abs(len(mine) - len(theirs)) <= 2, (mine, theirs)
    for s, e in theirs:   # what the full model keeps, the gate keeps
        assert _overlap(mine, s, e) >= 0.85 * (e - s), (s, e, mine)
    for s, e in mine:     # and it keeps nothing the full model leaves out (but the edges' slack)
        assert _overlap(theirs, s, e) >= 0.9 * (e - s), (s, e, theirs)
    edges = _one_to_one_edges(mine, theirs)
    assert len(edges) >= 0.8 * len(theirs) and max(edges) <= CFG.pad_s + 2 * WINDOW / SR, edges
    for a, b in speech:   # every sentence heard, the music not
        assert _overlap(mine, a, b) >= 0.85 * (b - a), (a, b)
    (a, b), = tunes
    assert _overlap(mine, a, b) <= 0.1 * (b - a)
    assert used <= (0.45 if noise_db < -60 else 0.75), used   # full: 1.1 (warm-up included)


@needs_silero
def test_gated_silero_runs_the_model_on_an_eighth_of_plain_speech(silero, silero_full):
    """Speech as the capacity benchmark's corpus holds it (sentences and 0.5 s pauses, 2-35 s files):
    the same regions as the full model's, from under an eighth of the windows (0.109; 0.141 with
    4-window probes); a quiet file and a file 45 dB down (a quiet speaker) are judged like the full
    model judges them."""
    rng = np.random.default_rng(0)
    clips = [demo_corpus.load(e) for e in demo_corpus.entries()]
    files = []
    for n in range(12):
        parts = []
        while sum(map(len, parts)) < rng.uniform(2, 35) * SR:
            parts += [clips[rng.integers(len(clips))], np.zeros(SR // 2, np.float32)]
        files.append(np.concatenate(parts))
    files += [np.zeros(20 * SR, np.float32), files[0] * 10 ** (-45 / 20)]
    silero.windows_run = silero.windows_seen = 0
    mine = silero.probs(files)
    assert silero.windows_run <= 0.125 * silero.windows_seen
    theirs = silero_full.probs(files)
    same = 0
    for audio, p, q in zip(files, mine, theirs):
        a, b = speech_regions(p, len(audio), CFG), speech_regions(q, len(audio), CFG)
        kept_a, kept_b = sum(e - s for s, e in a), sum(e - s for s, e in b)
        assert abs(kept_a - kept_b) <= 0.05 * max(kept_b, SR), (kept_a, kept_b)
        same += len(a) == len(b) and all(abs(x - y) <= CFG.pad_s * SR and abs(u - v) <= CFG.pad_s * SR
                                         for (x, u), (y, v) in zip(a, b))
    assert same >= len(files) - 1
    assert speech_regions(mine[-2], 20 * SR, CFG) == []
    assert [len(p) for p in silero.probs([np.zeros(0, np.float32), np.zeros(100, np.float32)])] == [0, 1]


@needs_silero
def test_the_actors_threads_share_one_detector(recording):
    """An ASR actor runs asr.concurrent_batches calls at once, all on its one detector (whose model keeps
    recurrent state on itself): batches run together give what they give one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from operators.asr.stage import ASRStage

    audio, _, _ = recording
    # batches of 1-3 files: the model's batch size differs per call
    tables = [_flac_table({f"f{k}-{j}": audio[(20 * k + 7 * j) * SR: (20 * k + 7 * j + 25 + 5 * j) * SR]
                           for j in range(1 + k % 3)}) for k in range(6)]
    cfg = JobConfig(segment=CFG.model_copy(update={"vad": "silero", "vad_on": "actor"}))
    whole = [decode_batch(t, cfg, None) for t in tables]
    st = ASRStage(cfg, backend=_free_backend())
    alone = [st(t).to_pylist() for t in whole]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            together = list(pool.map(lambda t: st(t).to_pylist(), whole))
            for a, b in zip(alone, together):
                assert [(r["status"], r["segments"]) for r in b] == [(r["status"], r["segments"]) for r in a]


@needs_silero
def test_the_actor_runs_the_detector_on_groups_of_bounded_size(recording, monkeypatch):
    """A batch of many long files goes to the detector a group at a time (stage.VAD_GROUP_SAMPLES of
    audio, or one file where a file is longer): the same plans as all at once, never all files held whole."""
    import operators.asr.stage as stage_mod
    from operators.asr.stage import ASRStage

    audio, _, _ = recording
    lengths = [40, 15, 25, 60, 5, 30]
    table = _flac_table({f"f{k}": audio[10 * k * SR: (10 * k + n) * SR] for k, n in enumerate(lengths)})
    cfg = JobConfig(segment=CFG.model_copy(update={"vad": "silero", "vad_on": "actor"}))
    whole = decode_batch(table, cfg, None)
    st = ASRStage(cfg, backend=_free_backend())
    at_once = st(whole).to_pylist()
    calls = []
    probs = st.detector.probs
    monkeypatch.setattr(st.detector, "probs", lambda audios: calls.append([len(a) for a in audios]) or probs(audios))
    monkeypatch.setattr(stage_mod, "VAD_GROUP_SAMPLES", 50 * SR)
    grouped = st(whole).to_pylist()
    assert [(r["segments"], r["perf_speech_s"]) for r in grouped] == [(r["segments"], r["perf_speech_s"])
                                                                      for r in at_once]
    assert [len(c) for c in calls] == [2, 2, 2]          # 40+15 | 25+60 | 5+30
    assert all(sum(c) - c[-1] < 50 * SR for c in calls)  # a group closes once it reaches the bound


class _BrokenOnDevice:
    """A detector whose device failed (as a CUDA fault would): every call raises."""

    name = "silero"

    def probs(self, audios):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@needs_silero
def test_a_detector_that_fails_on_the_gpu_runs_on_the_actors_cpu(recording, silero, monkeypatch, caplog):
    """On the ASR actor, a detector that cannot load on cuda, or whose call fails there, runs on the
    actor's CPU instead: every row still gets the speech decode would have found."""
    import operators.asr.stage as stage_mod
    from operators.asr.stage import ASRStage

    audio, _, _ = recording
    table = _flac_table({"rec": audio[30 * SR: 70 * SR]})
    seg = CFG.model_copy(update={"vad": "silero"})
    cfg_actor = JobConfig(segment=seg.model_copy(update={"vad_on": "actor"}))
    planned = decode_batch(table, JobConfig(segment=seg), silero)
    whole = decode_batch(table, cfg_actor, None)
    backend = _free_backend()
    expected = ASRStage(JobConfig(segment=seg), backend=backend)(planned).to_pylist()[0]

    real = stage_mod.make_detector
    tried = []

    def cuda_refuses(method, segment, device="cpu", threads=1):
        tried.append(device)
        if device == "cuda":
            raise RuntimeError("Found no NVIDIA driver on your system")
        return real(method, segment, device=device, threads=threads)

    monkeypatch.setattr(stage_mod, "detector_device", lambda _: "cuda")
    monkeypatch.setattr(stage_mod, "make_detector", cuda_refuses)
    st = ASRStage(cfg_actor, backend=backend)
    assert tried == ["cuda", "cpu"] and st.vad_where == "silero on ASR actor cpu"

    # loaded on cuda, then a call fails there: that batch and the rest run on the CPU
    st.detector, st.vad_where = _BrokenOnDevice(), "silero on ASR actor cuda"
    out = st(whole).to_pylist()[0]
    assert out["status"] == "ok" and out["perf_vad"] == "silero on ASR actor cpu"
    assert out["segments"] == expected["segments"] and out["perf_speech_s"] == expected["perf_speech_s"]
    assert "runs on this actor's CPU from now on" in caplog.text
    # on the CPU a failing detector is not hidden: the batch fails (Ray Data retries it)
    st.detector, st.vad_where = _BrokenOnDevice(), "silero on ASR actor cpu"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        st(whole)


def _pcm16_cases(recording):
    """int16 samples as decode carries them: the recording (music, long silences), a short file ending
    inside a window, a file shorter than one window, and none."""
    from operators.audio.pcm import pcm16_samples

    audio = recording[0]
    return [pcm16_samples(a) for a in (audio, audio[: 7 * SR + 123], audio[SR: SR + 300], audio[:0])]


@needs_silero
@pytest.mark.parametrize("gate", [True, False])
def test_silero_on_int16_samples_hears_what_it_hears_on_their_float(recording, gate):
    """decode hands the detector int16 samples and it converts only the pieces the model hears: the
    probabilities are those of the whole files converted first (pcm16_float), to the bit."""
    from operators.audio.pcm import pcm16_float

    det = SileroVAD(gate=gate)
    cases = _pcm16_cases(recording)
    on_int16 = det.probs(cases)
    on_float = det.probs([pcm16_float(x) for x in cases])
    assert [len(p) for p in on_int16] == [-(-len(x) // WINDOW) for x in cases]
    assert all(np.array_equal(a, b) for a, b in zip(on_int16, on_float))
    assert on_int16[0].max() > 0.9 and on_int16[0].min() < 0.1   # speech and non-speech both there


def test_energy_and_planner_on_int16_samples_match_their_float(recording):
    """EnergyVAD, window levels and plan_speech (silence check, cuts by energy inside long regions)
    take int16 samples and give what they give on pcm16_float of them."""
    from operators.audio.pcm import pcm16_float, peak
    from operators.audio.vad import window_power

    cases = _pcm16_cases(recording)
    floats = [pcm16_float(x) for x in cases]
    for x, f in zip(cases, floats):
        assert np.array_equal(window_power(x), window_power(f))
        assert peak(x) == (float(np.abs(f).max()) if len(f) else 0.0)
    assert peak(np.array([-32768, 5], np.int16)) == float(np.float32(32768) / np.float32(32767))
    energy = EnergyVAD()
    assert all(np.array_equal(a, b) for a, b in zip(energy.probs(cases), energy.probs(floats)))
    cfg = CFG.model_copy(update={"min_silence_s": 30.0})   # regions over the target: cut by energy
    for x, f in zip(cases, floats):
        p = energy.probs([f])[0]
        assert plan_speech(x, cfg, p) == plan_speech(f, cfg, p)
        assert plan_speech(x, CFG, None) == plan_speech(f, CFG, None)
    assert len(plan_speech(cases[0], cfg, energy.probs([floats[0]])[0])[2]) > 4


@needs_silero
def test_a_short_quiet_end_does_not_send_the_file_to_the_model_window_by_window(silero, silero_full):
    """Files ending in a pause shorter than a long quiet one (0.5 s of digital silence after the last
    sentence, as ~4 % of the capacity corpus does): the probe of that last quiet block used to hear
    silence and run the whole file densely (half the model's CPU on that corpus). Its windows are
    now no speech without the model; the regions stay silero_full's."""
    clips = [demo_corpus.load(e) for e in demo_corpus.entries()]
    pause = np.zeros(16 * WINDOW, np.float32)
    files = []
    for k in range(6):   # speech cut to end 8 windows before a PROBE_EVERY block
        speech = np.concatenate([clips[k % len(clips)], pause, clips[(k + 3) % len(clips)]])
        blocks = len(speech) // (PROBE_EVERY * WINDOW)
        files.append(np.concatenate([speech[: (blocks * PROBE_EVERY - 8) * WINDOW], pause]))
    silero.windows_run = silero.windows_seen = 0
    mine = silero.probs(files)
    assert silero.windows_run <= 0.15 * silero.windows_seen, silero.windows_run / silero.windows_seen
    theirs = silero_full.probs(files)
    for audio, p, q in zip(files, mine, theirs):
        a, b = speech_regions(p, len(audio), CFG), speech_regions(q, len(audio), CFG)
        assert len(a) == len(b) and all(abs(x - y) <= CFG.pad_s * SR and abs(u - v) <= CFG.pad_s * SR
                                        for (x, u), (y, v) in zip(a, b)), (a, b)
        assert q[-5:].max() < 0.1                      # the model hears no speech in the quiet end
    # where the last block fell in the quiet end (blocks count from the stretch's start), no speech
    assert sum(p[-5:].max() == 0.0 for p in mine) >= 3
