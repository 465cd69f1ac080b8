"""A manifest row reaches only what the job was pointed at: the whole job on a local Ray cluster reading
from the real S3 server (SeaweedFS). Rows that climb out of the manifest's prefix, name a scheme outside
input.allowed_schemes, or are unsafe / oversized tar members or Parquet cells are error rows of an
input kind; every other row is transcribed; nothing is requested from elsewhere."""

from __future__ import annotations

import gzip
import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.output.report import wer
from operators.schema import error_kind
from pipelines.transcribe import run
from tests.counting_http import CountingServer
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = pytest.mark.integration
CAP = 1 << 20


@pytest.fixture
def http_hits():
    """A real HTTP server on loopback serving audio; (the paths requested from it, its URL)."""
    server = CountingServer(clip_bytes(corpus(1)[0]))
    yield server.hits, server.url
    server.close()


def _by_id(s3, result) -> dict[str, dict]:
    return {r["audio_id"]: r for r in read_output(s3, result["output"])}


def _ok(row: dict, text: str) -> None:
    assert row["status"] == "ok", row
    assert wer(text, row["text"]) <= 0.34, (row["text"], text)


def test_manifest_rows_stay_inside_the_prefix(s3, ray_cluster, prefix, http_hits):
    hits, url = http_hits
    items = corpus(2)
    for e in items:
        put(s3, f"{prefix}/in/clips/{e['uri']}", clip_bytes(e))
    put(s3, f"{prefix}/private/secret.flac", clip_bytes(items[0]))   # readable, outside the prefix
    rows = [{"audio_id": "good0", "audio_filepath": f"clips/{items[0]['uri']}", "text": items[0]["text"]},
            {"audio_id": "escape", "audio_filepath": "../private/secret.flac"},
            {"audio_id": "escape2", "audio_filepath": "clips/../../private/secret.flac"},
            {"audio_id": "http", "audio_filepath": f"{url}/calls/x.flac"},
            {"audio_id": "ftp", "audio_filepath": "ftp://127.0.0.1/x.flac"},
            {"audio_id": "good1", "audio_filepath": f"clips/sub/../{items[1]['uri']}", "text": items[1]["text"]}]
    put(s3, f"{prefix}/in/m.jsonl", jsonl(rows))
    result = run(job_config(f"{prefix}/in/m.jsonl", f"{prefix}/out"))
    out = _by_id(s3, result)
    assert set(out) == {r["audio_id"] for r in rows}
    _ok(out["good0"], items[0]["text"])
    _ok(out["good1"], items[1]["text"])
    assert result["errors_by_kind"] == {"input_path": 2, "input_scheme": 2}
    assert {k: error_kind(out[k]["error"]) for k in ("escape", "escape2", "http", "ftp")} == {
        "escape": "input_path", "escape2": "input_path", "http": "input_scheme", "ftp": "input_scheme"}
    assert out["escape"]["duration_s"] is None and out["escape"]["source_uri"] == "../private/secret.flac"
    assert hits == []                                   # never a request


def test_allowed_schemes_narrowed_to_the_object_store(s3, ray_cluster, prefix, tmp_path):
    items = corpus(1)
    put(s3, f"{prefix}/in/{items[0]['uri']}", clip_bytes(items[0]))
    local = tmp_path / "node-local.flac"
    local.write_bytes(clip_bytes(items[0]))                # would transcribe fine if it were read
    rows = [{"audio_id": "good", "audio_filepath": items[0]["uri"], "text": items[0]["text"]},
            {"audio_id": "local", "audio_filepath": str(local)},
            {"audio_id": "local-url", "audio_filepath": f"file://{local}"}]
    put(s3, f"{prefix}/in/m.jsonl", jsonl(rows))
    result = run(job_config(f"{prefix}/in/m.jsonl", f"{prefix}/out", "input.allowed_schemes=[s3]"))
    out = _by_id(s3, result)
    _ok(out["good"], items[0]["text"])
    assert result["errors_by_kind"] == {"input_scheme": 2}
    assert "'file' is not allowed" in out["local"]["error"]


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_unsafe_and_oversized_tar_members(s3, ray_cluster, prefix):
    items = corpus(2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "a.flac", clip_bytes(items[0]))
        _add(tar, "a.txt", items[0]["text"].encode())
        _add(tar, "../up.flac", clip_bytes(items[0]))
        _add(tar, "/abs/root.flac", clip_bytes(items[0]))
        _add(tar, "sym.flac", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, "hard.flac", kind=tarfile.LNKTYPE, link="a.flac")
        _add(tar, "bomb.flac", bytes(8 * CAP))           # 8 MiB of zeros: a few KiB gzipped
        _add(tar, "b.flac", clip_bytes(items[1]))
        _add(tar, "b.txt", items[1]["text"].encode())
    shard = gzip.compress(buf.getvalue())
    assert len(shard) < CAP
    put(s3, f"{prefix}/shards/s0.tar", shard)
    result = run(job_config(f"{prefix}/shards/", f"{prefix}/out", "input.format=webdataset",
                            f"input.max_member_bytes={CAP}"))
    out = _by_id(s3, result)
    _ok(out["s0/a"], items[0]["text"])
    _ok(out["s0/b"], items[1]["text"])                   # after the bad members: not lost
    assert result["errors_by_kind"] == {"input_member": 4, "input_too_large": 1}
    assert error_kind(out["s0/bomb"]["error"]) == "input_too_large"
    assert {error_kind(out[k]["error"]) for k in ("s0/../up", "s0//abs/root", "s0/sym", "s0/hard")} == {
        "input_member"}


def test_oversized_parquet_cells(s3, ray_cluster, prefix):
    items = corpus(2)
    cells = [{"bytes": clip_bytes(items[0]), "path": "a.flac"}, {"bytes": bytes(8 * CAP), "path": "bomb.flac"},
             {"bytes": clip_bytes(items[1]), "path": "b.flac"}]
    table = pa.table({"audio": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "text": [items[0]["text"], None, items[1]["text"]]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    assert len(buf.getvalue()) < CAP
    put(s3, f"{prefix}/hf/train.parquet", buf.getvalue())
    result = run(job_config(f"{prefix}/hf/", f"{prefix}/out", "input.format=hf_parquet",
                            f"input.max_member_bytes={CAP}"))
    out = _by_id(s3, result)
    _ok(out["train.parquet/a.flac"], items[0]["text"])
    _ok(out["train.parquet/b.flac"], items[1]["text"])
    assert result["errors_by_kind"] == {"input_too_large": 1}
    assert "input.max_member_bytes" in out["train.parquet/bomb.flac"]["error"]
