"""A multi-node Ray cluster on this machine, on 127.0.0.1 only: a head with no CPUs (the driver's) and
worker nodes, each its own raylet process tree, some declaring GPUs (resource accounting only) and
some CPU-only. For integration tests, benchmarks and trying a cluster profile on a laptop.

    python -m pipelines.local_cluster --cpu-nodes 1 --cpu-per-node 2 --gpu-nodes 2   # prints the address

Built on ray.cluster_utils.Cluster with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps every node
and connection on loopback (Ray otherwise advertises the machine's interface address). Each node's
raylet has a process id, so a test can kill a node the way a cluster loses one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from dataclasses import dataclass, field


@dataclass
class NodeSpec:
    num_cpus: int
    num_gpus: int = 0
    resources: dict = field(default_factory=dict)


class LocalCluster:
    def __init__(self, nodes: list[NodeSpec], head_cpus: int = 0):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": False})
        self.nodes = [self.cluster.add_node(num_cpus=n.num_cpus, num_gpus=n.num_gpus, resources=n.resources)
                      for n in nodes]
        self.specs = list(nodes)
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_ids(self, gpu: bool | None = None) -> list[str]:
        """Node ids (first 12 characters, as the run's summary names them) of the worker nodes, all or
        only those with (gpu=True) or without (gpu=False) GPUs."""
        return [n.node_id[:12] for n, s in zip(self.nodes, self.specs)
                if gpu is None or bool(s.num_gpus) == gpu]

    def raylet_pid(self, index: int) -> int:
        return self.nodes[index].all_processes["raylet"][0].process.pid

    def kill_node(self, index: int) -> None:
        """SIGKILL a worker node's raylet: its workers die with it, as when a machine is lost."""
        os.kill(self.raylet_pid(index), signal.SIGKILL)

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-nodes", type=int, default=1)
    p.add_argument("--cpu-per-node", type=int, default=2)
    p.add_argument("--gpu-nodes", type=int, default=1)
    p.add_argument("--cpu-per-gpu-node", type=int, default=1)
    args = p.parse_args(argv)
    nodes = [NodeSpec(args.cpu_per_node) for _ in range(args.cpu_nodes)]
    nodes += [NodeSpec(args.cpu_per_gpu_node, 1) for _ in range(args.gpu_nodes)]
    with LocalCluster(nodes) as c:
        print(json.dumps({"address": c.address, "gpu_nodes": c.node_ids(gpu=True),
                          "cpu_nodes": c.node_ids(gpu=False),
                          "raylet_pids": [c.raylet_pid(i) for i in range(len(c.nodes))]}), flush=True)
        print(f"RAY_ADDRESS={c.address} RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  (Ctrl-C or SIGTERM stops it)",
              flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
