"""granite-ar model throughput: the backend's batched generation vs one clip at a time, side by side
in one run (so the ratio is fair on a noisy box).

    python benchmarks/ar_model.py [--clips 32] [--batch 8] [--seed 0]        # CPU: tiny random model
    python benchmarks/ar_model.py --device cuda [--batches 32,64] [--clips 256] [--single 32]

CPU (default without CUDA): the tests' tiny random checkpoint (encoder hidden 32, LM hidden 64, float32).
It measures the batching machinery, not model speed: per-clip encoder + batched LM generate vs N
separate calls.

CUDA: a random checkpoint at about the released 2B's dimensions (16-layer 1024-wide conformer, 2-layer
Q-Former, 40-layer 2048-wide Granite LM, 100k vocabulary), bfloat16, written to disk and loaded through
the backend like the hub checkpoint; RTFx at each batch size and one-by-one on the first --single clips.

Both modes: clip lengths drawn like segmenter output of LibriSpeech-like files (2-30 s, mean ~12 s);
the repetition guard is off and every row generates to its budget (`--tokens-per-30s`, default 100,
about English speech; random weights rarely emit EOS), so both sides do the same work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.asr import load_backend  # noqa: E402
from operators.asr.granite_ar import random_checkpoint  # noqa: E402
from operators.config import ModelConfig  # noqa: E402

SR = 16_000


def make_clips(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seconds = float(np.clip(rng.gamma(3.0, 4.0), 2.0, 30.0))
        t = np.arange(int(seconds * SR)) / SR
        out.append((0.2 * np.sin(2 * np.pi * (100 + 7 * i) * t)
                    + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return sorted(out, key=len)  # the stage sorts segments by length before batching


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(backend, clips: list[np.ndarray], batch: int, device: str) -> tuple[float, list]:
    _sync(device)
    t = time.perf_counter()
    out = []
    for at in range(0, len(clips), batch):
        chunk = clips[at:at + batch]
        out += backend.transcribe(chunk, ["en"] * len(chunk))
    _sync(device)
    return time.perf_counter() - t, out


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clips", type=int, default=None, help="clips (CPU 32, CUDA 256)")
    p.add_argument("--batch", type=int, default=8, help="CPU batch size")
    p.add_argument("--batches", default="32,64", help="CUDA batch sizes")
    p.add_argument("--single", type=int, default=32, help="CUDA: clips run one by one for the ratio")
    p.add_argument("--tokens-per-30s", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="an existing checkpoint directory instead of a random one")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    n = args.clips or (256 if cuda else 32)
    options = {"repeat_max_period": 0, "max_new_tokens_per_30s": args.tokens_per_30s,
               "translate_tokens_per_30s": args.tokens_per_30s, "min_new_tokens": 8}

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = args.model or str(random_checkpoint(Path(tmp) / "ckpt", "full" if cuda else "tiny",
                                                   seed=args.seed, dtype="bfloat16" if cuda else "float32"))
        backend = load_backend("granite-ar", ModelConfig(
            id=path, device=args.device, dtype="bfloat16" if cuda else "float32", options=options))
        params = sum(x.numel() for x in backend.model.parameters())
        print(f"model: {'full-size' if cuda else 'tiny'} random, {params / 1e6:.1f} M parameters, "
              f"{backend.dtype}, {args.device}, torch threads {torch.get_num_threads()} "
              f"(built and loaded in {time.perf_counter() - t:.1f} s)")
        clips = make_clips(n, args.seed)
        audio_s = sum(len(c) for c in clips) / SR
        print(f"clips: {n}, {audio_s:.1f} s of audio (mean {audio_s / n:.1f} s), "
              f"budget {args.tokens_per_30s} tokens per 30 s")
        timed(backend, clips[:4], 4, args.device)  # warm-up

        if cuda:
            rows = []
            for b in [int(x) for x in args.batches.split(",")]:
                wall, out = timed(backend, clips, b, args.device)
                tokens = sum(sum(r.extras["tokens"].values()) for r in out)
                rows.append((f"batched {b}", wall, audio_s / wall, tokens / wall))
            sub = clips[:args.single]
            sub_s = sum(len(c) for c in sub) / SR
            wall1, out1 = timed(backend, sub, 1, args.device)
            tokens1 = sum(sum(r.extras["tokens"].values()) for r in out1)
            for name, wall, rtfx, tps in rows:
                print(f"{name:>12}: {wall:8.2f} s  RTFx {rtfx:8.1f}  {tps:9.0f} tokens/s")
            print(f"{'one by one':>12}: {wall1:8.2f} s  RTFx {sub_s / wall1:8.1f}  {tokens1 / wall1:9.0f} tokens/s"
                  f"  (first {len(sub)} clips, {sub_s:.0f} s)")
            for name, _, rtfx, _ in rows:
                print(f"ratio {name} / one by one: {rtfx / (sub_s / wall1):.1f}x")
            return 0

        wall_b, out_b = timed(backend, clips, args.batch, args.device)
        wall_1, out_1 = timed(backend, clips, 1, args.device)
        wall_b2, _ = timed(backend, clips, args.batch, args.device)  # again: the box is noisy
        tokens = sum(sum(r.extras["tokens"].values()) for r in out_b)
        same = [(r.text, r.extras) for r in out_b] == [(r.text, r.extras) for r in out_1]
        for name, wall in ((f"batched {args.batch}", wall_b), ("one by one", wall_1),
                           (f"batched {args.batch} again", wall_b2)):
            print(f"{name:>18}: {wall:7.2f} s  {n / wall:7.1f} clips/s  RTFx {audio_s / wall:7.1f}  "
                  f"{tokens / wall:8.0f} tokens/s")
        best = min(wall_b, wall_b2)
        print(f"ratio batched / one by one: {wall_1 / best:.2f}x ({tokens} tokens generated; "
              f"outputs identical: {same})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
