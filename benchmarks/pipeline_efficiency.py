"""Does the pipeline keep the accelerator busy? Real-speech FLACs (2-35 s, local disk) through the whole
job (Ray Data decode -> ASR actor -> Parquet) with the `simulated` backend, which sleeps like an
accelerator of fixed speed. One run, one local Ray cluster, figures side by side:

    python benchmarks/pipeline_efficiency.py [--files 20000] [--small 5000] [--distinct 400]

1. capacity    model free (rtfx 1e9): audio-seconds per wall-second per core, next to libsndfile's own
               FLAC decode rate (soundfile.read, one process) on the same files: the ratio.
2. rtfx 1000   over --small files: model_busy_fraction, fill (job start -> first model call) and
               drain (last model call -> last file written).
3. 0.8 x cap   the model at 0.8 x the capacity measured in 1, over --files files: the same figures.
4. actor only  the ASR stage alone on already-decoded rows at 4000x: its busy fraction (actor overhead).
5. decode      (--decode-compare) capacity over --small files with decode as Ray tasks vs the decode
               actor pool, each with segment.vad none and silero: audio-s per wall-s per core and
               decode / VAD CPU-seconds per audio-hour, side by side.

Targets (issue 9): busy >= 0.95 in 2 and 3; capacity >= 0.8 of libsndfile; actor-only busy >= 0.97.
Files are --distinct encoded FLACs hard-linked under --files names (decoding cost is per file read).

Runs use configs/demo.yaml with TUNED overrides (bigger decode blocks, decode tasks sized to the cores,
the ASR actor reserving little CPU, two concurrent batches per actor); --baseline repeats scenarios
2 and 3 (same rtfx) with BASELINE overrides, the demo profile's sizes and one batch at a time per actor,
as the job ran before the feeding work, so before and after come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prep_throughput import make_files  # noqa: E402

from operators.config import load_config  # noqa: E402
from pipelines.cluster import init_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TUNED = ["decode.batch_size=128", "decode.num_cpus=0.75", "asr.num_cpus=0.25", "asr.concurrent_batches=2"]
BASELINE = ["decode.batch_size=4", "decode.num_cpus=0.25", "asr.num_cpus=1", "asr.concurrent_batches=1",
            "write.rows_per_file=0"]


def corpus(root: Path, n: int, distinct: int, seed: int = 0) -> tuple[Path, float]:
    """n FLAC files under root/n/ (hard links to `distinct` encodings); returns (dir, audio seconds)."""
    base = root / "distinct"
    if not base.is_dir():
        base.mkdir(parents=True)
        for i, data in enumerate(make_files(distinct, seed)):
            (base / f"d{i:05d}.flac").write_bytes(data)
    sources = sorted(base.glob("*.flac"))
    durations = [sf.info(str(p)).duration for p in sources]
    out = root / str(n)
    if not out.is_dir():
        out.mkdir()
        for i in range(n):
            os.link(sources[i % len(sources)], out / f"f{i:06d}.flac")
    return out, sum(durations[i % len(sources)] for i in range(n))


def libsndfile_rate(files: list[Path]) -> float:
    """Audio seconds per CPU second of soundfile.read (libsndfile FLAC decode), one process."""
    c = time.process_time()
    seconds = 0.0
    for p in files:
        audio, sr = sf.read(str(p), dtype="int16")
        seconds += len(audio) / sr
    return seconds / (time.process_time() - c)


def process_cpu() -> dict[str, float]:
    """CPU seconds so far of this machine's processes, grouped by role (driver, raylet, gcs, workers by
    their current title, ...): the profile of where the CPU goes."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])[:80]
            t = proc.info["cpu_times"]
        except (psutil.Error, TypeError):
            continue
        if proc.pid == os.getpid():
            role = "driver (this script)"
        elif "raylet" in cmd:
            role = "raylet"
        elif "gcs_server" in cmd:
            role = "gcs_server"
        elif cmd.startswith("ray::"):
            role = "ray workers"
        elif "ray" in cmd or "dashboard" in cmd:
            role = "other ray daemons"
        else:
            continue
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def job(input_dir: Path, out: Path, rtfx: float, per_call_s: float, extra: list[str]) -> dict:
    from pipelines.transcribe import run

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "asr.backend=simulated", f"asr.model.options.rtfx={rtfx}", f"asr.model.options.per_call_s={per_call_s}",
        "asr.batch_size=128", "asr.files_per_batch=64", "ray.progress_bars=false", *extra],
        **{"input.uri": str(input_dir / "*.flac"), "output.uri": str(out), "output.overwrite": True})
    return run(cfg)


def actor_only(input_dir: Path, n: int, rtfx: float, extra: list[str]) -> dict:
    """The ASR stage on a local Ray cluster, fed rows that were decoded beforehand (materialized)."""
    import ray

    from operators.asr.stage import ASRStage
    from pipelines.transcribe import asr_compute
    from operators.decode import decode_batch
    from operators.sources import source_table

    files = sorted(input_dir.glob("*.flac"))[:n]
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "asr.backend=simulated", f"asr.model.options.rtfx={rtfx}", "asr.batch_size=128",
        "asr.files_per_batch=64", "ray.progress_bars=false", *extra])
    src = source_table([p.name for p in files], [str(p) for p in files])
    decoded = ray.data.from_arrow([decode_batch(src.slice(i, 256), cfg) for i in range(0, src.num_rows, 256)])
    decoded = decoded.materialize()
    a = cfg.asr
    ds = decoded.map_batches(
        ASRStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=a.files_per_batch, batch_format="pyarrow",
        num_cpus=a.num_cpus, compute=asr_compute(cfg, size=1))
    t0 = time.time()
    busy = first = last = 0.0
    audio = 0.0
    started = None
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = b.select(["duration_s", "perf_asr_busy_s", "perf_actor_ready", "perf_call_first",
                         "perf_call_last"]).to_pylist()
        for r in rows:
            busy += r["perf_asr_busy_s"] or 0.0
            audio += r["duration_s"] or 0.0
            started = r["perf_actor_ready"] if started is None else min(started, r["perf_actor_ready"])
            if r["perf_call_first"]:
                first = min(first or r["perf_call_first"], r["perf_call_first"])
                last = max(last, r["perf_call_last"])
    end = time.time()
    return {"files": n, "audio_hours": audio / 3600, "model_busy_seconds": busy,
            "first_call_to_end_s": end - first, "busy_over_first_call_to_last_call": busy / (last - first),
            "busy_over_model_ready_to_end": busy / (end - started), "wall_s": end - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--small", type=int, default=5000)
    p.add_argument("--distinct", type=int, default=400)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "pipeline-efficiency"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config overrides on top of TUNED")
    p.add_argument("--baseline", action="store_true", help="also run scenarios 2 and 3 with BASELINE")
    p.add_argument("--skip", action="append", default=[], choices=["capacity", "small", "large", "actor"])
    p.add_argument("--decode-compare", action="store_true", help="scenario 5: decode tasks vs actors")
    args = p.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    init_ray()  # one local cluster for every run: Ray start-up is outside every figure
    args.overrides = TUNED + args.overrides
    results: dict = {"cores": cores, "overrides": args.overrides}

    big_dir, big_audio = corpus(root, args.files, args.distinct)
    small_dir, _ = corpus(root, args.small, args.distinct)
    results["libsndfile_audio_s_per_cpu_s"] = libsndfile_rate(sorted((root / "distinct").glob("*.flac")))

    def figures(s: dict) -> dict:
        keys = ("files", "audio_hours", "pipeline_wall_seconds", "model_busy_seconds", "model_busy_fraction",
                "first_model_call_after_job_start_s", "first_model_call_after_first_read_s",
                "last_file_written_after_last_model_call_s", "cpu_seconds_per_audio_hour", "wall_seconds")
        return {k: s.get(k) for k in keys}

    capacity = None
    if "capacity" not in args.skip:
        before = process_cpu()
        s = job(big_dir, root / "out-free", 1e9, 0.0, args.overrides)
        after = process_cpu()
        hours = s["audio_hours"]
        results["capacity_cpu_profile_s_per_audio_hour"] = {
            k: (after.get(k, 0.0) - before.get(k, 0.0)) / hours for k in sorted(after)}
        capacity = s["audio_seconds"] / s["pipeline_wall_seconds"]
        results["capacity"] = {**figures(s), "audio_s_per_wall_s": capacity,
                               "per_core": capacity / cores,
                               "per_core_over_libsndfile": capacity / cores / results["libsndfile_audio_s_per_cpu_s"]}
        print(json.dumps({"capacity": results["capacity"],
                          "profile": results["capacity_cpu_profile_s_per_audio_hour"]}, indent=1), flush=True)
    if "small" not in args.skip:
        results["rtfx_1000"] = figures(job(small_dir, root / "out-1000", 1000.0, 0.005, args.overrides))
        print(json.dumps({"rtfx_1000": results["rtfx_1000"]}, indent=1), flush=True)
    if "large" not in args.skip and capacity:
        rtfx = 0.8 * capacity
        results["rtfx_0.8_capacity"] = {"rtfx": rtfx, **figures(job(big_dir, root / "out-08", rtfx, 0.005,
                                                                     args.overrides))}
        print(json.dumps({"rtfx_0.8_capacity": results["rtfx_0.8_capacity"]}, indent=1), flush=True)
    if args.baseline:
        if "small" not in args.skip:
            results["baseline_rtfx_1000"] = figures(job(small_dir, root / "out-b1000", 1000.0, 0.005, BASELINE))
            print(json.dumps({"baseline_rtfx_1000": results["baseline_rtfx_1000"]}, indent=1), flush=True)
        if "large" not in args.skip and capacity:
            results["baseline_rtfx_0.8_capacity"] = {"rtfx": 0.8 * capacity, **figures(job(
                big_dir, root / "out-b08", 0.8 * capacity, 0.005, BASELINE))}
            print(json.dumps({"baseline_rtfx_0.8_capacity": results["baseline_rtfx_0.8_capacity"]}, indent=1),
                  flush=True)
    if "actor" not in args.skip:
        results["actor_only_4000"] = actor_only(small_dir, min(args.small, 5000), 4000.0, args.overrides)
        print(json.dumps({"actor_only_4000": results["actor_only_4000"]}, indent=1), flush=True)

    if args.decode_compare:
        rows = []
        for vad in ("none", "silero"):
            for mode, sets in (("tasks", ["decode.min_actors=0"]), ("actors", [])):
                s = job(small_dir, root / "out-dec", 1e9, 0.0, [*args.overrides, f"segment.vad={vad}", *sets])
                cpu = s.get("cpu_seconds_per_audio_hour") or {}
                rows.append({"vad": vad, "decode": mode, "per_core": s["audio_seconds"] / s["pipeline_wall_seconds"]
                             / cores, "decode_cpu_s_per_audio_hour": cpu.get("decode"),
                             "vad_cpu_s_per_audio_hour": cpu.get("vad"), "wall_s": s["pipeline_wall_seconds"]})
                print(json.dumps(rows[-1]), flush=True)
        results["decode_tasks_vs_actors"] = rows
        shutil.rmtree(root / "out-dec", ignore_errors=True)

    print("\n=== pipeline efficiency (simulated accelerator) ===")
    print(json.dumps(results, indent=1, default=str))
    shutil.rmtree(root / "out-free", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
