"""What every labeling writer shares: the one stats row per written file, the row split by the filter
rules, deterministic file names from a block's ids, and writing one object. export.py and subtitles.py
both build on this (neither imports the other's internals).
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from operators import storage
from operators.labeling.filters import FilterRules, drop_reason
from operators.output.write import part_name

# one row per written file (the first carries the block's kept count, audio seconds and drop reasons)
EXPORT_STATS = pa.schema([("kept", pa.int64()), ("audio_s", pa.float64()), ("dropped", pa.string()),
                          ("path", pa.string())])


def stats(kept: list[dict], dropped: Counter, paths: list[str | None]) -> pa.Table:
    """EXPORT_STATS rows for a block that wrote `paths` (none: one row with a null path)."""
    rows = [{"kept": len(kept) if i == 0 else 0,
             "audio_s": sum(r["duration_s"] or 0 for r in kept) if i == 0 else 0.0,
             "dropped": json.dumps(dict(dropped)) if i == 0 else "{}", "path": p}
            for i, p in enumerate(paths or [None])]
    return pa.Table.from_pylist(rows, schema=EXPORT_STATS)


def file_name(rows: list[dict], ext: str) -> str:
    """The block's file name, from its rows' ids (the same rows give the same name on a re-run)."""
    return part_name([r["audio_id"] for r in rows], ext)


def split(batch: pa.Table, rules: FilterRules) -> tuple[list[dict], Counter]:
    """(rows kept, count of dropped rows per reason) under `rules`."""
    kept, dropped = [], Counter()
    for r in batch.to_pylist():
        reason = drop_reason(r, rules)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(r)
    return kept, dropped


def put(uri: str, data: bytes, storage_options: dict | None) -> None:
    fs, p = storage.filesystem(uri, storage_options)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(p, data)
