"""Integration fixtures: one real SeaweedFS S3 server and one local Ray cluster (on loopback) per
session. The S3 credentials go into the environment before Ray starts, so workers inherit them the
way they do on a cluster whose nodes carry AWS_* variables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from operators.config import load_config
from pipelines import demo_corpus
from pipelines.local_s3 import LocalS3

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def s3():
    server = LocalS3()
    server.start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    server.make_bucket("itest")
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3):
    import ray

    ctx = ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=2,
                   log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ctx
    ray.shutdown()


@pytest.fixture
def prefix(s3) -> str:
    """A fresh S3 prefix for one test."""
    return f"s3://itest/{uuid.uuid4().hex[:10]}"


def job_config(input_uri: str, output_uri: str, *overrides: str, **fields):
    """The demo profile pointed at a test's input/output, progress bars off."""
    return load_config(ROOT / "configs" / "demo.yaml", ["ray.progress_bars=false", *overrides],
                       **{"input.uri": input_uri, "output.uri": output_uri, **fields})


def read_output(s3: LocalS3, out_dir: str) -> list[dict]:
    import pyarrow.parquet as pq

    fs = s3.filesystem()
    rows = []
    for p in sorted(fs.find(out_dir.removeprefix("s3://"))):
        if p.endswith(".parquet"):
            with fs.open(p, "rb") as f:
                rows += pq.read_table(f).to_pylist()
    return rows


def corpus(n: int | None = None) -> list[dict]:
    items = demo_corpus.entries()
    return items[:n] if n else items


def clip_bytes(entry: dict) -> bytes:
    return (demo_corpus.CORPUS_DIR / entry["uri"]).read_bytes()


def put(s3: LocalS3, uri: str, data: bytes | str) -> None:
    s3.filesystem().pipe(uri.removeprefix("s3://"), data.encode() if isinstance(data, str) else data)


def upload_corpus(s3: LocalS3, prefix: str, copies: int = 1) -> list[str]:
    """`copies` of the demo corpus under prefix/in/c<copy>/ with a manifest.jsonl; their audio ids."""
    rows = []
    for c in range(copies):
        for e in corpus():
            uri = f"c{c}/{e['uri']}"
            put(s3, f"{prefix}/in/{uri}", clip_bytes(e))
            rows.append({"audio_id": f"{e['audio_id']}-{c}", "uri": uri})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))
    return [r["audio_id"] for r in rows]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@contextmanager
def local_cluster_process(*args: str):
    """`python -m pipelines.local_cluster ARGS` (a multi-node Ray cluster on 127.0.0.1) for the length of
    a block: yields what it prints (address, gpu_nodes, cpu_nodes, raylet_pids), then stops it."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.local_cluster", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
