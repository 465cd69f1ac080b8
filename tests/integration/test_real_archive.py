"""A real archive, listed and transcribed as it is (issue 20, part 1): a bucket holding recordings of the
kinds call, meeting and LDC archives hold (telephone WAV codecs, studio WAV, NIST SPHERE, AIFF, MP4 with
video, WebM, 3GP, WMA and the usual formats) under keys with spaces, unicode, brackets, `+ # % = ,`,
plus non-audio and hidden files, through the whole job from `--input s3://bucket/` with the defaults."""

from __future__ import annotations

import io
import uuid

import pytest
import soundfile as sf
import yaml

from operators import storage
from operators.config import InputConfig
from operators.output.report import wer
from pipelines.transcribe import main, run
from tests.archive_fixtures import ARCHIVE, FORMS, HIDDEN, NEW_EXTENSION_FORMS, NON_AUDIO, encode
from tests.integration.conftest import ROOT, clip_bytes, corpus, job_config, put, read_output

pytestmark = [pytest.mark.integration, pytest.mark.speech]

BROKEN = "misc/broken download.mp4"  # an audio extension, bytes no decoder reads: an error row
# form -> the demo-corpus clip it carries: clips tiny.en hears right at 16 kHz, and for the telephone
# band (8 kHz WAV codecs, SPHERE, AMR) clips it also hears right at 8 kHz, so a WER above the bar means
# the decoding went wrong, not the model
CLIP = {"wav_ulaw_8k": 16, "wav_alaw_8k": 5, "wav_gsm_8k": 6, "sph": 10, "3gp": 11, "wav_pcm24_96k": 0,
        "wav_float": 1, "wav_5_1": 2, "aiff": 4, "mp4": 7, "webm": 8, "wma": 13, "flac": 14, "ogg": 17,
        "opus": 18, "mp3": 3, "m4a": 12, "wav": 0}
LEFT_OUT = {
    "hidden": {"files": 3, "examples": [".DS_Store", "_SUCCESS", "meetings/._Zoom meeting.mp4"]},
    ".jpg": {"files": 1, "examples": ["notes/cover [art].jpg"]},
    ".txt": {"files": 1, "examples": ["notes/meeting notes, Q3.txt"]},
    "no_extension": {"files": 1, "examples": ["README"]},
}


@pytest.fixture
def archive(s3) -> tuple[str, dict]:
    """A fresh bucket holding the archive at its root; {key: (form, text, duration_s)}."""
    bucket = f"archive-{uuid.uuid4().hex[:8]}"
    s3.make_bucket(bucket)
    expected = {}
    clips = corpus()
    for form, key in ARCHIVE.items():
        e = clips[CLIP[form]]
        audio, sr = sf.read(io.BytesIO(clip_bytes(e)), dtype="float32")
        put(s3, f"s3://{bucket}/{key}", encode(form, audio, sr))
        expected[key] = (form, e["text"], e["duration"])
    put(s3, f"s3://{bucket}/{BROKEN}", "a truncated download: an HTML error page, not audio\n" * 10)
    for key, data in (NON_AUDIO | HIDDEN).items():
        put(s3, f"s3://{bucket}/{key}", data)
    return f"s3://{bucket}/", expected


def test_odd_keys_round_trip_through_both_s3_clients(s3, archive):
    """Listing and fetching keys with spaces, unicode, brackets, + # % = , on the real server: through
    pyarrow's S3 client (the default) and through s3fs (options only s3fs understands)."""
    root, expected = archive
    listed = storage.list_files_detail(root, extensions=InputConfig().extensions)
    keys = [storage.relative_id(u, root) for u in listed]
    assert sorted(keys) == sorted([*expected, BROKEN])
    data = {k: s3.filesystem().cat_file(f"{root}{k}".removeprefix("s3://")) for k in expected}
    for opts in (None, {**s3.storage_options, "default_fill_cache": False}):
        assert (storage.arrow_s3(opts) is None) == (opts is not None)
        got = storage.fetch_many(list(listed), opts)
        for k, blob in zip(keys, got):
            assert not isinstance(blob, Exception), (k, blob)
            assert k == BROKEN or blob == data[k], k


def test_archive_at_bucket_root_is_transcribed_as_it_is(s3, ray_cluster, prefix, archive, capsys):
    root, expected = archive
    config = str(ROOT / "configs" / "demo.yaml")

    # --plan: what will be read, and what the listing left out by reason, before any audio is read
    assert main(["--config", config, "--input", root, "--output", f"{prefix}/out", "--plan"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)["input"]
    seen = len(expected) + 1 + len(NON_AUDIO) + len(HIDDEN)
    assert plan["form"] == "AudioFilesSource" and plan["listed"] == len(expected) + 1
    assert plan["files_seen"] == seen and plan["files_left_out"] == 6 and plan["left_out_by"] == LEFT_OUT

    result = run(job_config(root, f"{prefix}/out", "ray.progress_bars=false"))
    rows = {r["audio_id"]: r for r in read_output(s3, result["output"])}
    assert sorted(rows) == sorted([*expected, BROKEN])  # one row per recording, none missing
    assert {expected[k][0] for k in rows if k in expected} == set(FORMS)
    assert {ARCHIVE[f] for f in NEW_EXTENSION_FORMS} <= set(rows)
    assert rows[BROKEN]["status"] == "error" and rows[BROKEN]["error"].startswith("undecodable:")

    scores = {}
    for key, (form, text, duration) in expected.items():
        r = rows[key]
        assert r["status"] == "ok", (form, r["error"])
        assert abs(r["duration_s"] - duration) < 0.15, (form, r["duration_s"], duration)
        assert r["source_uri"] == f"{root}{key}"
        scores[form] = (round(wer(text, r["text"]), 3), r["text"])
    print("WER by form:", {f: w for f, (w, _) in sorted(scores.items())})
    assert all(w <= 0.34 for w, _ in scores.values()), scores
    assert sum(w for w, _ in scores.values()) / len(scores) <= 0.1, scores

    # the summary: every file seen, what was transcribed, and what was left out by reason
    assert result["input_files_seen"] == seen
    assert result["inputs_listed"] == len(expected) + 1
    assert result["files"] == len(expected) + 1 and result["ok"] == len(expected)
    assert result["errors_by_kind"] == {"undecodable": 1}
    assert result["input_files_left_out"] == 6 and result["input_left_out_by"] == LEFT_OUT
    summary = s3.filesystem().cat_file(f"{result['output']}/_summary.json".removeprefix("s3://"))
    assert b'"input_left_out_by"' in summary
