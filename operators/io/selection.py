"""Which inputs a re-run transcribes, judged against an earlier revision's output (select.*)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from operators.config import ConfigError, SelectConfig
from operators.output import write


def weak_ids(sel: SelectConfig, storage_options: dict | None = None) -> pa.Array:
    """ids whose transcript in `sel.previous` is an error, empty, or below `sel.weak_below` agreement."""
    prev = write.read_columns(sel.previous, ["audio_id", "status", "text", "agreement"], storage_options)
    text_empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(prev["text"], ""))), 0)
    low = pc.fill_null(pc.less(prev["agreement"], sel.weak_below), False)
    weak = pc.or_(pc.or_(pc.not_equal(prev["status"], "ok"), text_empty), low)
    return prev.filter(weak)["audio_id"].combine_chunks()


def changed_rows(units: pa.Table, sel: SelectConfig, storage_options: dict | None = None) -> pa.Table:
    """The listed inputs whose (size, ETag) differs from what `sel.previous` recorded, or that it lacks."""
    if pc.all(pc.is_null(units["source_version"])).as_py():
        raise ConfigError("select.mode=changed needs object sizes/ETags from the listing: use an audio "
                          "glob or prefix as input (manifests and containers do not carry them)")
    prev = write.read_columns(sel.previous, ["audio_id", "source_version"], storage_options)
    before = dict(zip(prev["audio_id"].to_pylist(), prev["source_version"].to_pylist()))
    keep = [before.get(i, object()) != v for i, v in zip(units["audio_id"].to_pylist(),
                                                          units["source_version"].to_pylist())]
    return units.filter(pa.array(keep, pa.bool_()))


def keep_only(table: pa.Table, ids: pa.Array) -> pa.Table:
    return table.filter(pc.is_in(table["audio_id"], value_set=ids))
