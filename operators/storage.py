"""One storage helper on fsspec: every path is a URL (local or s3://...) plus storage options.

s3fs reads the endpoint and credentials from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) when the options do not give them.
"""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.core import url_to_fs


def filesystem(uri: str, storage_options: dict[str, Any] | None = None):
    """(filesystem, path-without-protocol) for a URI. fsspec caches instances per options."""
    return url_to_fs(uri, **(storage_options or {}))


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def unstrip(fs, path: str, like: str) -> str:
    """Give a path that fsspec returned (no protocol) back the protocol of `like`."""
    proto = protocol_of(like)
    if proto == "file":
        return path if path.startswith("/") or "://" in like else path
    return path if "://" in path else f"{proto}://{path}"


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def is_glob(uri: str) -> bool:
    return any(ch in uri for ch in "*?[")


def list_files(uri: str, storage_options: dict[str, Any] | None = None,
               extensions: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Sorted file URIs under a prefix/directory, matching a glob, or the single file `uri` names.

    Hidden and underscore-prefixed names are skipped (they are markers, summaries or temp files).
    """
    fs, path = filesystem(uri, storage_options)
    single = False
    if is_glob(uri):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.exists(path):
        found, single = [path], True
    else:
        raise FileNotFoundError(f"input {uri!r} does not exist (no such file, directory or prefix)")
    exts = tuple(e.lower() for e in extensions) if extensions else None
    out = []
    for p in found:
        full = unstrip(fs, p, uri)
        name = p.rstrip("/").rsplit("/", 1)[-1]
        # hidden / underscore names below the root are markers, summaries, temp or checkpoint dirs
        if not single and any(part.startswith((".", "_")) for part in relative_id(full, uri).split("/")):
            continue
        if exts and not name.lower().endswith(exts):
            continue
        out.append(full)
    return sorted(set(out))


def relative_id(uri: str, root: str) -> str:
    """The part of `uri` below `root` (a prefix, directory or the glob's fixed part)."""
    base = root
    if is_glob(base):
        base = base[: min(base.index(ch) for ch in "*?[" if ch in base)]
        base = base.rsplit("/", 1)[0] if not base.endswith("/") else base
    base = base.rstrip("/")
    if uri == base:
        return uri.rsplit("/", 1)[-1]
    if uri.startswith(base + "/"):
        return uri[len(base) + 1:]
    return uri.split("://", 1)[-1].lstrip("/")


def fetch_many(uris: list[str], storage_options: dict[str, Any] | None = None) -> list[bytes | Exception]:
    """Fetch whole objects concurrently (s3fs gathers the GETs); per-URI exceptions are returned,
    not raised, so one missing object never fails the batch."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0], storage_options)
    paths = [filesystem(u, storage_options)[1] for u in uris]
    try:
        got = fs.cat(paths, on_error="return")
    except Exception:  # a filesystem without batched cat: one at a time
        got = {}
        for p in paths:
            try:
                got[p] = fs.cat_file(p)
            except Exception as e:  # noqa: BLE001 - returned per file
                got[p] = e
    if not isinstance(got, dict):  # a single path comes back as bytes
        got = {paths[0]: got}
    return [got.get(p, FileNotFoundError(u)) for p, u in zip(paths, uris)]
