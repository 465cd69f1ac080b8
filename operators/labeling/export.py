"""Labeling exports from transcript Parquet: NeMo JSONL manifests, Hugging Face datasets Parquet
(audio bytes + text) and WebDataset tar shards. Each writer is a Ray Data block function: it writes
one file per block (deterministic name from the block's ids) and returns one stats row, so nothing
passes through the driver but counts. SRT / WebVTT / RTTM from word timestamps and speaker turns
live in operators.labeling.subtitles and are registered in WRITERS here.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from operators import storage
from operators.labeling.files import EXPORT_STATS, file_name, put, split, stats  # noqa: F401 - EXPORT_STATS re-exported
from operators.labeling.filters import FilterRules
from operators.labeling.subtitles import nemo_words, write_rttm, write_srt, write_vtt
from operators.output.write import write_table

HF_SCHEMA = pa.schema([
    ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("text", pa.string()), ("audio_id", pa.string()), ("duration", pa.float64()),
    ("language", pa.string()), ("model", pa.string()), ("model_revision", pa.string()),
])


def fetch_audio(rows: list[dict], storage_options: dict | None) -> list[bytes | Exception]:
    """Original audio bytes per row: plain objects fetched concurrently, container members
    (`shard.tar#member`, `file.parquet#path`) read with one pass over each container."""
    out: list = [None] * len(rows)
    plain = [i for i, r in enumerate(rows) if "#" not in r["source_uri"]]
    for i, data in zip(plain, storage.fetch_many([rows[i]["source_uri"] for i in plain], storage_options)):
        out[i] = data
    by_container: dict[str, dict[str, int]] = {}
    for i, r in enumerate(rows):
        if "#" in r["source_uri"]:
            container, member = r["source_uri"].split("#", 1)
            by_container.setdefault(container, {})[member] = i
    for container, members in by_container.items():
        try:
            found = _read_members(container, set(members), storage_options)
        except Exception as e:  # noqa: BLE001 - per row
            found = {}
            for i in members.values():
                out[i] = e
            continue
        for member, i in members.items():
            out[i] = found.get(member, FileNotFoundError(f"{member} not in {container}"))
    return out


def _read_members(container: str, wanted: set[str], storage_options: dict | None) -> dict[str, bytes]:
    fs, path = storage.filesystem(container, storage_options)
    found = {}
    with fs.open(path, "rb") as f:
        if container.lower().endswith(".parquet"):
            audio = pq.read_table(f, columns=["audio"])["audio"].combine_chunks()
            paths = audio.field("path").to_pylist()
            blobs = audio.field("bytes")
            for i, p in enumerate(paths):
                for key in (p, str(i)):
                    if key in wanted:
                        found[key] = blobs[i].as_py()
            return found
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if m.name in wanted:
                    found[m.name] = tar.extractfile(m).read()
                    if len(found) == len(wanted):
                        break
    return found


def _audio_ext(row: dict) -> str:
    uri = row["source_uri"].split("#")[-1]
    ext = posixpath.splitext(uri)[1].lower()
    return ext if ext else ".wav"


def _with_audio(kept: list[dict], dropped: Counter, storage_options: dict | None) -> list[tuple[dict, bytes]]:
    pairs = []
    for r, data in zip(kept, fetch_audio(kept, storage_options)):
        if isinstance(data, Exception):
            dropped["audio_unreadable"] += 1
        else:
            pairs.append((r, data))
    return pairs


def write_nemo(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None = None,
               audio_dir: str | None = None) -> pa.Table:
    """NeMo manifest lines (audio_filepath, duration, text, lang, ...). Rows whose audio sits inside a
    container are materialised under `audio_dir` (original bytes) or dropped as `no_standalone_audio`."""
    kept, dropped = split(batch, rules)
    lines, exported = [], []
    standalone = [r for r in kept if "#" not in r["source_uri"]]
    inside = [r for r in kept if "#" in r["source_uri"]]
    paths = {r["audio_id"]: r["source_uri"] for r in standalone}
    if inside and audio_dir is None:
        dropped["no_standalone_audio"] += len(inside)
    elif inside:
        for r, data in _with_audio(inside, dropped, storage_options):
            uri = storage.join(audio_dir, r["audio_id"] + _audio_ext(r))
            put(uri, data, storage_options)
            paths[r["audio_id"]] = uri
    for r in kept:
        if r["audio_id"] in paths:
            exported.append(r)
            lines.append(json.dumps({
                "audio_filepath": paths[r["audio_id"]], "duration": round(r["duration_s"], 3),
                "text": r["text"], "lang": r.get("language"), "audio_id": r["audio_id"],
                "agreement": r.get("agreement"), "model": r.get("model"),
                "model_revision": r.get("model_revision"), **nemo_words(r)}, ensure_ascii=False))
    if not exported:
        return stats(exported, dropped, [])
    uri = storage.join(out_dir, file_name(exported, "jsonl"))
    put(uri, ("\n".join(lines) + "\n").encode(), storage_options)
    return stats(exported, dropped, [uri])


def write_hf(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None = None) -> pa.Table:
    """Parquet in the Hugging Face datasets layout: audio {bytes, path} + text (+ provenance)."""
    kept, dropped = split(batch, rules)
    pairs = _with_audio(kept, dropped, storage_options)
    if not pairs:
        return stats([], dropped, [])
    table = pa.Table.from_pylist([{
        "audio": {"bytes": data, "path": r["audio_id"] + _audio_ext(r)}, "text": r["text"],
        "audio_id": r["audio_id"], "duration": r["duration_s"], "language": r.get("language"),
        "model": r.get("model"), "model_revision": r.get("model_revision")} for r, data in pairs],
        schema=HF_SCHEMA)
    rows = [r for r, _ in pairs]
    uri = storage.join(out_dir, file_name(rows, "parquet"))
    write_table(table, uri, storage_options)
    return stats(rows, dropped, [uri])


def write_wds(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None = None) -> pa.Table:
    """One WebDataset tar shard per block: {key}.{audio ext} + {key}.txt + {key}.json."""
    kept, dropped = split(batch, rules)
    pairs = _with_audio(kept, dropped, storage_options)
    if not pairs:
        return stats([], dropped, [])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for r, data in pairs:
            key = r["audio_id"].replace(".", "_")  # WebDataset keys end at the first dot
            meta = {"audio_id": r["audio_id"], "duration": r["duration_s"], "language": r.get("language"),
                    "text": r["text"], "agreement": r.get("agreement"), "model": r.get("model"),
                    "model_revision": r.get("model_revision")}
            for ext, payload in ((_audio_ext(r), data), (".txt", r["text"].encode()),
                                 (".json", json.dumps(meta, ensure_ascii=False).encode())):
                info = tarfile.TarInfo(key + ext)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    rows = [r for r, _ in pairs]
    uri = storage.join(out_dir, file_name(rows, "tar"))
    put(uri, buf.getvalue(), storage_options)
    return stats(rows, dropped, [uri])


WRITERS = {"nemo": write_nemo, "hf": write_hf, "wds": write_wds, "srt": write_srt, "vtt": write_vtt,
           "rttm": write_rttm}
