"""Lost nodes and actors on a real multi-node Ray cluster on 127.0.0.1 (pipelines.local_cluster: a
head, two CPU-only nodes, one node declaring a GPU), reading from the real S3 server: the job, run with
`RAY_ADDRESS` as under `ray job submit`, finishes on its own with every input id exactly once, ok."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ROOT, local_cluster_process, read_output, upload_corpus

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(s3):
    with local_cluster_process("--cpu-nodes", "2", "--cpu-per-node", "1", "--gpu-nodes", "1",
                               "--cpu-per-gpu-node", "1") as info:
        yield info


def _start_job(cluster, s3, prefix) -> tuple[subprocess.Popen, list[str]]:
    ids = upload_corpus(s3, prefix, copies=2)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": cluster["address"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.transcribe", "--config", "configs/demo.yaml", "--input",
         f"{prefix}/in/manifest.jsonl", "--output", f"{prefix}/out", "--backend", "simulated",
         "--set", "asr.model.options.rtfx=5", "--set", "asr.num_gpus=1", "--set", "asr.num_cpus=1",
         "--set", "asr.files_per_batch=2", "--set", "decode.batch_size=2", "--set", "decode.num_cpus=0.5",
         "--set", "write.rows_per_file=2", "--set", "ray.progress_bars=false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, ids


def _wait_for_output(s3, prefix, proc, timeout=180) -> None:
    fs = s3.filesystem()
    root = f"{prefix}/out".removeprefix("s3://")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if fs.exists(root) and any(p.endswith(".parquet") for p in fs.find(root)):
            return
        time.sleep(0.2)
    raise AssertionError("the job wrote nothing before the fault was due")


def _finish(proc, s3, prefix, ids) -> dict:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    rows = read_output(s3, f"{prefix}/out")
    assert sorted(r["audio_id"] for r in rows) == sorted(ids), "ids missing or duplicated"
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    fs = s3.filesystem()
    [summary] = [p for p in fs.find(f"{prefix}/out".removeprefix("s3://")) if p.endswith("_summary.json")]
    return json.loads(fs.cat_file(summary))


def test_a_cpu_node_lost_mid_run(cluster, s3, prefix):
    proc, ids = _start_job(cluster, s3, prefix)
    _wait_for_output(s3, prefix, proc)
    lost = time.time()
    os.kill(cluster["raylet_pids"][0], signal.SIGKILL)       # node 0: a CPU node (decode)
    summary = _finish(proc, s3, prefix, ids)
    assert summary["ok"] == len(ids)
    print(f"cpu node lost: job ended {time.time() - lost:.1f} s later")


def test_the_asr_actor_killed_mid_run(cluster, s3, prefix):
    proc, ids = _start_job(cluster, s3, prefix)
    _wait_for_output(s3, prefix, proc)
    pids = subprocess.run(["pgrep", "-f", r"MapBatches\(ASRStage\)"], capture_output=True, text=True).stdout.split()
    assert pids, "no ASR actor process found"
    killed = time.time()
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    summary = _finish(proc, s3, prefix, ids)
    assert summary["ok"] == len(ids)
    print(f"ASR actor killed: job ended {time.time() - killed:.1f} s later")
