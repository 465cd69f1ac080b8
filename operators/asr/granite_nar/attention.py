"""Editor attention over a packed sequence: every sample attends only within itself, bidirectionally.

All samples of a batch go through the editor as ONE sequence (no padding); `Packing` carries the
sample boundaries (cu_seqlens). Backends, and what each one guarantees:

- "flash": flash-attn 2's varlen kernel (the optional `flash` extra; CUDA, fp16/bf16 only). GQA is
  native (K/V keep their fewer heads). Its non-paged varlen forward never splits the KV sequence
  except in the decoding shape (max_seqlen_q == 1 with GQA, `seqlenq_ngroups_swapped` in
  flash_api.cpp mha_varlen_fwd); that shape is avoided here by expanding K/V, so a sample's output
  does not depend on the other samples of the batch.
- "varlen": torch.nn.attention.varlen.varlen_attn (torch >= 2.10; CUDA, fp16/bf16 only). Where
  varlen_attn has `num_splits` (torch 2.13 does, 2.11 does not: detected from its signature) it is
  called with num_splits=1: no split-KV, which torch documents as giving bitwise identical outputs
  for a sequence whatever else is in the batch. Where it has `enable_gqa` GQA is native, else K/V
  are expanded (repeat_interleave). Without num_splits (torch 2.11) torch's bundled FA2 varlen
  forward splits KV only for a paged KV cache (unused) or the decoding shape (avoided as above),
  so it is batch invariant too, as long as the FA2 implementation (torch's default) is active.
- "flex": FlexAttention with a document BlockMask built from the sample boundaries (no L x L
  tensor; O((L/128)^2) memory). Sparse when compiled on CUDA; torch's eager fallback elsewhere
  materialises the scores, so it is only for checking: never chosen by "auto".
- "sdpa_per_sample": scaled_dot_product_attention on each sample's slice (any device and dtype;
  the CPU and fp32 default). Bitwise batch invariant by construction: each sample is its own call.

Bitwise equality across different batch compositions is promised only by sdpa_per_sample, by
varlen with num_splits=1 and by flash outside the decoding shape; other bf16/fp16 kernels (flex
compiled, varlen without num_splits on future kernels) only promise the usual low-precision
closeness. "auto" picks, on CUDA with fp16/bf16: flash if its CUDA extension imports, else varlen,
else sdpa_per_sample; anything else (CPU, fp32): sdpa_per_sample.

None of them builds a dense (L_total x L_total) mask. The functions are registered in transformers'
AttentionInterface under ATTN_NAME, so transformers' own GraniteDecoderLayer/GraniteAttention run
them: the editor sets `config._attn_implementation = ATTN_NAME` and passes `nar_packing=Packing(...)`.

`kernel_report()` says, per backend, "ok" or why it cannot run. `main([--no-cuda,] NAME...)` prints
it and returns 1 when a named kernel is not usable: the GPU preflight, and the image build check
(no GPU there, so it only checks that the kernel imports):
    python -c "import sys; from operators.asr.granite_nar.attention import main; sys.exit(main(['--no-cuda', 'flash']))"
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ATTN_NAME = "granite_nar_packed"
BACKENDS = ("auto", "flash", "varlen", "flex", "sdpa_per_sample")
FLEX_BLOCK = 128            # FlexAttention's sparse block size (q and kv)
_HALF = (torch.float16, torch.bfloat16)
_FLASH_FIX = "install a flash-attn wheel built for this torch/CUDA (pip install 'granite-transcribe[flash]')"


# --------------------------------------------------------------------------------------------------
# Which kernels can run here
# --------------------------------------------------------------------------------------------------
def _import_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


@functools.lru_cache(maxsize=None)
def _probe_flash() -> str | None:
    """None when flash-attn 2's CUDA extension and varlen entry point import, else why not.

    flash-attn imports `flash_attn_2_cuda` lazily; a wheel built for another torch/CUDA fails there
    (ImportError: undefined symbol, OSError from a broken .so), so the extension itself is imported.
    """
    try:
        installed = importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        installed = True        # a half-imported flash_attn in sys.modules: the import below says why
    if not installed:
        return f"flash-attn is not installed; {_FLASH_FIX}"
    try:
        import flash_attn_2_cuda  # noqa: F401
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception as e:  # ImportError, OSError (bad .so), RuntimeError from the package init...
        return f"flash-attn is installed but its CUDA extension does not import ({_import_error(e)}); {_FLASH_FIX}"
    return None


@functools.lru_cache(maxsize=None)
def _probe_varlen() -> str | None:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except Exception as e:
        return (f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn "
                f"({_import_error(e)}); it needs torch >= 2.10")
    return None


@functools.lru_cache(maxsize=None)
def _probe_flex() -> str | None:
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except Exception as e:
        return f"torch {torch.__version__} has no FlexAttention ({_import_error(e)})"
    if not hasattr(BlockMask, "from_kv_blocks"):
        return f"torch {torch.__version__}'s BlockMask has no from_kv_blocks"
    return None


def clear_caches() -> None:
    """Forget the cached import probes (tests; after installing a kernel in a running process)."""
    for f in (_probe_flash, _probe_varlen, _probe_flex, _varlen_kwargs):
        getattr(f, "cache_clear", lambda: None)()     # tolerate a monkeypatched probe


def flash_available() -> bool:
    return torch.cuda.is_available() and _probe_flash() is None


def varlen_available() -> bool:
    return torch.cuda.is_available() and _probe_varlen() is None


def flex_available() -> bool:
    return _probe_flex() is None


def kernel_report(need_cuda: bool = True) -> dict[str, str]:
    """{backend: "ok" | why it cannot run}. need_cuda=False only checks that the kernels import in a
    CUDA build of torch (an image build has no GPU)."""
    def cuda_reason() -> str | None:
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is not a CUDA build"
        if need_cuda and not torch.cuda.is_available():
            return "no CUDA device is visible (torch.cuda.is_available() is False)"
        return None

    report = {}
    for name, probe in (("flash", _probe_flash), ("varlen", _probe_varlen)):
        report[name] = probe() or cuda_reason() or "ok"
    report["flex"] = _probe_flex() or "ok"
    report["sdpa_per_sample"] = "ok"
    return report


def _why_not(backend: str, cuda: bool, dtype: torch.dtype) -> str | None:
    """Why `backend` cannot run on this device/dtype (None: it can), with the fix."""
    if backend in ("flash", "varlen"):
        kernel = "flash-attn" if backend == "flash" else "torch's varlen_attn"
        if not cuda:
            return (f"attn_backend {backend!r} needs CUDA: {kernel} runs only on a CUDA device; use "
                    "'sdpa_per_sample' (or 'auto') on CPU")
        if dtype not in _HALF:
            return (f"attn_backend {backend!r} needs float16/bfloat16: {kernel} does not run in {dtype}; "
                    "set dtype bfloat16 or use attn_backend 'sdpa_per_sample' (or 'auto')")
        available = flash_available if backend == "flash" else varlen_available
        if not available():
            if not torch.cuda.is_available():
                reason = "no CUDA device is visible (torch.cuda.is_available() is False)"
            else:
                reason = (_probe_flash if backend == "flash" else _probe_varlen)() or f"{kernel} is not usable"
            return f"attn_backend {backend!r} needs {kernel}: {reason}; or use attn_backend 'auto'"
        return None
    if backend == "flex":
        reason = _probe_flex()
        return f"attn_backend 'flex': {reason}; use 'sdpa_per_sample' or 'auto'" if reason else None
    return None


def resolve_backend(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend to use: `requested` if it can run here (else a ValueError saying why and what to
    do), or for "auto": on CUDA in fp16/bf16 flash, else varlen, else sdpa_per_sample; anything else
    sdpa_per_sample."""
    if requested not in BACKENDS:
        raise ValueError(f"attn_backend {requested!r}: choose one of {BACKENDS}")
    cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        if cuda and dtype in _HALF:
            if flash_available():
                return "flash"
            if varlen_available():
                return "varlen"
        return "sdpa_per_sample"
    reason = _why_not(requested, cuda, dtype)
    if reason:
        raise ValueError(reason)
    return requested


# --------------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------------
def _same_sample_mod(doc: torch.Tensor):
    """mask_mod: q and kv in the same sample. A new closure per packing does not recompile a
    torch.compile'd flex_attention: Dynamo guards on the function's code and on the captured tensor's
    dtype/rank (sizes are dynamic), not on the closure object (tests/unit/test_attention.py)."""
    def same_sample(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    return same_sample


def document_block_mask(lengths: list[int], device: torch.device | str, block: int = FLEX_BLOCK):
    """FlexAttention BlockMask for samples of `lengths` packed back to back, built from the sample
    boundaries alone: no (L x L) tensor. Per q block, the kv blocks it needs are one contiguous range
    (from the block holding the start of its first sample to the block holding the end of its last);
    a (q, kv) block pair lying wholly inside one sample is "full" (mask_mod skipped), the rest of the
    range is partial (mask_mod doc[q] == doc[kv]). Same blocks, full/partial split included, as
    create_block_mask. Memory: O(L) for the doc ids, O(nb^2) int32 for the block indices with
    nb = ceil(L / block) (1 MiB per tensor at L = 64k), plus torch's O(nb^2) transpose for the q-side
    indices."""
    from torch.nn.attention.flex_attention import BlockMask

    dev = torch.device(device)
    lengths = [int(n) for n in lengths]
    total = sum(lengths)
    nb = max(1, -(-total // block))
    if total == 0:
        zeros = torch.zeros((1, 1, nb), dtype=torch.int32, device=dev)
        idx = torch.zeros((1, 1, nb, nb), dtype=torch.int32, device=dev)
        return BlockMask.from_kv_blocks(kv_num_blocks=zeros, kv_indices=idx, full_kv_num_blocks=zeros,
                                        full_kv_indices=idx, BLOCK_SIZE=block, seq_lengths=(0, 0))
    offs = torch.tensor([0] + lengths, dtype=torch.int64, device=dev).cumsum(0)   # (n + 1,)
    blk = torch.arange(nb, dtype=torch.int64, device=dev)
    first = blk * block                                                          # first position
    last = torch.clamp((blk + 1) * block, max=max(total, 1)) - 1                  # last real position
    # doc of a position p: the last sample whose start <= p (empty samples are skipped over)
    d_first = torch.searchsorted(offs, first, right=True) - 1
    d_last = torch.searchsorted(offs, last, right=True) - 1
    n_docs = len(lengths)
    # kv range of each q block: the blocks overlapping [start(d_first), end(d_last))
    lo = offs[d_first] // block
    hi = (offs[d_last + 1] - 1).clamp(min=0) // block
    # a block is "pure" when all its `block` rows are real and in one sample
    pure = (d_first == d_last) & ((blk + 1) * block <= total)
    # full kv blocks of a pure q block in sample d: the blocks wholly inside d
    f_lo = (offs[d_first] + block - 1) // block
    f_hi = offs[d_first + 1] // block - 1
    n_full = torch.where(pure, (f_hi - f_lo + 1).clamp(min=0), torch.zeros_like(lo))
    f_lo = torch.where(n_full > 0, f_lo, lo)
    n_left = torch.where(n_full > 0, f_lo - lo, hi - lo + 1)                     # partial before full
    n_right = torch.where(n_full > 0, hi - (f_lo + n_full - 1), torch.zeros_like(lo))
    n_part = n_left + n_right

    k = torch.arange(nb, dtype=torch.int32, device=dev).unsqueeze(0)               # (1, nb)
    lo32, n_left32 = lo.to(torch.int32).unsqueeze(1), n_left.to(torch.int32).unsqueeze(1)
    skip = n_full.to(torch.int32).unsqueeze(1)
    part_idx = torch.where(k < n_left32, lo32 + k, lo32 + k + skip).clamp_(0, nb - 1)
    full_idx = (f_lo.to(torch.int32).unsqueeze(1) + k).clamp_(0, nb - 1)
    doc = torch.repeat_interleave(torch.arange(n_docs, dtype=torch.int32, device=dev),
                                  torch.tensor(lengths, dtype=torch.int64, device=dev))
    return BlockMask.from_kv_blocks(
        kv_num_blocks=n_part.to(torch.int32).view(1, 1, nb),
        kv_indices=part_idx.view(1, 1, nb, nb),
        full_kv_num_blocks=n_full.to(torch.int32).view(1, 1, nb),
        full_kv_indices=full_idx.view(1, 1, nb, nb),
        BLOCK_SIZE=block,
        mask_mod=_same_sample_mod(doc),
        seq_lengths=(total, total),
    )


@dataclass
class Packing:
    """Boundaries of the samples packed into one sequence."""

    lengths: list[int]
    backend: str
    device: torch.device
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths) if self.lengths else 0

    def offsets(self) -> list[int]:
        out, acc = [0], 0
        for n in self.lengths:
            acc += n
            out.append(acc)
        return out

    def cu_seqlens(self) -> torch.Tensor:
        if "cu" not in self._cache:
            self._cache["cu"] = torch.tensor(self.offsets(), dtype=torch.int32, device=self.device)
        return self._cache["cu"]

    def position_ids(self) -> torch.Tensor:
        """(1, total): 0..n-1 for each sample."""
        if "pos" not in self._cache:
            self._cache["pos"] = torch.cat([torch.arange(n, device=self.device) for n in self.lengths]
                                           ).unsqueeze(0) if self.lengths else torch.zeros(
                (1, 0), dtype=torch.long, device=self.device)
        return self._cache["pos"]

    def block_mask(self):
        """FlexAttention BlockMask confining attention to each sample (built once per packing, from
        the boundaries: see document_block_mask)."""
        if "block" not in self._cache:
            self._cache["block"] = document_block_mask(self.lengths, self.device)
        return self._cache["block"]


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------
_flex_compiled = None


def _flex():
    """flex_attention, compiled once with dynamic shapes on CUDA (eager elsewhere)."""
    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=True) if torch.cuda.is_available() else flex_attention
    return _flex_compiled


@functools.lru_cache(maxsize=None)
def _varlen_kwargs(fn) -> frozenset[str]:
    """Which of the batch-invariance/GQA keywords ("num_splits", "enable_gqa") `fn` accepts:
    torch 2.13's varlen_attn has both, torch 2.11's neither."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset()
    return frozenset(k for k in ("num_splits", "enable_gqa") if k in params)


def _expand_kv(k: torch.Tensor, v: torch.Tensor, hq: int) -> tuple[torch.Tensor, torch.Tensor]:
    rep = hq // k.shape[1]
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packing: Packing,
                     scale: float) -> torch.Tensor:
    """query (1, Hq, L, D), key/value (1, Hkv, L, D) -> (1, L, Hq, D), attention within each sample."""
    backend = packing.backend
    gqa = key.shape[1] != query.shape[1]
    if backend in ("flash", "varlen"):
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))   # (L, H, D)
        cu, n = packing.cu_seqlens(), packing.max_len
        if gqa and n == 1:
            # max_seqlen_q == 1 with fewer kv heads is FA2's decoding shape, the one case where it
            # splits KV with a batch-size-dependent heuristic; equal heads avoid it (and cost nothing).
            k, v = _expand_kv(k, v, q.shape[1])
            gqa = False
        if backend == "flash":
            from flash_attn import flash_attn_varlen_func

            # GQA native; FA2 2.8's varlen API has no num_splits (and needs none, see above)
            out = flash_attn_varlen_func(q, k, v, cu, cu, n, n, softmax_scale=scale, causal=False)
        else:
            import torch.nn.attention.varlen as tv

            fn = tv.varlen_attn
            supported = _varlen_kwargs(fn)
            kwargs = {"scale": scale}
            if "num_splits" in supported:
                kwargs["num_splits"] = 1     # no split-KV: batch invariant (torch's docs)
            if gqa:
                if "enable_gqa" in supported:
                    kwargs["enable_gqa"] = True
                else:
                    k, v = _expand_kv(k, v, q.shape[1])
            out = fn(q, k, v, cu, cu, n, n, **kwargs)
        return out.unsqueeze(0)
    if backend == "flex":
        out = _flex()(query, key, value, block_mask=packing.block_mask(), scale=scale,
                      enable_gqa=gqa)
        return out.transpose(1, 2)
    if backend == "sdpa_per_sample":
        offs = packing.offsets()
        if len(offs) == 2:
            out = F.scaled_dot_product_attention(query, key, value, scale=scale, enable_gqa=gqa)
        else:
            out = torch.cat([
                F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                               scale=scale, enable_gqa=gqa)
                for a, b in zip(offs[:-1], offs[1:]) if b > a], dim=2)
        return out.transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}")


def _attention_interface(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         nar_packing: Packing | None = None, **kwargs):
    """transformers AttentionInterface signature; `attention_mask` is unused (always None)."""
    if nar_packing is None:
        raise RuntimeError(f"the {ATTN_NAME} attention needs nar_packing=Packing(...)")
    return packed_attention(query, key, value, nar_packing, scaling), None


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _attention_interface)
    return ATTN_NAME


def main(argv: list[str] | None = None) -> int:
    """Print kernel_report() as JSON; exit 1 if a kernel named on the command line is not "ok".
    --no-cuda: only check that the kernels import (image build, no GPU)."""
    args = list(sys.argv[1:] if argv is None else argv)
    need_cuda = "--no-cuda" not in args
    names = [a for a in args if not a.startswith("--")]
    report = kernel_report(need_cuda=need_cuda)
    print(json.dumps(report, indent=2))
    bad = [n for n in names if report.get(n, f"unknown kernel (one of {sorted(report)})") != "ok"]
    for n in bad:
        print(f"{n}: {report.get(n, 'unknown kernel')}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
