"""The job end to end with the granite-ar backend (a tiny random checkpoint in a local directory) on the
local Ray cluster and the S3 server: translation columns written, per-row overrides from the manifest,
every id exactly once. Random weights: structure is asserted, not words."""

from __future__ import annotations

import pytest

from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = pytest.mark.integration

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from operators.asr.granite_ar import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("granite-ar-job"))


def test_granite_ar_job_writes_translation_columns(s3, ray_cluster, prefix, tiny_ckpt):
    items = corpus(5)
    rows = []
    for e in items:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
    rows[1].update(task="translate", target_language="de")           # no transcript, German
    rows[2].update(task="transcribe", keywords=["Granite", "Ray"])  # keyword-biased transcript only
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "asr.backend=granite-ar",
                     f"asr.model.id={tiny_ckpt}", "asr.model.device=cpu", "asr.task=transcribe+translate",
                     "asr.target_language=ja", "asr.batch_size=4", "asr.num_cpus=0.5")
    result = run(cfg)
    assert result["files"] == len(items) and result["ok"] == len(items), result
    assert result["backend"] == "granite-ar" and result["model"] == str(tiny_ckpt)

    out = read_output(s3, result["output"])
    assert sorted(r["audio_id"] for r in out) == sorted(e["audio_id"] for e in items)  # each id once
    by_id = {r["audio_id"]: r for r in out}
    for i, e in enumerate(items):
        r = by_id[e["audio_id"]]
        assert r["status"] == "ok" and r["error"] is None, r["error"]
        assert r["backend"] == "granite-ar" and r["model_revision"].startswith("local-")
        assert r["segments"] and r["segments"][0]["start_s"] == 0.0
        assert {"text", "translation"} <= set(r["segments"][0])
        if i == 1:
            assert (r["task"], r["target_language"]) == ("translate", "de")
            assert r["text"] is None and isinstance(r["translation"], str)
        elif i == 2:
            assert (r["task"], r["target_language"], r["translation"]) == ("transcribe", None, None)
            assert isinstance(r["text"], str)
        else:
            assert (r["task"], r["target_language"]) == ("transcribe+translate", "ja")
            assert isinstance(r["text"], str) and isinstance(r["translation"], str)
            assert r["translation"] == "".join(s["translation"] for s in r["segments"])

    import pyarrow.parquet as pq

    fs = s3.filesystem()
    part = next(p for p in fs.find(result["output"].removeprefix("s3://")) if p.endswith(".parquet"))
    with fs.open(part, "rb") as f:
        schema = pq.read_schema(f)
    from operators.schema import SCHEMA_VERSION

    assert schema.metadata[b"granite_transcribe.schema_version"] == SCHEMA_VERSION.encode()
    assert {"task", "target_language", "translation"} <= set(schema.names)
