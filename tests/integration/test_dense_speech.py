"""Dense speech (issue 18): long recordings whose pauses are all under segment.min_silence_s lose no
sentence. The project's own voices (the committed espeak-ng corpus), their own silence trimmed, read
with pauses of 0.4-1.0 s (5 minutes, 44.1 kHz stereo Ogg), and a recording with a 20 s stretch of no
pause at all; the same sentences as clips in the same job.

Measured on the 2-core box (whisper tiny.en, shipped defaults): long-form WER ~0.03-0.04, far under
the clips' ~0.06-0.12 (the joined speech gives the model context); the bound (clips + 0.02) and "no
sentence missing" fail when the model stops early inside a window and nothing recovers it.
`benchmarks/long_form.py --dense` compares the same with faster-whisper's own long-form decoding.
"""

from __future__ import annotations

import pytest

from operators.asr.coverage import FLAG_BELOW
from operators.output.report import word_errors
from pipelines import demo_corpus
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = [pytest.mark.integration, pytest.mark.speech]


def test_dense_recordings_lose_no_sentence(s3, ray_cluster, prefix):
    items = corpus()
    rows = []
    for e in items:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
    recordings = {
        "dense5min": demo_corpus.build_dense_recording(300.0, seed=100),
        "nopause": demo_corpus.build_dense_recording(100.0, seed=101, no_pause_s=20.0),
    }
    for name, (data, sentences, _) in recordings.items():
        put(s3, f"{prefix}/in/{name}.ogg", data)
        rows.append({"audio_id": name, "uri": f"{name}.ogg", "text": " ".join(sentences), "language": "en"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    result = run(job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out"))
    out = {r["audio_id"]: r for r in read_output(s3, result["output"])}
    assert result["ok"] == len(rows)
    clip_text = {e["text"]: out[e["audio_id"]]["text"] or "" for e in items}

    for name, (_, sentences, _) in recordings.items():
        row = out[name]
        e, n = word_errors(" ".join(sentences), row["text"])
        ce, cn = word_errors(" ".join(sentences), " ".join(clip_text[s] for s in sentences))
        missing = demo_corpus.missing_sentences(sentences, row["text"])
        print(f"{name}: WER {e / n:.4f} ({e}/{n}), the same sentences as clips {ce / cn:.4f}; "
              f"{len(row['segments'])} segments, coverage {row['coverage']}, missing {missing}")
        assert e / n <= ce / cn + 0.02, (name, e / n, ce / cn)
        assert missing == [], [sentences[k] for k in missing]
        assert row["coverage"] is not None and row["coverage"] >= FLAG_BELOW
        assert len(row["segment_coverage"]) == len(row["segments"])
        segs, dur = row["segments"], row["duration_s"]
        assert all(s["end_s"] - s["start_s"] <= 30.0 + 1e-6 for s in segs)
        assert segs[0]["start_s"] >= 0 and segs[-1]["end_s"] <= dur + 1e-6
        assert all(a["end_s"] <= b["start_s"] for a, b in zip(segs, segs[1:]))
    # the second tries are counted, and bounded by the audio the model heard
    assert result["redecoded_segments"] >= 0 and result["redecode_audio_seconds"] >= 0
    assert result["redecode_audio_seconds"] <= result["speech_seconds_kept"]
    assert result["redecoded_segments"] <= result["segments"]
