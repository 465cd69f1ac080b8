"""The whole job with --backend granite-nar on a tiny random checkpoint in the hub layout (local Ray
cluster + real S3 server). Random weights give garbage text: the test checks structure, not words,
and that the two published layouts of the BPE CTC head give the same transcripts with no setting."""

from __future__ import annotations

import pytest

from operators.asr.granite_nar.tiny import build_tiny_checkpoint, move_bpe_blank
from pipelines import demo_corpus
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = pytest.mark.integration


def test_granite_nar_job(s3, ray_cluster, prefix, tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "granite-nar-tiny", seed=0)
    items = corpus(4)
    rows = []
    for e in items:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "language": "en"})
    long_bytes, _ = demo_corpus.build_long_file(70.0)      # cut into <= 30 s segments
    put(s3, f"{prefix}/in/long.flac", long_bytes)
    rows.append({"audio_id": "long", "uri": "long.flac", "language": "en"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "asr.backend=granite-nar",
                     f"asr.model.id={ckpt}", "asr.num_cpus=0.5")
    result = run(cfg)
    out = read_output(s3, result["output"])
    ids = [r["audio_id"] for r in out]
    assert sorted(ids) == sorted(r["audio_id"] for r in rows)       # every id exactly once
    assert result["ok"] == len(rows)
    for r in out:
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["model"] == str(ckpt) and r["model_revision"].startswith("local-")
        assert isinstance(r["text"], str) and r["text"]
        assert isinstance(r["ctc_text"], str) and r["ctc_text"]
        assert r["agreement"] is not None and 0.0 <= r["agreement"] <= 1.0
        assert r["segments"] and r["segments"][0]["start_s"] == 0.0
    long = next(r for r in out if r["audio_id"] == "long")
    assert len(long["segments"]) >= 3

    # the same model as the current hub snapshots hold it (head vocab wide, blank = blank_token_id)
    moved = move_bpe_blank(ckpt, tmp_path / "granite-nar-tiny-vocab-wide")
    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out-moved", "asr.backend=granite-nar",
                     f"asr.model.id={moved}", "asr.num_cpus=0.5")
    again = {r["audio_id"]: r for r in read_output(s3, run(cfg)["output"])}
    assert sorted(again) == sorted(ids)
    for r in out:
        assert (again[r["audio_id"]]["text"], again[r["audio_id"]]["ctc_text"]) == (r["text"], r["ctc_text"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_backend_that_fails_inside_the_actor_ends_the_job_in_one_line(s3, ray_cluster, prefix, tmp_path):
    """A failure only the actor can see (here: CUDA asked for on a machine without it, as a driver
    mismatch would) passes the driver's checkpoint check and ends the job with one line."""
    from pipelines.transcribe import JobFailed

    ckpt = build_tiny_checkpoint(tmp_path / "granite-nar-tiny", seed=0)
    e = corpus(1)[0]
    put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl([{"audio_id": e["audio_id"], "uri": e["uri"]}]))
    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "asr.backend=granite-nar",
                     f"asr.model.id={ckpt}", "asr.num_cpus=0.5", "asr.model.device=cuda")
    with pytest.raises(JobFailed) as info:
        run(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the granite-nar backend could not load on ") and "CUDA" in message
    assert read_output(s3, f"{prefix}/out") == []          # nothing claimed done
