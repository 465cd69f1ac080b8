"""granite-nar: the host time a batch of 128 spends in the backend outside the model, and how much of it
holds the model lock (the accelerator waits for it), before and after the staged backend (issue 17.4).

    python benchmarks/backend_overhead.py [--batch 128] [--seconds 30] [--repeats 3]

Before: `transcribe` ran under the stage's lock, so the tokenizer decodes (2 per clip) and the
pure-Python agreement score (an O(n*m) edit distance per clip) held the GPU idle. After: `run` alone
holds the lock and returns token ids; `finish` decodes and scores (rapidfuzz's C edit distance) outside
it. The ids are what the full model emits for `--seconds` clips (~3 hypothesis tokens per second, the
editor changing ~1 in 10), decoded by a WordLevel tokenizer of the full 100,352-token vocabulary (C
code, as the real BPE tokenizer's decode is). Also: the whole backend on the tiny model on CPU
(`transcribe` vs `run` alone), whose difference is the backend's host work outside the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.asr.base import Transcript  # noqa: E402
from operators.asr.granite_nar import GraniteNarBackend  # noqa: E402
from operators.asr.granite_nar import modeling  # noqa: E402
from operators.asr.granite_nar.tiny import babble, tiny_config, tiny_tokenizer  # noqa: E402

VOCAB = 100_352
TOKENS_PER_S = 3.0


def full_vocab_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 3)}
    vocab.update({"<unk>": VOCAB - 3, "<pad>": VOCAB - 2, "<eos>": VOCAB - 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def ids(batch: int, seconds: float, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        hyp = rng.integers(0, VOCAB - 3, int(TOKENS_PER_S * seconds)).tolist()
        edited = [t if rng.random() > 0.1 else int(rng.integers(0, VOCAB - 3)) for t in hyp]
        out.append((hyp, edited))
    return out


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    tok = full_vocab_tokenizer()
    ran = ids(args.batch, args.seconds, 0)

    def decode(x):
        return tok.decode(x, skip_special_tokens=True).strip()

    def before():  # the old transcribe's tail, all of it under the model lock
        n = len(ran)
        return [Transcript(text=decode(e), ctc_text=decode(h),
                           agreement=1.0 - modeling._edit_distance_py(h, e) / max(len(h), len(e), 1))
                for h, e in ran[:n]]

    model = modeling.build_random(tiny_config(), "cpu", seed=0)
    backend = GraniteNarBackend.from_model(model, tok, {"probe": False})
    after = lambda: backend.finish(ran)  # noqa: E731
    assert [t.text for t in before()] == [t.text for t in after()]
    assert all(abs(a.agreement - b.agreement) < 1e-12 for a, b in zip(before(), after()))
    old, new = best(before, args.repeats), best(after, args.repeats)
    print(f"post-processing of {args.batch} clips x {args.seconds:g} s ({int(TOKENS_PER_S * args.seconds)} tokens each):")
    print(f"{'':>8} {'host s':>8} {'under the lock':>15}")
    print(f"{'before':>8} {old:8.3f} {old:15.3f}")
    print(f"{'after':>8} {new:8.3f} {0.0:15.3f}")
    print(f"post-processing after / before: {new / old:.3f}; host time taken off the lock per batch: {old:.3f} s")

    # the whole backend on the tiny model: what it does outside the model (tiny vocab: decoding is cheap)
    small = GraniteNarBackend.from_model(model, tiny_tokenizer(), {"probe": False})
    clips = [babble(args.seconds, seed=i) for i in range(min(args.batch, 32))]
    total = best(lambda: small.transcribe(clips, ["en"] * len(clips)), 1)
    prepared = small.prepare(clips)
    run = best(lambda: small.run(prepared), 1)
    print(f"tiny model, {len(clips)} clips x {args.seconds:g} s on CPU: transcribe {total:.3f} s, run alone "
          f"(features + model, the lock) {run:.3f} s, prepare + finish {max(0.0, total - run):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
