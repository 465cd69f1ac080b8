"""Joining or starting the Ray cluster a pipeline runs on."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

log = logging.getLogger(__name__)


def init_ray(address: str | None = None) -> bool:
    """Join `address` (or RAY_ADDRESS, as under `ray job submit`) or start a local cluster on
    loopback. True if this call started a local cluster (the caller shuts it down)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        # keep every connection of a local cluster on 127.0.0.1 (design.md: environment facts); Ray
        # reads this once, when it is first imported, so it must be set before `import ray`
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    if ray_constants.ENABLE_RAY_CLUSTER:
        log.warning("ray was imported before init_ray(); the local cluster may bind the machine's "
                    "interface address instead of 127.0.0.1")
    # workers' output stays in the session's log folder: a failing actor is reported by the job as one
    # line instead of every retry's traceback echoed here (RAY_LOG_TO_DRIVER=1 echoes them)
    # address="local": always a new local cluster, never one named by a stale /tmp/ray/ray_current_cluster
    # that an earlier `ray start` left behind (ray.init would try to join it and hang)
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=os.environ.get("RAY_LOG_TO_DRIVER", "0") == "1")
    return True


@contextmanager
def ray_session(address: str | None = None):
    """init_ray for the duration of a block; a local cluster started here is shut down after."""
    started = init_ray(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def transcript_files(uri: str, storage_options: dict | None = None) -> list[str]:
    """Every transcript Parquet file under `uri` (one revision's directory or a whole output tree);
    FileNotFoundError when there is none. Call before starting Ray, so a bad path fails fast."""
    from operators import storage

    files = storage.list_files(uri, storage_options, extensions=(".parquet",))
    if not files:
        raise FileNotFoundError(f"no transcript Parquet under {uri!r}")
    return files


def read_transcripts(files: list[str], storage_options: dict | None = None, columns: list[str] | None = None):
    """A Ray Dataset over transcript Parquet files (see transcript_files)."""
    import ray

    from operators import storage

    fs, _ = storage.arrow_filesystem(files[0], storage_options)
    paths = [storage.arrow_filesystem(f, storage_options)[1] for f in files]
    return ray.data.read_parquet(paths, filesystem=fs, columns=columns)
