"""A GPU node lost mid-run (a reclaimed spot node): on the loopback multi-node cluster
(pipelines.local_cluster: a head, two CPU-only nodes, two nodes declaring one GPU each, `--num-gpus=1`
being resource accounting only), the node running the ASR actor loses its raylet and every process
it started (workers, agents) to SIGKILL while rows are still pending. The job, run with `RAY_ADDRESS` as
under `ray job submit`, must finish on its own: the ASR actor comes back on the other GPU node, every
input id is written exactly once, every good file ok, the bad one an error row. It prints how long
recovery took: from the kill to the first row written by an actor on the surviving GPU node, and to
the end of the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ROOT, clip_bytes, corpus, jsonl, local_cluster_process, put, read_output
from tests.unit import audio_fixtures as af

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CPU_NODES = 2
COPIES = 3          # 3 x the demo corpus: enough ASR work that rows are pending when the node goes


@pytest.fixture
def cluster(s3):
    with local_cluster_process("--cpu-nodes", str(CPU_NODES), "--cpu-per-node", "1", "--gpu-nodes", "2",
                               "--cpu-per-gpu-node", "1") as info:
        assert len(info["gpu_nodes"]) == 2 and len(info["raylet_pids"]) == CPU_NODES + 2, info
        yield info


def _inputs(s3, prefix) -> tuple[list[str], str]:
    rows = []
    for c in range(COPIES):
        for e in corpus():
            put(s3, f"{prefix}/in/c{c}/{e['uri']}", clip_bytes(e))
            rows.append({"audio_id": f"{e['audio_id']}-{c}", "uri": f"c{c}/{e['uri']}"})
    put(s3, f"{prefix}/in/bad.wav", af.text_as_wav())           # undecodable: an error row, once
    rows.append({"audio_id": "bad", "uri": "bad.wav"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))
    return [r["audio_id"] for r in rows], "bad"


def _start_job(cluster, prefix) -> subprocess.Popen:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": cluster["address"]}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.transcribe", "--config", "configs/demo.yaml", "--input",
         f"{prefix}/in/manifest.jsonl", "--output", f"{prefix}/out", "--backend", "simulated",
         "--set", "asr.model.options.rtfx=4", "--set", "asr.num_gpus=1", "--set", "asr.num_cpus=1",
         "--set", "asr.files_per_batch=2", "--set", "decode.batch_size=2", "--set", "decode.num_cpus=0.5",
         "--set", "write.rows_per_file=2", "--set", "ray.progress_bars=false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


class OutputWatch:
    """The output's Parquet files as they appear: their ids, and when each file was first seen."""

    def __init__(self, s3, prefix):
        self.fs = s3.filesystem()
        self.root = f"{prefix}/out".removeprefix("s3://")
        self.seen: dict[str, tuple[float, list[str]]] = {}

    def poll(self) -> list[str]:
        """Ids of the files that appeared since the last poll."""
        import pyarrow.parquet as pq

        new = []
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return new
        for p in sorted(self.fs.find(self.root)):
            if p.endswith(".parquet") and p not in self.seen:
                with self.fs.open(p, "rb") as f:
                    ids = pq.read_table(f, columns=["audio_id"]).column("audio_id").to_pylist()
                self.seen[p] = (time.time(), ids)
                new += ids
        return new

    def ids(self) -> set[str]:
        return {i for _, ids in self.seen.values() for i in ids}


def _asr_actor_parents() -> dict[int, int]:
    """pid -> parent pid of every live ASR actor process (`ray::MapBatches(ASRStage)`); a worker's
    parent is the raylet of the node it runs on."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split(None, 3)
        # a killed process not yet reaped (state Z) is dead: not an actor
        if len(fields) == 4 and not fields[2].startswith("Z") and "MapBatches(ASRStage)" in fields[3]:
            found[int(fields[0])] = int(fields[1])
    return found


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (a raylet's workers, its agents and their children)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(p) for p in out]
    return kids + [d for k in kids for d in _descendants(k)]


def _kill_node(raylet_pid: int) -> list[int]:
    """SIGKILL a node the way a reclaimed machine goes: its raylet and everything it started, at once."""
    victims = [raylet_pid] + _descendants(raylet_pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # SIGKILL is delivered asynchronously: wait (briefly) until none of them still runs
    until = time.time() + 10
    while time.time() < until and any(_alive(p) for p in victims):
        time.sleep(0.05)
    return victims


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_a_gpu_node_lost_mid_run(cluster, s3, prefix):
    ids, bad = _inputs(s3, prefix)
    watch = OutputWatch(s3, prefix)
    gpu_raylets = dict(zip(cluster["raylet_pids"][CPU_NODES:], cluster["gpu_nodes"]))
    started = time.time()
    proc = _start_job(cluster, prefix)

    # wait for written rows and for the ASR actor on one of the GPU nodes
    deadline = time.time() + 240
    lost = None
    while lost is None:
        assert proc.poll() is None, "the job ended before the fault: " + proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the job wrote no row before the fault was due"
        if watch.poll() or watch.seen:
            lost = next((ppid for ppid in _asr_actor_parents().values() if ppid in gpu_raylets), None)
        time.sleep(0.2)
    survivor = next(r for r in gpu_raylets if r != lost)

    before = watch.ids()
    assert len(before) < len(ids) - 4, f"too late to prove anything: {len(before)} of {len(ids)} written"
    killed_at = time.time()
    victims = _kill_node(lost)
    assert len(victims) > 1, "the GPU node's raylet had no worker processes to kill"
    assert not [p for p, pp in _asr_actor_parents().items() if pp == lost], "the lost node's ASR actor lives on"

    # recovery: the ASR actor back on the other GPU node, then the first file written after that
    actor_back_at = first_file_at = None
    give_up = killed_at + 420
    while proc.poll() is None:
        if time.time() > give_up:                     # a job that cannot recover hangs: fail, not wait
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the job did not finish within 420 s of the GPU node's loss: "
                                 + proc.communicate()[0][-3000:])
        new = watch.poll()
        if actor_back_at is None and survivor in _asr_actor_parents().values():
            actor_back_at = time.time()
        elif actor_back_at is not None and first_file_at is None and new:
            first_file_at = time.time()
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=400)
    ended_at = time.time()
    assert proc.returncode == 0, out[-4000:]

    rows = read_output(s3, f"{prefix}/out")
    assert sorted(r["audio_id"] for r in rows) == sorted(ids), "ids missing or duplicated"
    status = {r["audio_id"]: r for r in rows}
    assert status[bad]["status"] != "ok", status[bad]
    assert all(r["status"] == "ok" for r in rows if r["audio_id"] != bad), \
        [(r["audio_id"], r["error"]) for r in rows if r["status"] != "ok" and r["audio_id"] != bad]
    assert set(ids) - before, "nothing was left to write after the kill"

    fs = s3.filesystem()
    [summary] = [p for p in fs.find(f"{prefix}/out".removeprefix("s3://")) if p.endswith("_summary.json")]
    summary = json.loads(fs.cat_file(summary))
    assert summary["ok"] == len(ids) - 1 and summary["files"] == len(ids), summary
    actor_nodes = {a.split("/", 1)[0] for a in summary["asr_actors"]}
    assert gpu_raylets[survivor] in actor_nodes, (summary["asr_actors"], gpu_raylets)   # rows ASR'd there
    assert actor_back_at is not None, "no ASR actor came up on the other GPU node"
    recovered = f"{first_file_at - killed_at:.1f} s" if first_file_at else "n/a (no file after it)"
    print(f"GPU node lost ({len(victims)} processes killed; {len(before)}/{len(ids)} ids written before): "
          f"ASR actor up on the other GPU node {actor_back_at - killed_at:.1f} s after the kill, first file "
          f"written after that {recovered}, job ended {ended_at - killed_at:.1f} s after the kill "
          f"({ended_at - started:.1f} s in all)")
