"""What the NAR path guarantees on a GPU (marked `gpu`; skipped without CUDA; run by
benchmarks/gpu_check.py's `tests` phase).

- Bitwise: torch's varlen attention with num_splits=1 gives a sequence the same output alone or packed
  with others of any length (the kernel's split-KV choice follows the batch's longest sequence
  otherwise).
- Not bitwise: a whole bf16 model. Its GEMMs pick kernels by the number of rows, so a clip's logits
  can move by a rounding step with the batch's composition and a near-tie can flip. What is promised
  there is a token agreement rate, stated per test below, and it is reported either way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.asr.granite_nar import GraniteNarBackend, attention
from operators.asr.granite_nar.modeling import agreement
from operators.asr.granite_nar.tiny import babble, build_tiny_checkpoint
from operators.config import ModelConfig

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _agreement(a: list[tuple[list[int], list[int]]], b: list[tuple[list[int], list[int]]]) -> float:
    """Mean token agreement of hypotheses and edits between two runs over the same clips."""
    scores = [agreement(x[k], y[k]) for x, y in zip(a, b) for k in (0, 1)]
    return float(np.mean(scores))


@needs_cuda
def test_varlen_with_one_split_is_bitwise_batch_invariant():
    if not attention.varlen_available():
        pytest.skip("torch varlen attention does not import here")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    heads, kv_heads, dim = 16, 4, 128
    lengths = [300, 4000, 17, 1200]

    def run(lens, q, k, v):
        packing = attention.Packing(list(lens), "varlen", dev)
        return attention.packed_attention(q, k, v, packing, dim ** -0.5)[0]

    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, total, dim, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, kv_heads, total, dim, device=dev, dtype=torch.bfloat16)
    packed = run(lengths, q, k, v)
    start = 0
    for n in lengths:
        alone = run([n], q[:, :, start:start + n], k[:, :, start:start + n], v[:, :, start:start + n])
        assert torch.equal(packed[start:start + n], alone), f"sequence of {n} differs packed vs alone"
        start += n


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("nar-gpu") / "ckpt", seed=3)


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(1)
    return [babble(float(rng.uniform(0.5, 30.0)), seed=i) for i in range(24)]


@needs_cuda
@pytest.mark.parametrize("dtype,floor", [("bfloat16", 0.98), ("float32", 0.995)])
def test_batched_alone_and_reversed_agree(ckpt, clips, dtype, floor, capsys):
    b = GraniteNarBackend(ModelConfig(id=str(ckpt), device="cuda", dtype=dtype))
    batched = b.transcribe_ids(clips)
    alone = [b.transcribe_ids([c])[0] for c in clips]
    reversed_ = b.transcribe_ids(clips[::-1])[::-1]
    rate_alone, rate_rev = _agreement(batched, alone), _agreement(batched, reversed_)
    exact = np.mean([x == y for x, y in zip(batched, alone)])
    with capsys.disabled():
        print(f"\n{dtype} attention {b.attn_backend}: batched vs alone {rate_alone:.4f} "
              f"(identical clips {exact:.2f}), vs reversed {rate_rev:.4f}")
    assert rate_alone >= floor and rate_rev >= floor


@needs_cuda
def test_cuda_staged_path_matches_the_cpu_model_in_fp32(ckpt, clips):
    """Pinned int16 staging, the side-stream copy and the batched device features give what the CPU
    path gives (fp32, TF32 off: only kernel rounding differs)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pcm = [(np.clip(c, -1, 1) * 32767).round().astype(np.int16).astype(np.float32) / 32767 for c in clips]
    gpu = GraniteNarBackend(ModelConfig(id=str(ckpt), device="cuda", dtype="float32")).transcribe_ids(pcm)
    cpu = GraniteNarBackend(ModelConfig(id=str(ckpt), device="cpu")).transcribe_ids(pcm)
    assert _agreement(gpu, cpu) >= 0.995
