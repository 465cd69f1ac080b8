"""A manifest row reaches only what the job was pointed at (local files; the S3 side is in
tests/integration/test_input_safety.py): paths that climb out of the manifest's folder, schemes
outside input.allowed_schemes, unsafe tar members and oversized tar members / Parquet cells become
error rows of an input kind; nothing else in the input is lost, nothing is fetched or written."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import audio_fixtures as af
from operators.config import ConfigError, InputConfig, JobConfig, load_config
from operators.audio.decode import decode_batch
from operators.schema import error_kind
from operators.io.sources import (HFParquetSource, ManifestSource, WebDatasetSource, resolve_row_path,
                               split_source_error)
from tests.counting_http import CountingServer

WAV = af.encode(af.tone(0.5), af.SR, "wav")


def _decode(table: pa.Table, **input_fields) -> dict[str, dict]:
    cfg = JobConfig(input=InputConfig(**input_fields))
    return {r["audio_id"]: r for r in decode_batch(table, cfg).to_pylist()}


@pytest.fixture
def http_server():
    server = CountingServer(WAV)
    yield server
    server.close()


# ------------------------------------------------------------------ manifests


def _manifest(tmp_path, paths: list[str]):
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    (data / "clips" / "a.wav").write_bytes(WAV)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "x.wav").write_bytes(WAV)   # readable, but outside the manifest's folder
    rows = [{"audio_id": f"r{i}", "audio_filepath": p} for i, p in enumerate(paths)]
    (data / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data / "m.jsonl"


def test_manifest_rows_that_escape_or_use_other_schemes_are_error_rows(tmp_path, http_server):
    paths = ["clips/a.wav", "../private/x.wav", "clips/../../private/x.wav", "clips/../clips/a.wav",
             f"{http_server.url}/x.wav", "data:audio/wav;base64,UklGRg==", "ftp://127.0.0.1/x.wav",
             f"simplecache::file://{tmp_path}/private/x.wav", "clips/a.wav::http://127.0.0.1/x",
             f"clips/x/y.wav::file://{tmp_path}/private/x.wav"]
    manifest = _manifest(tmp_path, paths)
    table = ManifestSource(InputConfig(uri=str(manifest))).list_units()
    rows = _decode(table)
    assert [rows[f"r{i}"]["status"] for i in range(len(paths))] == \
        ["ok", "error", "error", "ok", "error", "error", "error", "error", "error", "error"]
    kinds = {k: error_kind(r["error"]) for k, r in rows.items() if r["error"]}
    assert kinds == {"r1": "input_path", "r2": "input_path", "r4": "input_scheme", "r5": "input_scheme",
                     "r6": "input_scheme", "r7": "input_scheme", "r8": "input_scheme", "r9": "input_path"}
    assert "input.allowed_schemes" in rows["r4"]["error"] and "'http'" in rows["r4"]["error"]
    assert "outside the manifest's folder" in rows["r1"]["error"]
    assert rows["r1"]["source_uri"] == "../private/x.wav"   # as written, never resolved
    assert rows["r3"]["source_uri"] == str(tmp_path / "data" / "clips" / "a.wav")
    assert http_server.hits == []                           # never a request


def test_allowed_schemes_lets_the_user_opt_in(tmp_path, http_server):
    manifest = _manifest(tmp_path, ["clips/a.wav", f"{http_server.url}/x.wav",
                                    str(tmp_path / "private" / "x.wav")])
    # the user allows http: the row is fetched from the server and transcribable
    table = ManifestSource(InputConfig(uri=str(manifest), allowed_schemes=["file", "http"])).list_units()
    rows = _decode(table)
    assert rows["r1"]["status"] == "ok" and http_server.hits == ["/x.wav"]
    # a list replaces the default: object-store-only means local absolute paths are refused too
    table = ManifestSource(InputConfig(uri=str(manifest), allowed_schemes=["s3"])).list_units()
    errs = dict(zip(table["audio_id"].to_pylist(), table["source_error"].to_pylist()))
    assert errs["r0"] is None                  # relative rows stay inside the folder: allowed
    assert errs["r1"].startswith("input_scheme:") and errs["r2"].startswith("input_scheme:")


def test_default_schemes_follow_the_input():
    assert InputConfig(uri="/data/m.jsonl").schemes() >= {"file", "s3", "gs"}
    assert "memory" in InputConfig(uri="memory://b/m.jsonl").schemes()
    assert "http" not in InputConfig(uri="s3://b/m.jsonl").schemes()
    assert "https" in InputConfig(uri="https://host/m.jsonl").schemes()
    assert resolve_row_path("a/../b.wav", "s3://bk/m", {"s3"}) == ("s3://bk/m/b.wav", None)
    assert resolve_row_path("..", "s3://bk/m", {"s3"})[1].startswith("input_path:")


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match=r"input\.allowed_schemes: .*'s3 ://x' is not a URI scheme"):
        load_config(None, ["input.allowed_schemes=['s3 ://x']"])
    with pytest.raises(ConfigError, match=r"input\.max_member_bytes"):
        load_config(None, ["input.max_member_bytes=0"])
    assert load_config(None, ["input.allowed_schemes=[S3, https://]"]).input.allowed_schemes == ["s3", "https"]


def test_source_error_kinds():
    assert split_source_error("input_path: 'x' escapes") == ("input_path", "'x' escapes")
    assert split_source_error("ReadError: not a tar") == ("source", "ReadError: not a tar")
    assert split_source_error("fetch: pretend") == ("source", "fetch: pretend")


# ------------------------------------------------------------------ tar shards


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
def test_unsafe_tar_members_are_error_rows_and_nothing_is_written(tmp_path, monkeypatch, compressed):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "good/a.wav", WAV)
        _add(tar, "good/a.txt", b"hello")
        _add(tar, "../evil.wav", WAV)
        _add(tar, f"{tmp_path}/abs/evil.wav", WAV)
        _add(tar, "sym.wav", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, "hard.wav", kind=tarfile.LNKTYPE, link="good/a.wav")
        _add(tar, "fifo.wav", kind=tarfile.FIFOTYPE)
        _add(tar, "bomb.wav", bytes(3 << 20))           # 3 MiB of zeros: tiny once gzipped
        _add(tar, "bomb2.txt", bytes(3 << 20))
        _add(tar, "later/b.wav", WAV)
    raw = gzip.compress(buf.getvalue()) if compressed else buf.getvalue()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "s.tar").write_bytes(raw)
    if compressed:
        assert len(raw) < (1 << 20) / 4
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = InputConfig(uri=str(shards), max_member_bytes=1 << 20)
    table = WebDatasetSource(cfg).expand(str(shards / "s.tar"))
    rows = _decode(table, uri=str(shards), max_member_bytes=1 << 20)
    assert rows["s/good/a"]["status"] == "ok" and rows["s/good/a"]["reference"] == "hello"
    assert rows["s/later/b"]["status"] == "ok"                # nothing after the bad members is lost
    kinds = {k: error_kind(r["error"]) for k, r in rows.items() if r["status"] == "error"}
    assert kinds == {"s/../evil": "input_member", f"s/{tmp_path}/abs/evil": "input_member",
                     "s/sym": "input_member", "s/hard": "input_member", "s/fifo": "input_member",
                     "s/bomb": "input_too_large", "s/bomb2": "input_too_large"}
    assert "symlink to '/etc/passwd'" in rows["s/sym"]["error"]
    assert "input.max_member_bytes=1048576" in rows["s/bomb"]["error"]
    assert table.filter(pc.is_valid(table["source_error"]))["audio_bytes"].null_count == 7
    assert list(work.iterdir()) == [] and not (tmp_path / "abs").exists() and not (tmp_path / "evil.wav").exists()


# ------------------------------------------------------------------ HF Parquet


def test_parquet_cells_above_the_cap_are_error_rows(tmp_path):
    cells = [{"bytes": WAV, "path": "a.wav"}, {"bytes": bytes(3 << 20), "path": "bomb.wav"},
             {"bytes": WAV, "path": "c.wav"}]
    table = pa.table({"audio": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "text": ["one", "two", "three"]})
    path = tmp_path / "hf" / "train.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, compression="zstd", row_group_size=2)
    assert path.stat().st_size < (1 << 20) / 4            # a bomb: small on disk, 3 MiB decompressed
    cfg = InputConfig(uri=str(path.parent), max_member_bytes=1 << 20)
    src = HFParquetSource(cfg).expand(str(path))
    assert src["audio_bytes"].to_pylist()[1] is None       # dropped on read, never kept
    rows = _decode(src, uri=str(path.parent), max_member_bytes=1 << 20)
    assert [rows[f"train.parquet/{p}"]["status"] for p in ("a.wav", "bomb.wav", "c.wav")] == ["ok", "error", "ok"]
    bad = rows["train.parquet/bomb.wav"]
    assert error_kind(bad["error"]) == "input_too_large" and str(3 << 20) in bad["error"]
    assert rows["train.parquet/c.wav"]["reference"] == "three"
    # the default cap (1 GiB) reads the same file whole
    rows = _decode(HFParquetSource(InputConfig(uri=str(path.parent))).expand(str(path)))
    assert rows["train.parquet/bomb.wav"]["error"].split(":")[0] != "input_too_large"
