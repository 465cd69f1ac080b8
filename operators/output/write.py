"""Parquet output: one file per finished block, deterministic names, resume by audio_id.

Layout: {output}/{backend}/{model}/{revision}/part-{hash of the block's ids}.parquet, so a new model
revision writes beside the old one. A file appears whole or not at all (local: write to a temp name
and rename; object stores: a single PUT is atomic), so a killed job leaves only complete files, and
the next run skips every id they hold.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators import storage
from operators.metrics import JobMetrics
from operators.output.report import block_stats
from operators.retry import TRANSIENT_KIND, RetryPolicy
from operators.retry import call as retry_call
from operators.storage import OutputError
from operators.schema import OUTPUT_SCHEMA, PERF_COLUMNS

SUMMARY_NAME = "_summary.json"


def _slug(text: str) -> str:
    text = text.strip().rstrip("/")
    if text.startswith("/"):  # a local model directory: its last two components
        text = "/".join(text.split("/")[-2:])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "--")).strip("_") or "default"


def version_dir(output_uri: str, backend: str, model: str, revision: str) -> str:
    return storage.join(output_uri, _slug(backend), _slug(model), _slug(revision))


def part_name(ids: list[str], ext: str = "parquet") -> str:
    """Deterministic file name for a block: a hash of its ids, whatever their order."""
    h = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:20]
    return f"part-{h}.{ext}"


def read_columns(out_dir: str, columns: list[str], storage_options: dict | None = None) -> pa.Table:
    """Some columns of every Parquet file under a version directory (empty table if none). Columns a
    file lacks (older schema) come back as nulls."""
    fs, path = storage.filesystem(out_dir, storage_options)
    empty = pa.table({c: pa.array([], OUTPUT_SCHEMA.field(c).type) for c in columns})
    if not fs.exists(path):
        return empty
    tables = []
    for f in storage.list_files(out_dir, storage_options, extensions=(".parquet",)):
        with fs.open(storage.filesystem(f, storage_options)[1], "rb") as fh:
            pf = pq.ParquetFile(fh)
            have = [c for c in columns if c in pf.schema_arrow.names]
            t = pf.read(columns=have)
        for c in columns:
            if c not in have:
                t = t.append_column(c, pa.nulls(t.num_rows, OUTPUT_SCHEMA.field(c).type))
        tables.append(t.select(columns).cast(empty.schema))
    return pa.concat_tables(tables) if tables else empty


def _transient(errors: pa.ChunkedArray | pa.Array):
    """True where a row's error is `transient` (a fetch that outlived its retry budget)."""
    return pc.fill_null(pc.starts_with(errors, TRANSIENT_KIND + ":"), False)


def done_ids(out_dir: str, storage_options: dict | None = None) -> pa.Array:
    """audio_ids already written under a version directory (empty if none), except rows whose error
    is `transient`: a re-run retries those."""
    t = read_columns(out_dir, ["audio_id", "error"], storage_options)
    return t.filter(pc.invert(_transient(t["error"])))["audio_id"].combine_chunks()


def resume(out_dir: str, storage_options: dict | None = None) -> tuple[pa.Array, int]:
    """Before a re-run, in one pass over the version directory: (the ids that are done, as done_ids
    gives them; the number of `transient` rows taken out). A file holding transient rows is deleted,
    then written again without them under its new name, so the rows the re-run writes for those ids
    are the only ones; a crash in between loses no transcript for good (its ids are then missing, and
    the next run redoes them)."""
    fs, path = storage.filesystem(out_dir, storage_options)
    empty = pa.array([], pa.string())
    if not fs.exists(path):
        return empty, 0
    done, removed = [], 0
    for f in storage.list_files(out_dir, storage_options, extensions=(".parquet",)):
        fpath = storage.filesystem(f, storage_options)[1]
        with fs.open(fpath, "rb") as fh:
            t = pq.read_table(fh, columns=["audio_id", "error"])
        transient = _transient(t["error"])
        n = pc.sum(transient).as_py() or 0
        if n:
            with fs.open(fpath, "rb") as fh:
                keep = pq.read_table(fh).filter(pc.invert(transient))
            fs.rm(fpath)
            if keep.num_rows:
                write_table(keep, storage.join(out_dir, part_name(keep["audio_id"].to_pylist())), storage_options)
            removed += n
        done.append(t["audio_id"].filter(pc.invert(transient)).cast(pa.string()))
    return pa.chunked_array([c for a in done for c in a.chunks], type=pa.string()).combine_chunks(), removed


def clear(out_dir: str, storage_options: dict | None = None) -> int:
    """--overwrite: remove this version's Parquet files (other versions stay). Returns the count."""
    fs, path = storage.filesystem(out_dir, storage_options)
    if not fs.exists(path):
        return 0
    files = storage.list_files(out_dir, storage_options, extensions=(".parquet",))
    for f in files:
        fs.rm(storage.filesystem(f, storage_options)[1])
    return len(files)


def write_table(table: pa.Table, uri: str, storage_options: dict | None = None,
                compression: str = "zstd", retry: RetryPolicy | None = None,
                retries: Counter | None = None) -> None:
    """Write a Parquet file so that it appears complete or not at all; transient failures are retried
    per `retry` (counted in retries["write"])."""
    if retry is not None:
        def again(_error):
            if retries is not None:
                retries["write"] += 1
        retry_call(lambda: write_table(table, uri, storage_options, compression), retry, again)
        return
    fs, path = storage.filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if storage.protocol_of(uri) == "file":
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}.parquet"
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression=compression)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression=compression)


def write_json(obj: dict, uri: str, storage_options: dict | None = None) -> None:
    fs, path = storage.filesystem(uri, storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


def write_block(batch: pa.Table, out_dir: str, storage_options: dict | None = None,
                compression: str = "zstd", job: str = "transcribe", retry: RetryPolicy | None = None) -> pa.Table:
    """Ray Data stage (CPU tasks): write one block, return one small stats row for the report (with
    the block's timing: the perf_* columns, which are not written)."""
    cpu0 = time.process_time()
    perf_names = [c for c in PERF_COLUMNS if c in batch.column_names]
    perf = batch.select(perf_names)
    batch = batch.drop_columns(perf_names)
    if batch.num_rows == 0:
        return block_stats(batch, None)
    table = batch.cast(OUTPUT_SCHEMA) if batch.schema != OUTPUT_SCHEMA else batch
    uri = storage.join(out_dir, part_name(table["audio_id"].to_pylist()))
    retries: Counter = Counter()
    try:
        write_table(table, uri, storage_options, compression, retry or RetryPolicy(), retries)
    except Exception as e:  # noqa: BLE001 - the output refuses writes: the job cannot go on
        raise OutputError(f"cannot write {uri} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); fix "
                          "the output location (permissions, credentials, bucket) and run the same "
                          "command again: files already written are kept") from None
    stats = block_stats(table, uri, perf, write_cpu_s=time.process_time() - cpu0, write_retries=retries["write"])
    s = stats.to_pylist()[0]
    JobMetrics(job).written(s["ok"], s["files"] - s["ok"], s["audio_s"])
    return stats
