"""Scale-out: the job on a multi-node Ray cluster on 127.0.0.1 (pipelines.local_cluster: a CPU-only
node for decoding, and 1 then 2 nodes declaring one GPU each) with the simulated accelerator slow
enough that the CPUs are not the limit. Throughput = audio seconds / pipeline_wall_seconds.

    python benchmarks/scale_out.py [--files 1000] [--rtfx 300]

Target (issue 9): throughput with 2 GPU nodes >= 1.8 x with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # the cluster stays on 127.0.0.1
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_efficiency import corpus  # noqa: E402

from operators.config import load_config  # noqa: E402
from pipelines.local_cluster import LocalCluster, NodeSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_on(gpu_nodes: int, input_dir: Path, out: Path, rtfx: float, files_per_batch: int) -> dict:
    import ray

    from pipelines.transcribe import run

    with LocalCluster([NodeSpec(2)] + [NodeSpec(1, 1) for _ in range(gpu_nodes)]) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = load_config(ROOT / "configs" / "demo.yaml", [
            "asr.backend=simulated", f"asr.model.options.rtfx={rtfx}", f"asr.num_actors={gpu_nodes}",
            "asr.num_gpus=1", "asr.num_cpus=1", "asr.batch_size=128", f"asr.files_per_batch={files_per_batch}",
            "decode.num_cpus=0.75", "decode.batch_size=32", "ray.progress_bars=false"],
            **{"input.uri": str(input_dir / "*.flac"), "output.uri": str(out), "output.overwrite": True})
        s = run(cfg)
    return {"gpu_nodes": gpu_nodes, "files": s["files"], "audio_hours": s["audio_hours"],
            "pipeline_wall_seconds": s["pipeline_wall_seconds"],
            "throughput_audio_s_per_s": s["audio_seconds"] / s["pipeline_wall_seconds"],
            "throughput_from_first_model_call": s["audio_seconds"] / (
                s["pipeline_wall_seconds"] - s["first_model_call_after_first_read_s"]),
            "first_model_call_after_first_read_s": s["first_model_call_after_first_read_s"],
            "model_busy_fraction": s["model_busy_fraction"], "asr_actors": s["asr_actors"],
            "decode_nodes": s["decode_nodes"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--rtfx", type=float, default=300.0, help="simulated accelerator speed per GPU")
    p.add_argument("--files-per-batch", type=int, default=8, help="asr.files_per_batch")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "pipeline-efficiency"))
    args = p.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    input_dir, _ = corpus(root, args.files, 400)
    one = run_on(1, input_dir, root / "out-scale-1", args.rtfx, args.files_per_batch)
    print(json.dumps(one, indent=1), flush=True)
    two = run_on(2, input_dir, root / "out-scale-2", args.rtfx, args.files_per_batch)
    print(json.dumps(two, indent=1), flush=True)
    ratio = two["throughput_audio_s_per_s"] / one["throughput_audio_s_per_s"]
    steady = two["throughput_from_first_model_call"] / one["throughput_from_first_model_call"]
    print(f"\n=== scale-out 2 vs 1 GPU nodes (simulated {args.rtfx:g}x per GPU, {args.files} files): "
          f"throughput ratio {ratio:.3f} over pipeline wall (first read to last write), {steady:.3f} from the "
          "first model call (actor start-up excluded); target >= 1.8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
