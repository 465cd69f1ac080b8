"""Scheduled runs: one run per (config, schedule slot), recorded next to the output.

A scheduler (RayCronJob, a Kubernetes CronJob, cron) starts the same command every period with
`--schedule-slot @daily` (or @hourly, @weekly, or a literal slot name). The run id is a hash of the
resolved config and the slot, so a retry of the same slot has the same id. A run that completed is
never repeated; a run that was killed is continued (the output's resume makes that safe).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from operators import storage
from operators.config import ConfigError, JobConfig

RUNS_DIR = "_runs"
PERIODS = {"@hourly": "%Y-%m-%dT%H", "@daily": "%Y-%m-%d", "@weekly": "%G-W%V", "@monthly": "%Y-%m"}


class AlreadyRan(RuntimeError):
    """This config already completed a run for this schedule slot."""


def resolve_slot(spec: str, now: datetime | None = None) -> str:
    """@hourly/@daily/@weekly/@monthly -> the UTC period containing `now`; anything else is literal."""
    now = now or datetime.now(timezone.utc)
    if spec.startswith("@"):
        if spec not in PERIODS:
            raise ConfigError(f"--schedule-slot {spec!r}: use one of {sorted(PERIODS)} or a literal slot name")
        return now.astimezone(timezone.utc).strftime(PERIODS[spec])
    if not spec.strip() or "/" in spec:
        raise ConfigError(f"--schedule-slot {spec!r}: a slot name must be non-empty and contain no '/'")
    return spec.strip()


def run_id(cfg: JobConfig, slot: str) -> str:
    """Stable over retries: the config that decides what is computed, plus the slot."""
    data = cfg.model_dump(mode="json")
    data["output"]["overwrite"] = False  # how a run starts does not change what it is
    data.pop("ray", None)
    blob = json.dumps({"config": data, "slot": slot}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _marker(out_dir: str, rid: str) -> str:
    return storage.join(out_dir, RUNS_DIR, f"{rid}.json")


def begin(out_dir: str, rid: str, slot: str, storage_options: dict | None = None) -> None:
    """Refuse a completed run; otherwise mark it started."""
    fs, path = storage.filesystem(_marker(out_dir, rid), storage_options)
    if fs.exists(path):
        with fs.open(path, "r") as f:
            prior = json.load(f)
        if prior.get("status") == "completed":
            raise AlreadyRan(f"run {rid} for schedule slot {slot!r} already completed at "
                             f"{prior.get('finished_at')}; nothing to do (marker: {_marker(out_dir, rid)})")
    _write(out_dir, rid, {"run_id": rid, "slot": slot, "status": "running",
                          "started_at": datetime.now(timezone.utc).isoformat()}, storage_options)


def finish(out_dir: str, rid: str, slot: str, summary: dict, storage_options: dict | None = None) -> None:
    _write(out_dir, rid, {"run_id": rid, "slot": slot, "status": "completed",
                          "finished_at": datetime.now(timezone.utc).isoformat(),
                          "files": summary.get("files"), "errors": summary.get("errors")},
           storage_options)


def _write(out_dir: str, rid: str, obj: dict, storage_options: dict | None) -> None:
    fs, path = storage.filesystem(_marker(out_dir, rid), storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
