"""One storage helper on fsspec: every path is a URL (local or s3://...) plus storage options.

s3fs reads the endpoint and credentials from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) when the options do not give them.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from operators.retry import RetriesExhausted, RetryPolicy, is_transient


class OutputError(RuntimeError):
    """The output location refuses writes (permanently, or past the retry budget): the job cannot go
    on. One line; pipelines.transcribe ends the job with it."""


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


def unstrip(path: str, like: str) -> str:
    """Give a path that fsspec returned (no protocol) back the protocol of `like` (local paths
    stay plain paths)."""
    proto = protocol_of(like)
    if proto == "file" or "://" in path:
        return path
    return f"{proto}://{path}"


def credential_source(storage_options: dict[str, Any] | None, where: str) -> str:
    """Where the S3 credentials for `where` (input / output) come from, never the secret itself."""
    opts = storage_options or {}
    if opts.get("anon"):
        return f"{where}.storage_options.anon (no credentials)"
    if opts.get("key"):
        key = str(opts["key"])
        return f"{where}.storage_options.key (access key ...{key[-4:]})"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return f"the environment (AWS_ACCESS_KEY_ID ...{os.environ['AWS_ACCESS_KEY_ID'][-4:]})"
    if os.environ.get("AWS_PROFILE"):
        return f"the AWS profile {os.environ['AWS_PROFILE']!r}"
    return "the default AWS credential chain (shared credentials file, instance or pod role)"


def is_auth_error(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, PermissionError) or any(w in text for w in (
        "ACCESS_DENIED", "AccessDenied", "Access Denied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
        "403", "Forbidden", "ExpiredToken", "InvalidToken"))


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def is_glob(uri: str) -> bool:
    return any(ch in uri for ch in "*?[")


HIDDEN = "hidden"                # a name below the root starting with '.' or '_'
NO_EXTENSION = "no_extension"    # no (sane) extension: README, 'call 3.5 (final)'
OTHER_EXTENSIONS = "other_extensions"  # past LeftOut.MAX_REASONS distinct extensions
_EXTENSION = re.compile(r"\.[a-z0-9][a-z0-9_+\-]{0,9}")


def left_out_reason(name: str) -> str:
    """Why a listing filtered by extension left out the file `name`: its extension ('.txt'), or
    no_extension."""
    ext = posixpath.splitext(name.lower())[1]
    return ext if _EXTENSION.fullmatch(ext) else NO_EXTENSION


class LeftOut:
    """Files a listing saw and left out, by reason (an extension such as '.txt', `no_extension`,
    `hidden`), each with its count and the first few keys (below the input root), so nothing is
    skipped silently. Bounded: at most MAX_REASONS reasons, then `other_extensions`."""

    EXAMPLES = 3
    MAX_REASONS = 24

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, key: str) -> None:
        if reason not in self.counts and len(self.counts) >= self.MAX_REASONS:
            reason = OTHER_EXTENSIONS
        self.counts[reason] += 1
        keys = self.examples.setdefault(reason, [])
        if len(keys) < self.EXAMPLES:
            keys.append(key)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, dict]:
        """{reason: {"files": n, "examples": [key, ...]}}, the most frequent reason first."""
        return {r: {"files": n, "examples": sorted(self.examples[r])}
                for r, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))}

    def describe(self) -> str:
        """One line: '3 files (.txt 2: a.txt, b.txt; hidden 1: _SUCCESS)', or 'none'."""
        if not self.total:
            return "none"
        parts = [f"{r} {v['files']}: {', '.join(v['examples'])}" for r, v in self.as_dict().items()]
        return f"{self.total} file{'s' if self.total != 1 else ''} ({'; '.join(parts)})"


def list_files(uri: str, storage_options: dict[str, Any] | None = None,
               extensions: tuple[str, ...] | list[str] | None = None,
               left_out: LeftOut | None = None) -> list[str]:
    """Sorted file URIs under a prefix/directory, matching a glob, or the single file `uri` names.

    Hidden and underscore-prefixed names are skipped (they are markers, summaries or temp files).
    `left_out` receives every file skipped, with its reason.
    """
    return list(list_files_detail(uri, storage_options, extensions, left_out))


def list_files_detail(uri: str, storage_options: dict[str, Any] | None = None,
                      extensions: tuple[str, ...] | list[str] | None = None,
                      left_out: LeftOut | None = None) -> dict[str, str]:
    """Like list_files, as {uri: version} where version = "size:ETag" (object stores) or
    "size:mtime" (local files): what the listing says about each object, for change detection.
    `left_out` (optional) counts the files skipped: hidden/underscore names and other extensions."""
    fs, path = filesystem(uri, storage_options)
    single = False
    if is_glob(uri):
        found = fs.glob(path, detail=True)
    elif fs.isdir(path):
        found = fs.find(path, detail=True)
    elif fs.exists(path):
        found, single = {path: fs.info(path)}, True
    else:
        raise FileNotFoundError(f"input {uri!r} does not exist (no such file, directory or prefix)")
    exts = tuple(e.lower() for e in extensions) if extensions else None
    out = {}
    for p, info in found.items():
        if info.get("type") == "directory":
            continue
        full = unstrip(p, uri)
        name = p.rstrip("/").rsplit("/", 1)[-1]
        key = relative_id(full, uri)
        # hidden / underscore names below the root are markers, summaries, temp or checkpoint dirs
        if not single and any(part.startswith((".", "_")) for part in key.split("/")):
            if left_out is not None:
                left_out.add(HIDDEN, key)
            continue
        if exts and not name.lower().endswith(exts):
            if left_out is not None:
                left_out.add(left_out_reason(name), key)
            continue
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        out[full] = f"{info.get('size')}:{str(tag).strip(chr(34))}"
    return dict(sorted(out.items()))


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


# storage_options keys the pyarrow S3 client can express; anything else keeps the fetch on s3fs
_ARROW_S3_KEYS = {"key", "secret", "token", "endpoint_url", "client_kwargs", "anon"}


@lru_cache(maxsize=8)
def _arrow_s3(options_json: str, env_endpoint: str | None, env_region: str | None):
    import pyarrow.fs as pafs

    opts = json.loads(options_json)
    client = opts.get("client_kwargs") or {}
    endpoint = opts.get("endpoint_url") or client.get("endpoint_url") or env_endpoint
    kwargs: dict[str, Any] = {"region": client.get("region_name") or env_region or "us-east-1"}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if opts.get("anon"):
        kwargs["anonymous"] = True
    elif opts.get("key"):
        kwargs.update(access_key=opts["key"], secret_key=opts.get("secret"), session_token=opts.get("token"))
    return pafs.S3FileSystem(**kwargs)


def arrow_s3(storage_options: dict[str, Any] | None):
    """A pyarrow (C++) S3 client equivalent to what s3fs would build from the same options and the
    standard AWS_* environment, or None where the options hold something only s3fs understands.
    It fetches small objects at about a third of s3fs's CPU cost per request."""
    opts = storage_options or {}
    if set(opts) - _ARROW_S3_KEYS or set(opts.get("client_kwargs") or {}) - {"endpoint_url", "region_name"}:
        return None
    try:
        return _arrow_s3(json.dumps(opts, sort_keys=True), os.environ.get("AWS_ENDPOINT_URL_S3")
                         or os.environ.get("AWS_ENDPOINT_URL"),
                         os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"))
    except Exception:  # noqa: BLE001 - fall back to s3fs
        return None


def _read_arrow(fs, path: str) -> bytes | Exception:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - returned per file
        return e


def fetch_many(uris: list[str], storage_options: dict[str, Any] | None = None,
               retry: RetryPolicy | None = None, retries: Counter | None = None) -> list[bytes | Exception]:
    """Fetch whole objects concurrently; per-URI exceptions are returned, not raised, so one missing
    object never fails the batch. Transient failures (operators.retry) are fetched again, all still
    failing ones together, with backoff and jitter within `retry`'s budget; one that outlives it comes
    back as RetriesExhausted. `retries["fetch"]` counts the retried fetches."""
    results = _fetch_once(uris, storage_options)
    if retry is None:
        return results
    start, tries = time.monotonic(), 0
    while True:
        pending = [i for i, r in enumerate(results) if isinstance(r, Exception) and is_transient(r)]
        if not pending:
            return results
        tries += 1
        wait = retry.next_wait(tries, start)
        if wait is None:
            for i in pending:
                results[i] = RetriesExhausted(results[i], tries, time.monotonic() - start)
            return results
        time.sleep(wait)
        if retries is not None:
            retries["fetch"] += len(pending)
        for i, r in zip(pending, _fetch_once([uris[i] for i in pending], storage_options)):
            results[i] = r


def _fetch_once(uris: list[str], storage_options: dict[str, Any] | None = None) -> list[bytes | Exception]:
    """One concurrent fetch of every URI. s3:// goes through pyarrow's S3 client where it can (threads
    in C++), everything else through fsspec's batched cat."""
    if not uris:
        return []
    protocols = {protocol_of(u) for u in uris}
    if len(protocols) > 1:  # a manifest mixing schemes: one batched fetch per filesystem
        out: list[bytes | Exception | None] = [None] * len(uris)
        for proto in protocols:
            idx = [i for i, u in enumerate(uris) if protocol_of(u) == proto]
            for i, r in zip(idx, _fetch_once([uris[i] for i in idx], storage_options)):
                out[i] = r
        return out  # type: ignore[return-value]
    if all(protocol_of(u) in ("s3", "s3a") for u in uris):
        fs = arrow_s3(storage_options)
        if fs is not None:
            paths = [u.split("://", 1)[1] for u in uris]
            with ThreadPoolExecutor(min(16, len(paths))) as pool:
                return list(pool.map(lambda p: _read_arrow(fs, p), paths))
    try:
        fs, _ = filesystem(uris[0], storage_options)
        paths = [filesystem(u, storage_options)[1] for u in uris]
    except Exception as e:  # noqa: BLE001 - no filesystem for this scheme: an error per file, not a lost block
        return [e] * len(uris)
    # fsspec's batched cat expands glob characters: a key such as 'call [8k].wav' would match nothing
    # and come back missing, so such keys are read one by one, literally (cat_file does not glob)
    batched = [p for p in paths if not is_glob(p)]
    literal = [p for p in paths if is_glob(p)]
    got: Any = {}
    if batched:
        try:
            got = fs.cat(batched, on_error="return")
        except Exception:  # a filesystem without batched cat: one at a time
            literal = paths
        if not isinstance(got, dict):  # a single path comes back as bytes
            got = {batched[0]: got}
    for p in literal:
        try:
            got[p] = fs.cat_file(p)
        except Exception as e:  # noqa: BLE001 - returned per file
            got[p] = e
    return [got.get(p, FileNotFoundError(u)) for p, u in zip(paths, uris)]


def arrow_filesystem(uri: str, storage_options: dict[str, Any] | None = None):
    """(pyarrow filesystem, path) for Ray Data readers/writers: pyarrow's own S3 client where the
    options allow, else fsspec wrapped for pyarrow."""
    import pyarrow.fs as pafs

    if protocol_of(uri) in ("s3", "s3a"):
        fs = arrow_s3(storage_options)
        if fs is not None:
            return fs, uri.split("://", 1)[1]
    fs, path = filesystem(uri, storage_options)
    if protocol_of(uri) == "file":
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
