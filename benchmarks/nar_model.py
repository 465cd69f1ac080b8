"""granite-nar model-only throughput (no I/O, no features in the timing), random weights, no checkpoint.

    python benchmarks/nar_model.py [--batch 128] [--repeats 3] [--seed 0] [--tiny]

With CUDA: the full-size 2.25B model in bf16, one batch of `--batch` clips with LibriSpeech-like
lengths (2-35 s, mean ~12 s), encoder hypotheses replaced by random ids at ~3 tokens per second of
audio (random weights would otherwise give arbitrary lengths). Prints RTFx (audio seconds / model
seconds) and peak GPU memory for each editor attention backend that runs here (flash, varlen, flex,
sdpa_per_sample) side by side.
Without CUDA (or with --tiny): the tiny test model on CPU, batch 32 (default), batched vs one by one
with the same clips, and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.asr.features import log_mel  # noqa: E402
from operators.asr.granite_nar import attention  # noqa: E402
from operators.asr.granite_nar.config import NarConfig  # noqa: E402
from operators.asr.granite_nar.modeling import GraniteSpeechNar, build_random  # noqa: E402
from operators.asr.granite_nar.tiny import babble, random_model, tiny_config  # noqa: E402

TOKENS_PER_S = 3.0


def librispeech_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.gamma(4.0, 3.0, n), 2.0, 35.0)


def make_inputs(n: int, seed: int, device) -> tuple[list[torch.Tensor], list[float]]:
    rng = np.random.default_rng(seed)
    secs = librispeech_lengths(n, rng)
    return [log_mel(babble(float(s), seed=seed * 10_000 + i)).to(device) for i, s in enumerate(secs)], list(secs)


def pad(feats: list[torch.Tensor], dtype) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in feats], device=feats[0].device)
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(dtype), lengths


def forced_hypotheses(secs: list[float], vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + 1)
    return [rng.integers(0, vocab - 2, max(1, round(TOKENS_PER_S * s))).tolist() for s in secs]


def run_once(model: GraniteSpeechNar, feats, secs, backend: str, forced: list[list[int]] | None, seed: int):
    x, lengths = pad(feats, model.dtype)
    hyps, audio, audio_lengths = model.encode(x, lengths)
    if forced is not None:
        hyps = forced
    return model.edit(hyps, audio, audio_lengths, backend)


def timed(fn, repeats: int, cuda: bool) -> float:
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def gpu(args) -> None:
    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    cfg = NarConfig()
    model = build_random(cfg, device, torch.bfloat16, args.seed)   # RoPE buffers re-created in fp32
    feats, secs = make_inputs(args.batch, args.seed, device)
    forced = forced_hypotheses(secs, cfg.vocab_size, args.seed)
    audio_s = sum(secs)
    print(f"granite-nar full size ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params), bf16, "
          f"{torch.cuda.get_device_name()}; batch {args.batch}, {audio_s:.0f} s of audio "
          f"(mean {audio_s / len(secs):.1f} s), hypotheses {TOKENS_PER_S:g} tokens/s")
    backends = [b for b in ("flash", "varlen", "flex", "sdpa_per_sample")
                if _resolves(b, device)]
    print(f"{'backend':>16} {'seconds':>9} {'RTFx':>8} {'peak GiB':>9}")
    with torch.inference_mode():
        for b in backends:
            try:
                run_once(model, feats, secs, b, forced, args.seed)   # warm-up (and compile for flex)
                torch.cuda.reset_peak_memory_stats()
                t = timed(lambda: run_once(model, feats, secs, b, forced, args.seed), args.repeats, True)
                peak = torch.cuda.max_memory_allocated() / 2**30
                print(f"{b:>16} {t:9.3f} {audio_s / t:8.0f} {peak:9.1f}")
            except Exception as e:  # noqa: BLE001
                print(f"{b:>16} failed: {type(e).__name__}: {e}"[:200])
            torch.cuda.empty_cache()


def _resolves(backend: str, device) -> bool:
    try:
        attention.resolve_backend(backend, device, torch.bfloat16)
        return True
    except ValueError:
        return False


def cpu(args) -> None:
    torch.manual_seed(args.seed)
    cfg = tiny_config()
    model = random_model(cfg, args.seed)
    n = args.batch if args.batch_given else 32
    feats, secs = make_inputs(n, args.seed, "cpu")
    forced = forced_hypotheses(secs, cfg.vocab_size, args.seed)
    audio_s = sum(secs)
    print(f"granite-nar tiny model on CPU ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
          f"{torch.get_num_threads()} threads; {n} clips, {audio_s:.0f} s of audio; hypotheses "
          f"{TOKENS_PER_S:g} tokens/s; editor attention sdpa_per_sample")
    with torch.inference_mode():
        run_once(model, feats, secs, "sdpa_per_sample", forced, args.seed)
        batched = timed(lambda: run_once(model, feats, secs, "sdpa_per_sample", forced, args.seed),
                        args.repeats, False)
        single = timed(lambda: [run_once(model, [f], [s], "sdpa_per_sample", [h], args.seed)
                                for f, s, h in zip(feats, secs, forced)], args.repeats, False)
        same = run_once(model, feats, secs, "sdpa_per_sample", forced, args.seed) == [
            run_once(model, [f], [s], "sdpa_per_sample", [h], args.seed)[0] for f, s, h in zip(feats, secs, forced)]
    print(f"{'mode':>12} {'seconds':>9} {'RTFx':>8}")
    print(f"{'batched':>12} {batched:9.3f} {audio_s / batched:8.0f}")
    print(f"{'one by one':>12} {single:9.3f} {audio_s / single:8.0f}")
    print(f"speed-up batched / one by one: {single / batched:.2f}x; identical ids: {same}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the tiny CPU run even when CUDA is present")
    args = p.parse_args(argv)
    args.batch_given = args.batch is not None
    if args.batch is None:
        args.batch = 128
    if torch.cuda.is_available() and not args.tiny:
        gpu(args)
    else:
        cpu(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
