"""CPU prep throughput: fetch + decode + resample + segment, from the local S3 server, side by side
with a plain soundfile decode loop over the same files (one run, so the ratio is fair on a noisy box).

    python benchmarks/prep_throughput.py [--files 240] [--seed 0]

Prints audio-seconds per wall-second per core for:
  plain      fetch each object with s3fs, soundfile.read it (one core, one process)
  prep       operators.audio.decode.decode_batch: concurrent fetch, decode, downmix, resample check,
             guards, segment plan, PCM16 (one core, one process)
  prep+ray   the same stage as Ray Data tasks over every core of a local cluster (per core)
Targets (backbone issue): prep >= 2000x real time per core and >= 0.4 of plain.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.config import JobConfig  # noqa: E402
from operators.audio.decode import decode_batch  # noqa: E402
from operators.io.sources import source_table  # noqa: E402
from pipelines import demo_corpus  # noqa: E402
from pipelines.local_s3 import LocalS3  # noqa: E402


def make_files(n: int, seed: int) -> list[bytes]:
    """16 kHz FLAC speech, LibriSpeech-like lengths (2-35 s, mean ~12 s), from the espeak corpus."""
    rng = np.random.default_rng(seed)
    clips = [demo_corpus.load(e) for e in demo_corpus.entries()]
    pause = np.zeros(8000, np.float32)
    out = []
    for _ in range(n):
        target = float(np.clip(rng.gamma(3.0, 4.0), 2.0, 35.0))
        parts, total = [], 0
        while total < target * 16000:
            c = clips[rng.integers(len(clips))]
            parts += [c, pause]
            total += len(c) + len(pause)
        audio = np.concatenate(parts)[: int(target * 16000)]
        buf = io.BytesIO()
        sf.write(buf, audio, 16000, format="FLAC", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def plain_loop(fs, paths: list[str]) -> tuple[float, float, float]:
    t, c = time.perf_counter(), time.process_time()
    seconds = 0.0
    for p in paths:
        audio, sr = sf.read(io.BytesIO(fs.cat_file(p)), dtype="float32")
        seconds += len(audio) / sr
    return seconds, time.perf_counter() - t, time.process_time() - c


def prep_inline(uris: list[str], cfg: JobConfig) -> tuple[float, float, float]:
    table = source_table([u.rsplit("/", 1)[-1] for u in uris], uris)
    t, c = time.perf_counter(), time.process_time()
    seconds = 0.0
    bs = cfg.decode.batch_size
    for i in range(0, table.num_rows, bs):
        out = decode_batch(table.slice(i, bs), cfg)
        assert all(s == "ok" for s in out["status"].to_pylist()), out["error"].to_pylist()
        seconds += sum(out["duration_s"].to_pylist())
    return seconds, time.perf_counter() - t, time.process_time() - c


def prep_ray(uris: list[str], cfg: JobConfig) -> tuple[float, float, int]:
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cores = int(ray.cluster_resources()["CPU"])
    try:
        table = source_table([u.rsplit("/", 1)[-1] for u in uris], uris)
        blocks = [table.slice(i, 16) for i in range(0, table.num_rows, 16)]
        # warm the workers so start-up is not timed
        ray.data.from_arrow(blocks[:cores]).map_batches(
            decode_batch, fn_kwargs={"cfg": cfg}, batch_size=cfg.decode.batch_size,
            batch_format="pyarrow", num_cpus=cfg.decode.num_cpus).materialize()
        t = time.perf_counter()
        ds = ray.data.from_arrow(blocks).map_batches(
            decode_batch, fn_kwargs={"cfg": cfg}, batch_size=cfg.decode.batch_size,
            batch_format="pyarrow", num_cpus=cfg.decode.num_cpus)
        seconds = 0.0
        for b in ds.select_columns(["duration_s"]).iter_batches(batch_format="pyarrow", batch_size=None):
            seconds += sum(x or 0.0 for x in b["duration_s"].to_pylist())
        return seconds, time.perf_counter() - t, cores
    finally:
        ray.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="decode.batch_size")
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()

    data = make_files(args.files, args.seed)
    with LocalS3() as s3:
        os.environ.update(s3.env)
        s3.make_bucket("bench")
        fs = s3.filesystem()
        paths = [f"bench/flac/{i:05d}.flac" for i in range(len(data))]
        fs.pipe({p: d for p, d in zip(paths, data)})
        uris = [f"s3://{p}" for p in paths]
        cfg = JobConfig.model_validate({"decode": {"batch_size": args.batch_size, "num_cpus": 0.5}})

        prep_inline(uris[:16], cfg)  # warm imports and the filesystem instance
        plain_loop(fs, paths[:16])
        rows = [("plain (soundfile loop)", *plain_loop(fs, paths)),
                ("prep (decode_batch)", *prep_inline(uris, cfg)),
                ("plain again", *plain_loop(fs, paths)),  # again, so drift shows up
                ("prep again", *prep_inline(uris, cfg))]
        ray_row = prep_ray(uris, cfg) if not args.no_ray else None

    audio_s = rows[0][1]
    print(f"\n{len(data)} FLAC files, {audio_s / 3600:.2f} h of 16 kHz audio, "
          f"{sum(map(len, data)) / 1e6:.1f} MB, from SeaweedFS S3 on loopback (same machine)")
    print(f"{'method':<30} {'wall s':>7} {'cpu s':>7} {'x realtime (wall)':>18} {'per cpu-second':>15}")
    for name, s, t, c in rows:
        print(f"{name:<30} {t:7.2f} {c:7.2f} {s / t:18.0f} {s / c:15.0f}")
    if ray_row:
        s, t, cores = ray_row
        print(f"{f'prep on Ray Data, {cores} cores':<30} {t:7.2f} {'-':>7} {s / t:18.0f} "
              f"{s / t / cores:15.0f}  (wall / cores; the S3 server shares them)")
    plain = [s / c for name, s, t, c in rows if name.startswith("plain")]
    prep = [s / c for name, s, t, c in rows if name.startswith("prep")]
    plain_wall = [s / t for name, s, t, c in rows if name.startswith("plain")]
    prep_wall = [s / t for name, s, t, c in rows if name.startswith("prep")]
    print(f"\nprep / plain, per cpu-second: {np.mean(prep) / np.mean(plain):.2f}; wall: "
          f"{np.mean(prep_wall) / np.mean(plain_wall):.2f}   (target >= 0.4)")
    print(f"prep per core: {np.mean(prep):.0f}x real time per cpu-second, {np.mean(prep_wall):.0f}x "
          "per wall-second in one process   (target >= 2000x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
