"""Credentials never reach a log: the job runs with recognisable credentials (given as storage
options, in the config) on its own local Ray cluster, then every place a user or an attacker could read
is searched for them: stdout, stderr, the Ray session's log folder, the summary, the Parquet files
(data and metadata)."""

from __future__ import annotations

import json
import os
import subprocess
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines.local_s3 import CANARY_KEY, CANARY_SECRET
from tests.integration.conftest import ROOT, clip_bytes, corpus, jsonl, put

pytestmark = pytest.mark.integration


def test_no_log_holds_the_credentials(s3, prefix, tmp_path):
    rows = []
    for e in corpus(4):
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"]})
    rows.append({"audio_id": "missing", "uri": "missing.flac"})          # an error row too
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))
    opts = json.dumps({"key": CANARY_KEY, "secret": CANARY_SECRET})
    cfg = ROOT / "configs" / "demo.yaml"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # this job's own Ray folder (short: socket paths)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
    env.update(AWS_DEFAULT_REGION="us-east-1", RAY_TMPDIR=str(ray_tmp))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.transcribe", "--config", str(cfg), "--input", f"{prefix}/in/manifest.jsonl",
         "--output", f"{prefix}/out", "--backend", "simulated", "--set", f"input.storage_options={opts}",
         "--set", f"output.storage_options={opts}", "--set", "ray.progress_bars=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok" in r.stdout and "errors_by_kind" in r.stdout

    places: dict[str, bytes] = {"stdout": r.stdout.encode(), "stderr": r.stderr.encode()}
    logs = [p for p in ray_tmp.rglob("*") if p.is_file() and p.stat().st_size < 64 << 20]
    assert any("logs" in p.parts for p in logs), "the Ray session's logs were not found"
    for p in logs:
        places[str(p)] = p.read_bytes()
    fs = s3.filesystem()
    written = [p for p in fs.find(f"{prefix}/out".removeprefix("s3://"))]
    assert any(p.endswith(".parquet") for p in written) and any(p.endswith("_summary.json") for p in written)
    for p in written:
        places[p] = fs.cat_file(p)
    leaks = [where for where, data in places.items()
             if CANARY_SECRET.encode() in data or CANARY_KEY.encode() in data]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leaks, leaks
    assert len(places) > 20
