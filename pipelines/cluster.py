"""Joining or starting the Ray cluster a pipeline runs on."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None) -> bool:
    """Join `address` (or RAY_ADDRESS, as under `ray job submit`) or start a local cluster on
    loopback. True if this call started a local cluster (the caller shuts it down)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
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
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    return True
