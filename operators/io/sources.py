"""Input forms -> small source rows (SOURCE_SCHEMA), one per audio file.

Each form is one class: `Source.list_units()` runs on the driver and lists what to read (manifest rows,
audio files, tar shards, Parquet files); `Source.expand(unit)` runs in Ray tasks for container forms
(tar shards, HF Parquet) and yields the rows inside. audio_id is deterministic: the manifest's id, else
the path below the input root, plus the member key for tar shards.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import re
import tarfile
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from operators import storage
from operators.config import AUDIO_EXTENSIONS, InputConfig  # noqa: F401 - AUDIO_EXTENSIONS re-exported
from operators.schema import SOURCE_SCHEMA, TASK_COLUMNS

log = logging.getLogger(__name__)

MANIFEST_EXTS = (".jsonl", ".json", ".csv", ".tsv")
REFERENCE_COLUMNS = ("text", "reference", "transcript", "transcription", "sentence", "normalized_text")
LANGUAGE_COLUMNS = ("language", "lang", "locale")
ID_COLUMNS = ("audio_id", "id", "utt_id", "key")
# per-row task overrides (see operators.schema.TASK_COLUMNS); null cells fall back to the job's asr.*
TASK_COLUMN = ("task",)
TARGET_COLUMNS = ("target_language", "target_lang", "tgt_lang")
KEYWORD_COLUMNS = ("keywords",)
URI_COLUMNS = ("uri", "audio_filepath", "audio_path", "path", "file", "filepath")


class InputError(ValueError):
    """The input as a whole cannot be read (per-file problems become error rows instead)."""


# Error kinds of rows refused by the source before anything is read (the `source_error` column holds
# 'kind: message'; decode turns it into the row's error). A manifest is data from elsewhere: a row
# reaches only what the job was pointed at.
INPUT_PATH = "input_path"          # a relative path that climbs out of the manifest's folder / prefix
INPUT_SCHEME = "input_scheme"      # a URI scheme outside input.allowed_schemes (http, ftp, data, ...)
INPUT_MEMBER = "input_member"      # a tar member with an absolute or '..' name, a link, a device
INPUT_TOO_LARGE = "input_too_large"  # a tar member / Parquet audio cell above input.max_member_bytes
INPUT_KINDS = (INPUT_PATH, INPUT_SCHEME, INPUT_MEMBER, INPUT_TOO_LARGE)
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BARE_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # data:..., mailto:... (2+ chars: not C:)
_PROTOCOL_WORD = re.compile(r"[A-Za-z][A-Za-z0-9+._\-]*")


def input_error(kind: str, message: str) -> str:
    """The `source_error` text of a row refused by the source."""
    return f"{kind}: {message}"


def split_source_error(text: str) -> tuple[str, str]:
    """`source_error` -> (error kind, message): the input kinds above keep their kind; anything else
    (a shard or Parquet file that could not be read) is kind `source`."""
    kind, sep, message = text.partition(": ")
    return (kind, message) if sep and kind in INPUT_KINDS else ("source", text)


def uri_schemes(uri: str) -> list[str]:
    """Every scheme a URI would make fsspec use, chained URLs ('a::b') included; a path without one
    is 'file'."""
    parts = uri.split("::")
    out = []
    for part in parts:
        m = _URI_SCHEME.match(part) or _BARE_SCHEME.match(part)
        if m:
            scheme = m.group(1).lower()
        elif len(parts) > 1 and _PROTOCOL_WORD.fullmatch(part):
            scheme = part.lower()  # 'simplecache::s3://...': a bare word in a chain is a protocol
        else:
            scheme = "file"
        out.append("file" if scheme == "local" else scheme)
    return out


def resolve_row_path(path: str, base: str, allowed: set[str]) -> tuple[str | None, str | None]:
    """A manifest cell -> (uri, None), or (None, source_error) when the row must not be read: a
    scheme outside `allowed`, or a relative path that leaves `base` (the manifest's folder)."""
    schemes = uri_schemes(path)
    chained = "::" in path  # fsspec chains: every protocol in it must be allowed
    if chained or "://" in path or path.startswith("/") or _BARE_SCHEME.match(path):
        refused = [s for s in schemes if s not in allowed]
        if refused:
            return None, input_error(INPUT_SCHEME, (
                f"{path!r}: scheme {refused[0]!r} is not allowed (input.allowed_schemes: "
                f"{', '.join(sorted(allowed))}); add it there to read such rows"))
        first = path.split("::", 1)[0]
        if chained and not (_URI_SCHEME.match(first) or _PROTOCOL_WORD.fullmatch(first)):
            return None, input_error(INPUT_PATH, f"{path!r}: a relative path chained ('::') to a URL")
        return path, None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or norm in (".", ""):
        return None, input_error(INPUT_PATH, (
            f"{path!r} resolves outside the manifest's folder {base!r}; relative paths must stay "
            "below it"))
    return storage.join(base, norm), None


def source_table(ids: list[str], uris: list[str], refs: list | None = None, langs: list | None = None,
                 blobs: list | None = None, errors: list | None = None, tasks: dict | None = None,
                 versions: list | None = None) -> pa.Table:
    """SOURCE_SCHEMA rows; `tasks` maps task/target_language/keywords to per-row lists (see
    `task_columns`)."""
    n = len(ids)
    tasks = tasks or {}
    return pa.Table.from_pydict({
        "audio_id": ids,
        "source_uri": uris,
        "audio_bytes": blobs if blobs is not None else [None] * n,
        "reference": refs if refs is not None else [None] * n,
        "language": langs if langs is not None else [None] * n,
        "source_error": errors if errors is not None else [None] * n,
        "source_version": versions if versions is not None else [None] * n,
        **{c: tasks.get(c) or [None] * n for c in TASK_COLUMNS},
    }, schema=SOURCE_SCHEMA)


def _task_value(v: Any) -> str | None:
    """A task cell: 'translate', 'transcribe+translate' or a list of parts (validated by the stage)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, (list, tuple)):
        return "+".join(str(p).strip() for p in v if p is not None) or None
    return str(v).strip()


def _keywords_value(v: Any) -> list[str] | None:
    """A keywords cell: a list, or one string of comma-separated keywords (CSV); null: job default."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [str(k) for k in v if k is not None]
    return [k.strip() for k in str(v).split(",") if k.strip()]


def task_columns(rows: list[dict]) -> dict:
    """Per-row task overrides from dicts (table rows, tar .json metadata) -> source_table(tasks=...)."""
    def pick(row: dict, names: tuple[str, ...]):
        lower = {str(k).lower(): k for k in row}
        return next((row[lower[c]] for c in names if c in lower), None)

    return {
        "task": [_task_value(pick(r, TASK_COLUMN)) for r in rows],
        "target_language": [None if (v := pick(r, TARGET_COLUMNS)) in (None, "") else str(v).strip()
                            for r in rows],
        "keywords": [_keywords_value(pick(r, KEYWORD_COLUMNS)) for r in rows],
    }


def _table_task_columns(table: pa.Table) -> dict | None:
    names = table.column_names
    cols = [c for c in (_first(names, TASK_COLUMN), _first(names, TARGET_COLUMNS),
                        _first(names, KEYWORD_COLUMNS)) if c]
    return task_columns(table.select(cols).to_pylist()) if cols else None


def _first(names: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


def _as_str_list(col: pa.ChunkedArray | None, n: int) -> list:
    if col is None:
        return [None] * n
    return [None if v is None else str(v) for v in col.to_pylist()]


class Source:
    """Base: subclasses implement list_units(); container forms also expand()."""

    expands = False

    def __init__(self, cfg: InputConfig):
        self.cfg = cfg
        self.uri = cfg.uri
        self.opts = cfg.storage_options
        self.left_out = storage.LeftOut()  # what the last list_units() saw and did not take
        self.files_listed = 0              # the files it took (audio files, manifests, shards)

    def list_units(self) -> pa.Table:
        """Driver side: SOURCE_SCHEMA rows (flat forms) or a table with column `unit` (containers)."""
        raise NotImplementedError

    def _list(self, extensions, detail: bool = False):
        """storage.list_files(_detail) of the input, counting what it leaves out (self.left_out)."""
        self.left_out = storage.LeftOut()
        lister = storage.list_files_detail if detail else storage.list_files
        files = lister(self.uri, self.opts, extensions=extensions, left_out=self.left_out)
        self.files_listed = len(files)
        return files

    def listing_report(self) -> dict:
        """The listing's figures for --plan and the summary: every file seen under the input, those
        taken, and those left out by reason (extension, no_extension, hidden) with example keys."""
        return {"input_files_seen": self.files_listed + self.left_out.total,
                "input_files_left_out": self.left_out.total,
                "input_left_out_by": self.left_out.as_dict()}

    def _none_found(self, what: str) -> InputError:
        return InputError(f"no {what} under {self.uri!r}; left out: {self.left_out.describe()}")

    def expand(self, unit: str) -> pa.Table:  # pragma: no cover - containers override
        raise NotImplementedError

    def unit_id(self, unit: str) -> str:
        """The id prefix of a container's rows (and the id of its error row if it is unreadable)."""
        return storage.relative_id(unit, self.uri)


class ManifestSource(Source):
    """JSONL / CSV / Parquet manifests; NeMo rows (audio_filepath, duration, text) or plain rows
    (audio_id, uri, text, language). Relative paths resolve against the manifest's directory."""

    def _read(self, uri: str) -> pa.Table:
        fs, path = storage.filesystem(uri, self.opts)
        lower = uri.lower()
        with fs.open(path, "rb") as f:
            if lower.endswith(".parquet"):
                return pq.read_table(f)
            data = f.read()
        if lower.endswith((".csv", ".tsv")):
            delim = "\t" if lower.endswith(".tsv") else ","
            header = next(csv.reader(io.StringIO(data.split(b"\n", 1)[0].decode("utf-8-sig")),
                                     delimiter=delim), [])
            # every column as text: ids like 0001 must not become the integer 1
            return pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(delimiter=delim),
                                  convert_options=pacsv.ConvertOptions(
                                      strings_can_be_null=True,
                                      column_types={name: pa.string() for name in header}))
        try:
            return pajson.read_json(io.BytesIO(data))
        except pa.ArrowInvalid as e:
            raise InputError(f"manifest {uri!r} is not valid JSON Lines: {e}") from None

    def list_units(self) -> pa.Table:
        files = self._list(MANIFEST_EXTS + (".parquet",))
        if not files:
            raise self._none_found(f"manifest files ({', '.join(MANIFEST_EXTS)}, .parquet)")
        tables = [self._normalise(self._read(f), f) for f in files]
        return pa.concat_tables(tables)

    def _normalise(self, table: pa.Table, manifest_uri: str) -> pa.Table:
        names = table.column_names
        uri_col = _first(names, URI_COLUMNS)
        if uri_col is None:
            raise InputError(f"manifest {manifest_uri!r} has no audio path column; expected one of "
                             f"{list(URI_COLUMNS)} (columns found: {names})")
        id_col = self.cfg.id_column or _first(names, ID_COLUMNS)
        if self.cfg.id_column and self.cfg.id_column not in names:
            raise InputError(f"input.id_column={self.cfg.id_column!r} is not a column of "
                             f"{manifest_uri!r} (columns: {names})")
        n = table.num_rows
        paths = _as_str_list(table[uri_col], n)
        base = manifest_uri.rsplit("/", 1)[0]
        uris, ids, errors = [], [], []
        given_ids = _as_str_list(table[id_col], n) if id_col else [None] * n
        allowed = self.cfg.schemes()
        for i, (p, given) in enumerate(zip(paths, given_ids)):
            if not p:
                raise InputError(f"manifest {manifest_uri!r} row {i}: empty {uri_col!r}")
            # a row reaches only what the job was pointed at: refused rows keep the path as written
            # and are never fetched (decode turns source_error into the row's error)
            uri, error = resolve_row_path(p, base, allowed)
            uris.append(uri or p)
            errors.append(error)
            ids.append(given if given else p.split("://", 1)[-1].lstrip("/") if "://" in p else p)
        ref_col = _first(names, REFERENCE_COLUMNS)
        lang_col = _first(names, LANGUAGE_COLUMNS)
        return source_table(ids, uris, _as_str_list(table[ref_col], n) if ref_col else None,
                            _as_str_list(table[lang_col], n) if lang_col else None,
                            errors=errors, tasks=_table_task_columns(table))


class AudioFilesSource(Source):
    """A glob, directory or prefix of audio files; audio_id = path below the input root."""

    def list_units(self) -> pa.Table:
        files = self._list(self.cfg.extensions, detail=True)
        if not files:
            raise self._none_found("audio files with the extensions of input.extensions")
        return source_table([storage.relative_id(f, self.uri) for f in files], list(files),
                            versions=list(files.values()))


class WebDatasetSource(Source):
    """WebDataset tar shards: members grouped by key (path without extension); the audio member is
    the row, .txt/.json siblings give the reference text, language and id."""

    expands = True

    def list_units(self) -> pa.Table:
        shards = self._list((".tar",))
        if not shards:
            raise self._none_found(".tar shards")
        return pa.table({"unit": shards})

    def unit_id(self, unit: str) -> str:
        shard_id = storage.relative_id(unit, self.uri)
        return shard_id[:-4] if shard_id.endswith(".tar") else shard_id

    def expand(self, unit: str) -> pa.Table:
        shard_id = self.unit_id(unit)
        exts = tuple(e.lower() for e in self.cfg.extensions)
        samples: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        fs, path = storage.filesystem(unit, self.opts)
        cap = self.cfg.max_member_bytes
        # Streamed and read into memory only: nothing is ever extracted to disk. Members with an
        # absolute or '..' name, links, devices and members above input.max_member_bytes (after
        # decompression: a bomb) are never read; they become error rows of their sample's key.
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = member.name
                dirname, base = posixpath.split(name)
                stem, _, ext = base.partition(".")
                key, ext = posixpath.join(dirname, stem), "." + ext.lower()
                wanted = ext.endswith(exts) or ext.endswith((".txt", ".json"))
                refused = _refuse_member(member, cap if wanted else None)
                if refused is None and (base.startswith(".") or not wanted):
                    continue  # hidden (._AppleDouble ...) or a sibling the job does not use: not read
                sample = samples.get(key)
                if sample is None:
                    sample = samples[key] = {}
                    order.append(key)
                if refused is not None:
                    sample.setdefault("error", refused)
                    sample.setdefault("member", name)
                    continue
                data = tar.extractfile(member).read()
                if ext.endswith(exts):
                    sample["audio"] = data
                    sample["member"] = name
                elif ext.endswith(".txt"):
                    sample["text"] = data.decode("utf-8", errors="replace").strip()
                elif ext.endswith(".json"):
                    try:
                        sample["json"] = json.loads(data)
                    except ValueError:
                        sample["json"] = {}
        ids, uris, refs, langs, blobs, metas = [], [], [], [], [], []
        errors = []
        for key in order:
            s = samples[key]
            if "error" in s:  # refused: the key's id, nothing read
                ids.append(f"{shard_id}/{key}")
                uris.append(f"{unit}#{s['member']}")
                for column in (refs, langs, blobs):
                    column.append(None)
                metas.append({})
                errors.append(s["error"])
                continue
            if "audio" not in s:
                continue  # a sample without an audio member (metadata only)
            errors.append(None)
            meta = s.get("json") or {}
            meta = meta if isinstance(meta, dict) else {}
            ids.append(str(meta.get("audio_id") or f"{shard_id}/{key}"))
            uris.append(f"{unit}#{s['member']}")
            refs.append(s.get("text") or next((str(meta[c]) for c in REFERENCE_COLUMNS if c in meta), None))
            langs.append(next((str(meta[c]) for c in LANGUAGE_COLUMNS if c in meta), None))
            blobs.append(s["audio"])
            metas.append(meta)
        return source_table(ids, uris, refs, langs, blobs, errors=errors, tasks=task_columns(metas))


def _refuse_member(member: tarfile.TarInfo, cap: int | None) -> str | None:
    """Why a tar member must not be read (a source_error), or None. `cap`: the size limit of members
    the job reads (None: not read anyway)."""
    name = member.name
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hardlink"
        return input_error(INPUT_MEMBER, f"tar member {name!r} is a {kind} to {member.linkname!r}; links "
                           "are never followed")
    if not member.isfile():
        return input_error(INPUT_MEMBER, f"tar member {name!r} is not a regular file (type "
                           f"{member.type!r})")
    if name.startswith("/") or ".." in name.split("/"):
        return input_error(INPUT_MEMBER, f"tar member name {name!r} is absolute or climbs out with '..'")
    if cap is not None and member.size > cap:
        return input_error(INPUT_TOO_LARGE, f"tar member {name!r} holds {member.size} bytes, above "
                           f"input.max_member_bytes={cap}; raise it if such files are expected")
    return None


class HFParquetSource(Source):
    """Parquet in the Hugging Face datasets layout: an `audio` struct column with `bytes` and `path`."""

    expands = True

    def list_units(self) -> pa.Table:
        files = self._list((".parquet",))
        if not files:
            raise self._none_found(".parquet files")
        return pa.table({"unit": files})

    def expand(self, unit: str) -> pa.Table:
        fs, path = storage.filesystem(unit, self.opts)
        cap = self.cfg.max_member_bytes
        blobs, paths, errors, rest = [], [], [], []
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            audio_col = _first(pf.schema_arrow.names, ("audio",))
            if audio_col is None or not pa.types.is_struct(pf.schema_arrow.field(audio_col).type):
                raise InputError(f"{unit!r} has no `audio` struct column (HF datasets layout)")
            has_path = pf.schema_arrow.field(audio_col).type.get_field_index("path") >= 0
            # a few rows at a time (pages are decompressed as read): a cell above
            # input.max_member_bytes (a decompression bomb) becomes an error row and its bytes are
            # dropped at once, never collected
            for batch in pf.iter_batches(batch_size=16):
                audio = batch.column(audio_col)
                data = pc.struct_field(audio, "bytes")
                sizes = pc.binary_length(data)
                big = pc.fill_null(pc.greater(sizes, cap), False)
                if pc.any(big).as_py():
                    data = pc.if_else(big, pa.scalar(None, data.type), data)
                blobs += data.to_pylist()
                paths += pc.struct_field(audio, "path").to_pylist() if has_path else [None] * batch.num_rows
                errors += [input_error(INPUT_TOO_LARGE, f"audio cell of row {len(errors) + i} holds {size} "
                                       f"bytes, above input.max_member_bytes={cap}; raise it if such "
                                       "files are expected") if over else None
                           for i, (over, size) in enumerate(zip(big.to_pylist(), sizes.to_pylist()))]
                rest.append(batch.drop_columns([audio_col]))
        table = (pa.Table.from_batches(rest) if rest else
                 pf.schema_arrow.empty_table().drop_columns([audio_col]))
        names = table.column_names
        n = table.num_rows
        file_id = self.unit_id(unit)
        id_col = self.cfg.id_column or _first(names, ID_COLUMNS)
        given = _as_str_list(table[id_col], n) if id_col else [None] * n
        ids = [g or (f"{file_id}/{p}" if p else f"{file_id}#{i}") for i, (g, p) in enumerate(zip(given, paths))]
        uris = [f"{unit}#{p or i}" for i, p in enumerate(paths)]
        ref_col = _first([c for c in names if c != audio_col], REFERENCE_COLUMNS)
        lang_col = _first(names, LANGUAGE_COLUMNS)
        return source_table(ids, uris, _as_str_list(table[ref_col], n) if ref_col else None,
                            _as_str_list(table[lang_col], n) if lang_col else None, blobs,
                            errors=errors, tasks=_table_task_columns(table))


SOURCES: dict[str, type[Source]] = {
    "manifest": ManifestSource,
    "audio": AudioFilesSource,
    "webdataset": WebDatasetSource,
    "hf_parquet": HFParquetSource,
}


def detect_format(cfg: InputConfig) -> str:
    """Pick the input form from extensions (and the Parquet schema); cfg.format wins if not auto."""
    if cfg.format != "auto":
        return cfg.format
    uri = cfg.uri.lower().rstrip("/")
    if uri.endswith(MANIFEST_EXTS):
        return "manifest"
    if uri.endswith(".tar"):
        return "webdataset"
    if uri.endswith(".parquet"):
        files = storage.list_files(cfg.uri, cfg.storage_options, extensions=(".parquet",))
        return _parquet_kind(files[0], cfg) if files else "manifest"
    files = storage.list_files(cfg.uri, cfg.storage_options)
    exts = {posixpath.splitext(f.lower())[1] for f in files}
    if exts & {e.lower() for e in cfg.extensions}:
        return "audio"
    if ".tar" in exts:
        return "webdataset"
    if ".parquet" in exts:
        return _parquet_kind(next(f for f in files if f.lower().endswith(".parquet")), cfg)
    if exts & set(MANIFEST_EXTS):
        return "manifest"
    raise InputError(f"cannot tell the input form of {cfg.uri!r} (extensions found: {sorted(exts)}); "
                     "set input.format to manifest, audio, webdataset or hf_parquet")


def _parquet_kind(uri: str, cfg: InputConfig) -> str:
    fs, path = storage.filesystem(uri, cfg.storage_options)
    with fs.open(path, "rb") as f:
        schema = pq.read_schema(f)
    idx = schema.get_field_index("audio")
    if idx >= 0 and pa.types.is_struct(schema.field(idx).type):
        return "hf_parquet"
    return "manifest"


def make_source(cfg: InputConfig) -> Source:
    if not cfg.uri:
        raise InputError("no input: pass --input URI or set input.uri in the config")
    return SOURCES[detect_format(cfg)](cfg)


def drop_done(table: pa.Table, done_ids: pa.Array | None) -> pa.Table:
    """Remove rows whose audio_id is already written (resume) and duplicate ids (first kept)."""
    if done_ids is not None and len(done_ids):
        table = table.filter(pc.invert(pc.is_in(table["audio_id"], value_set=done_ids)))
    return table


def dedupe(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the first row of each audio_id; return (table, number of duplicate rows dropped)."""
    ids = table["audio_id"]
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table, 0
    seen: set[str] = set()
    keep = []
    for v in ids.to_pylist():
        keep.append(v not in seen)
        seen.add(v)
    return table.filter(pa.array(keep)), table.num_rows - sum(keep)
