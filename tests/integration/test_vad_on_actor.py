"""segment.vad_on: voice activity on the ASR actor (where a GPU actor runs it) against voice activity on
the decode workers, through the whole job on local Ray and a real S3 server, with the offline Whisper
model: the same transcripts and segments, the decode workers spend no CPU on speech, the actors do, and
the summary says where it ran and what the silence cost to carry."""

from __future__ import annotations

import pytest

from operators.audio.vad import silero_available
from pipelines import demo_corpus
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = [pytest.mark.integration, pytest.mark.speech,
              pytest.mark.skipif(not silero_available(), reason="silero-vad not installed")]


def test_speech_found_on_the_actor_transcribes_as_on_decode(s3, ray_cluster, prefix):
    rows = []
    for e in corpus(6):
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
    data, text, _, _ = demo_corpus.build_recording(120.0, seed=8, long_silence_every=3)
    put(s3, f"{prefix}/in/rec.ogg", data)
    rows.append({"audio_id": "rec", "uri": "rec.ogg", "text": text, "language": "en"})
    put(s3, f"{prefix}/in/broken.flac", b"fLaC but not really")
    rows.append({"audio_id": "broken", "uri": "broken.flac", "text": "", "language": "en"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    results, outs = {}, {}
    for where in ("decode", "actor"):
        results[where] = r = run(job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out-{where}",
                                            "segment.vad=silero", f"segment.vad_on={where}"))
        outs[where] = {x["audio_id"]: x for x in read_output(s3, r["output"])}
        cpu = r["cpu_seconds_per_audio_hour"]
        print(where, {k: r[k] for k in ("vad", "carried_to_asr", "speech_fraction", "wer")}, cpu)
    d, a = results["decode"], results["actor"]
    assert d["ok"] == a["ok"] == len(rows) - 1 and a["errors_by_kind"] == d["errors_by_kind"]
    for k, x in outs["decode"].items():
        y = outs["actor"][k]
        assert (y["status"], y["text"], y["segments"]) == (x["status"], x["text"], x["segments"]), k
    assert d["wer"] == a["wer"] < 0.2
    assert d["vad"]["ran"] == ["silero on decode CPU"] and a["vad"]["ran"] == ["silero on ASR actor cpu"]
    assert d["cpu_seconds_per_audio_hour"]["vad"] > 0 and a["cpu_seconds_per_audio_hour"]["vad"] == 0
    assert a["cpu_seconds_per_audio_hour"]["asr_actor_vad"] > 0 and a["vad"]["asr_actor_seconds"] > 0
    assert d["cpu_seconds_per_audio_hour"]["asr_actor_vad"] == 0
    # the same audio heard; the actor path carried the silence too: the whole audio, 115.2 MB per hour
    assert a["speech_seconds_kept"] == pytest.approx(d["speech_seconds_kept"])
    assert a["carried_to_asr"]["mb_per_audio_hour"] == pytest.approx(115.2, rel=1e-3)
    assert d["carried_to_asr"]["mb_per_audio_hour"] == pytest.approx(115.2 * d["speech_fraction"], rel=1e-3)
    assert d["speech_fraction"] < 0.9
