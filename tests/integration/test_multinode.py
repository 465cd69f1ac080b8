"""The job on a real multi-node Ray cluster on 127.0.0.1 (pipelines.local_cluster: a head, a CPU-only
node and two nodes declaring one GPU each), with the simulated accelerator: ASR actors land only on the
GPU nodes, decoding only on the CPU node, and every input comes out exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import local_cluster_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    with local_cluster_process("--cpu-nodes", "1", "--cpu-per-node", "2", "--gpu-nodes", "2",
                               "--cpu-per-gpu-node", "1") as info:
        yield info


def test_actors_on_gpu_nodes_decode_on_cpu_nodes(cluster, tmp_path):
    corpus = sorted((ROOT / "pipelines" / "demo_corpus").glob("*.flac"))
    audio = tmp_path / "in"
    audio.mkdir()
    for i in range(120):
        os.link(corpus[i % len(corpus)], audio / f"f{i:04d}.flac")
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": cluster["address"]}
    r = subprocess.run([sys.executable, "-m", "pipelines.transcribe", "--config", "configs/demo.yaml",
                        "--input", str(audio / "*.flac"), "--output", str(out), "--backend", "simulated",
                        "--set", "asr.model.options.rtfx=200", "--set", "asr.num_actors=2",
                        "--set", "asr.num_gpus=1", "--set", "asr.num_cpus=1", "--set", "asr.files_per_batch=8",
                        "--set", "decode.num_cpus=0.75", "--set", "decode.batch_size=8",
                        "--set", "ray.progress_bars=false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(next(out.rglob("_summary.json")).read_text())
    assert summary["files"] == summary["ok"] == 120
    actor_nodes = {a.split("/")[0] for a in summary["asr_actors"]}
    assert actor_nodes == set(cluster["gpu_nodes"]), (summary["asr_actors"], cluster)
    assert set(summary["decode_nodes"]) == set(cluster["cpu_nodes"]), (summary["decode_nodes"], cluster)
    ids = [i for f in out.rglob("*.parquet") for i in pq.read_table(f, columns=["audio_id"])["audio_id"].to_pylist()]
    assert len(set(ids)) == len(ids) == 120            # every input once
    assert 0 < summary["model_busy_fraction"] <= 1
