"""Real speech (the committed espeak-ng corpus) through the whole job with the offline Whisper model.

Measured on this machine (tiny.en int8, CPU, 2 cores): clip WER 0.110 (18 errors in 163 normalised
reference words; tiny.en on isolated 3 s robot-voice clips) and long-file WER 0.013 (6/463: the
30 s windows give the model context). The bound leaves room for CPU/thread differences only; a broken
decode, resample, segmentation or stitching pushes WER far past it.
"""

from __future__ import annotations

import pytest

from operators.report import word_errors
from pipelines import demo_corpus
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = [pytest.mark.integration, pytest.mark.speech]

CLIP_WER_BOUND = 0.15


def test_espeak_corpus_and_long_file_wer(s3, ray_cluster, prefix):
    items = corpus()
    rows = []
    for e in items:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
    long_bytes, long_text = demo_corpus.build_long_file(240.0)
    put(s3, f"{prefix}/in/long.flac", long_bytes)
    rows.append({"audio_id": "long", "uri": "long.flac", "text": long_text, "language": "en"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    result = run(job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out"))
    out = {r["audio_id"]: r for r in read_output(s3, result["output"])}
    assert result["ok"] == len(rows)

    errors = words = 0
    for e in items:
        err, n = word_errors(e["text"], out[e["audio_id"]]["text"])
        errors, words = errors + err, words + n
    clip_wer = errors / words
    long = out["long"]
    long_err, long_words = word_errors(long_text, long["text"])
    long_wer = long_err / long_words
    print(f"clip WER {clip_wer:.4f} ({errors}/{words}); long WER {long_wer:.4f} "
          f"({long_err}/{long_words}) over {len(long['segments'])} segments")

    assert clip_wer <= CLIP_WER_BOUND
    assert long_wer <= clip_wer + 0.05
    # the long file was cut into <= 30 s segments that tile it, in time order
    segs = long["segments"]
    assert len(segs) >= 240 / 30
    assert segs[0]["start_s"] == 0 and abs(segs[-1]["end_s"] - long["duration_s"]) < 0.01
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segs, segs[1:]))
    assert all(s["end_s"] - s["start_s"] <= 30.0 + 1e-6 for s in segs)
