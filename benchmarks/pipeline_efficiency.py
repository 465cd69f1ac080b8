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
6. before      (--vad-before silero_full) scenario 1 first with segment.vad=silero_full (the detector on
               every window, as before issue 19), then as configured: both capacities, per-core ratio;
               --before-set KEY=VALUE gives the before run any overrides (--before-set
               segment.vad_on=decode --set segment.vad_on=actor: voice activity on decode, then on the
               ASR actor, with carried_to_asr: the silence's cost in the object store).
               --before-ref REF runs scenario 1 of the code at git REF instead (`git archive` into the
               workdir, its own pipeline_efficiency.py in a subprocess, its own local Ray), first, on the
               same files: today's figures against an older commit's, in one invocation.
7. detectors   (--vad-options) each voice-activity option in this process, one thread, on the
               --distinct files and on long recordings (speech, pauses, music): CPU-seconds per
               audio-hour and whether its regions match silero_full's (vad_options()).

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

SAMPLE_RATE = 16_000

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


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this machine's processes by pid, with their role (driver, raylet, gcs,
    workers by their current title, ...): `cpu_profile` of two of these is where the CPU went."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
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
        out[proc.pid] = (role, t.user + t.system)
    return out


class CpuWatch:
    """process_cpu() every `every` s in a thread while a job runs: `last` holds each process's latest
    sample, so processes that end before the job does (decode and ASR actors of a finished dataset,
    scaled down as the input runs out) still count, up to their last sample."""

    def __init__(self, every: float = 2.0):
        import threading

        self.every, self.last = every, process_cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.last.update(process_cpu())

    def __enter__(self) -> "CpuWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(process_cpu())


def cpu_profile(before: dict, after: dict, hours: float) -> dict[str, float]:
    """CPU seconds per audio-hour by role between two process_cpu() snapshots (`after`: CpuWatch.last,
    which keeps processes that ended in between at their last sample, up to `every` s short)."""
    out: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        out[role] = out.get(role, 0.0) + (cpu - before.get(pid, (role, 0.0))[1]) / hours
    return dict(sorted(out.items()))


def capacity_at_ref(ref: str, root: Path, args) -> tuple[dict, dict, str]:
    """Scenario 1 run by the code at git `ref` (its tree exported under root, its own benchmark script
    in a subprocess with its own local Ray cluster, on root's corpus): (capacity, CPU profile, commit)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = root / f"ref-{sha[:12]}"
    if not (tree / "benchmarks" / "pipeline_efficiency.py").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    cmd = [sys.executable, str(tree / "benchmarks" / "pipeline_efficiency.py"), "--files", str(args.files),
           "--small", str(args.small), "--distinct", str(args.distinct), "--workdir", str(root),
           "--skip", "small", "--skip", "large", "--skip", "actor", *sum((["--set", o] for o in args.before), [])]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    print(f"capacity at {ref} ({sha[:12]}): {' '.join(cmd)}", flush=True)
    run = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    marker = "=== pipeline efficiency (simulated accelerator) ==="
    if run.returncode or marker not in run.stdout:
        sys.stderr.write(run.stdout[-4000:] + run.stderr[-4000:])
        raise SystemExit(f"the capacity run at {ref} failed (rc {run.returncode}); its output is above")
    out = json.loads(run.stdout.split(marker, 1)[1])
    return out["capacity"], out.get("capacity_cpu_profile_s_per_audio_hour", {}), sha


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
    from operators.audio.decode import decode_batch
    from operators.io.sources import source_table

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


def vad_options(files: list[Path], recordings: int = 3) -> dict:
    """Each voice-activity option's CPU-seconds per audio-hour in this process (one thread), on the corpus
    files and on `recordings` long recordings (4 min: speech, pauses, a long silence every 6th sentence,
    music, a noise floor), and how many files' regions differ from silero_full's (count, or an edge
    more than pad_s away). ONNX Runtime runs the package's two ONNX exports: the streaming model (one
    window per call, batched over pieces) and the sequence model (a whole file per call, batch 1)."""
    import io

    import numpy as np
    import onnxruntime as ort

    from operators.config import SegmentConfig
    from operators.audio.decode import decode_audio
    from operators.audio.vad import WINDOW, EnergyVAD, SileroVAD, speech_regions
    from pipelines import demo_corpus

    data_dir = Path(__import__("silero_vad").__file__).parent / "data"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1

    def framed(a):  # windows of 512 with the 64 samples before each (the models' context)
        n = -(-len(a) // WINDOW)
        fr = np.zeros((n, WINDOW), np.float32)
        fr.reshape(-1)[:len(a)] = a
        out = np.zeros((n, WINDOW + 64), np.float32)
        out[:, 64:] = fr
        out[1:, :64] = fr[:-1, -64:]
        return out

    seq = ort.InferenceSession(str(data_dir / "silero_vad_16k_sequence.onnx"), opts,
                               providers=["CPUExecutionProvider"])
    stream = ort.InferenceSession(str(data_dir / "silero_vad.onnx"), opts, providers=["CPUExecutionProvider"])

    def onnx_sequence(audios):
        zero = np.zeros((1, 1, 128), np.float32)
        return [seq.run(["speech_probs"], {"input": framed(a), "h": zero, "c": zero})[0] for a in audios]

    def onnx_stream(audios, per_call=256):  # pieces as SileroVAD cuts them, one window per call
        from operators.audio.vad import CHUNK_WINDOWS, WARM_WINDOWS
        out = [np.zeros(-(-len(a) // WINDOW), np.float32) for a in audios]
        pieces = []
        for f, a in enumerate(audios):
            fr = np.concatenate([np.zeros((WARM_WINDOWS, WINDOW + 64), np.float32), framed(a)])
            for w0 in range(0, len(out[f]), CHUNK_WINDOWS):
                pieces.append((f, w0, fr[w0: w0 + WARM_WINDOWS + min(CHUNK_WINDOWS, len(out[f]) - w0)]))
        pieces.sort(key=lambda p: len(p[2]))
        sr = np.array(16000, np.int64)
        for at in range(0, len(pieces), per_call):
            group = pieces[at:at + per_call]
            steps = max(len(p[2]) for p in group)
            x = np.zeros((steps, len(group), WINDOW + 64), np.float32)
            for r, (_, _, fr) in enumerate(group):
                x[:len(fr), r] = fr
            state = np.zeros((2, len(group), 128), np.float32)
            probs = np.zeros((steps, len(group)), np.float32)
            for t in range(steps):
                p, state = stream.run(None, {"input": x[t], "state": state, "sr": sr})
                probs[t] = p[:, 0]
            for r, (f, w0, fr) in enumerate(group):
                n = len(fr) - WARM_WINDOWS
                out[f][w0:w0 + n] = probs[WARM_WINDOWS:WARM_WINDOWS + n, r]
        return out

    full, gated, energy = SileroVAD(gate=False), SileroVAD(gate=True), EnergyVAD()
    options = {"silero_full (torchscript, every window)": full.probs,
               "silero (torchscript, gated)": gated.probs,
               "onnx sequence model (every window)": onnx_sequence,
               "onnx streaming model (every window)": onnx_stream,
               "energy": energy.probs}
    corpus = [sf.read(str(p), dtype="float32")[0] for p in files]
    recs = [decode_audio(demo_corpus.build_recording(240.0, seed=3 + i, music_s=20.0, noise_db=-65.0 + 12 * i)[0])
            for i in range(recordings)]
    cfg = SegmentConfig().for_backend(30.0, 30.0)
    out: dict = {}
    for set_name, audios in (("corpus", corpus), ("recordings", recs)):
        hours = sum(len(a) for a in audios) / SAMPLE_RATE / 3600
        ref = None
        for name, fn in options.items():
            fn(audios[:2])
            gated.windows_run = gated.windows_seen = 0
            c = time.process_time()
            probs = fn(audios)
            c = time.process_time() - c
            ref = probs if ref is None else ref
            differ = 0
            for a, p, q in zip(audios, probs, ref):
                mine, theirs = speech_regions(p, len(a), cfg), speech_regions(q, len(a), cfg)
                if len(mine) != len(theirs) or any(max(abs(x - y), abs(u - v)) > cfg.pad_s * SAMPLE_RATE
                                                   for (x, u), (y, v) in zip(mine, theirs)):
                    differ += 1
            row = {"cpu_s_per_audio_hour": c / hours, "files_whose_regions_differ_from_silero_full": differ,
                   "files": len(audios)}
            if fn == gated.probs:
                row["model_windows_per_window"] = gated.windows_run / max(1, gated.windows_seen)
            out.setdefault(set_name, {})[name] = row
            print(json.dumps({set_name: {name: row}}), flush=True)
    return out


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
    p.add_argument("--vad-before", metavar="METHOD", help="scenario 6: run the capacity scenario first with "
                   "segment.vad=METHOD (silero_full: the detector on every window), side by side")
    p.add_argument("--before-set", dest="before", action="append", default=[], metavar="KEY=VALUE",
                   help="scenario 6 with any overrides for the before run (e.g. segment.vad_on=decode, with "
                   "--set segment.vad_on=actor for the after run)")
    p.add_argument("--before-ref", metavar="REF", help="scenario 6 with the before run made by the code at git "
                   "REF (e.g. the commit an issue was filed at), on the same files; --before-set applies to it")
    p.add_argument("--vad-options", action="store_true", help="scenario 7: the detectors' own cost, in process")
    args = p.parse_args()
    if args.vad_before:  # the before run's detector, whichever code (this tree's or --before-ref's) runs it
        args.before.insert(0, f"segment.vad={args.vad_before}")
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    big_dir, big_audio = corpus(root, args.files, args.distinct)
    small_dir, _ = corpus(root, args.small, args.distinct)
    results: dict = {"cores": cores}
    if args.before_ref and "capacity" not in args.skip:  # first, with no cluster of ours running beside it
        load0 = os.getloadavg()[0]
        b, profile, sha = capacity_at_ref(args.before_ref, root, args)
        results["capacity_before"] = {**b, "ref": args.before_ref, "commit": sha, "overrides": args.before,
                                      "load_avg_1m_before_after": [load0, os.getloadavg()[0]]}
        results["capacity_before_cpu_profile_s_per_audio_hour"] = profile
        print(json.dumps({"capacity_before": results["capacity_before"], "profile": profile}, indent=1),
              flush=True)
    init_ray()  # one local cluster for every run: Ray start-up is outside every figure
    args.overrides = TUNED + args.overrides
    results["overrides"] = args.overrides
    results["libsndfile_audio_s_per_cpu_s"] = libsndfile_rate(sorted((root / "distinct").glob("*.flac")))

    def figures(s: dict) -> dict:
        keys = ("files", "audio_hours", "pipeline_wall_seconds", "model_busy_seconds", "model_busy_fraction",
                "first_model_call_after_job_start_s", "first_model_call_after_first_read_s",
                "last_file_written_after_last_model_call_s", "cpu_seconds_per_audio_hour", "vad",
                "cpus_per_gpu_needed_at", "carried_to_asr", "speech_fraction", "wall_seconds")
        return {k: s.get(k) for k in keys}

    if args.vad_options:
        results["vad_options"] = vad_options(sorted((root / "distinct").glob("*.flac")))

    capacity = None
    if "capacity" not in args.skip:
        runs = [("capacity_before", args.before)] if args.before and not args.before_ref else []
        for name, extra in [*runs, ("capacity", [])]:
            before = process_cpu()
            load0 = os.getloadavg()[0]
            with CpuWatch() as watch:
                s = job(big_dir, root / "out-free", 1e9, 0.0, [*args.overrides, *extra])
            after = watch.last
            hours = s["audio_hours"]
            results[f"{name}_cpu_profile_s_per_audio_hour"] = cpu_profile(before, after, hours)
            cap = s["audio_seconds"] / s["pipeline_wall_seconds"]
            results[name] = {**figures(s), "overrides": extra, "audio_s_per_wall_s": cap, "per_core": cap / cores,
                             "per_core_over_libsndfile": cap / cores / results["libsndfile_audio_s_per_cpu_s"],
                             "load_avg_1m_before_after": [load0, os.getloadavg()[0]]}
            capacity = cap
            print(json.dumps({name: results[name], "profile": results[f"{name}_cpu_profile_s_per_audio_hour"]},
                             indent=1), flush=True)
        if "capacity_before" in results:
            b, a = results["capacity_before"], results["capacity"]
            results["capacity_after_over_before"] = {
                "per_core": a["per_core"] / b["per_core"],
                "decode_cpu_s_per_audio_hour": [b["cpu_seconds_per_audio_hour"]["decode"],
                                                a["cpu_seconds_per_audio_hour"]["decode"]],
                "asr_actor_cpu_s_per_audio_hour": [b["cpu_seconds_per_audio_hour"]["asr_actor_overhead"],
                                                   a["cpu_seconds_per_audio_hour"]["asr_actor_overhead"]],
                "vad_cpu_s_per_audio_hour": [b["cpu_seconds_per_audio_hour"].get("vad"),
                                             a["cpu_seconds_per_audio_hour"].get("vad")],
                "carried_mb_per_audio_hour": [(b.get("carried_to_asr") or {}).get("mb_per_audio_hour"),
                                              a["carried_to_asr"]["mb_per_audio_hour"]],
                "ray_workers_cpu_s_per_audio_hour": [
                    results["capacity_before_cpu_profile_s_per_audio_hour"].get("ray workers"),
                    results["capacity_cpu_profile_s_per_audio_hour"].get("ray workers")]}
            print(json.dumps({"capacity_after_over_before": results["capacity_after_over_before"]}, indent=1),
                  flush=True)
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
