"""Editor attention over a packed sequence: every sample attends only within itself, bidirectionally.

All samples of a batch go through the editor as ONE sequence (no padding); `Packing` carries the
sample boundaries (cu_seqlens). Backends, best first:

- "flash": flash-attn's varlen kernel (the optional `gpu` extra; CUDA, fp16/bf16).
- "varlen": torch.nn.attention.varlen.varlen_attn (torch >= 2.9, CUDA).
- "flex": FlexAttention with a document block mask (sparse: only same-sample blocks are computed
  when compiled, on CUDA; torch's eager fallback elsewhere materialises the scores, so it is only
  for checking: never chosen by "auto").
- "sdpa_per_sample": scaled_dot_product_attention on each sample's slice (any device; the CPU default).

None of them builds a dense (L_total x L_total) mask. The functions are registered in transformers'
AttentionInterface under ATTN_NAME, so transformers' own GraniteDecoderLayer/GraniteAttention run
them: the editor sets `config._attn_implementation = ATTN_NAME` and passes `nar_packing=Packing(...)`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
import torch
import torch.nn.functional as F

ATTN_NAME = "granite_nar_packed"
BACKENDS = ("auto", "flash", "varlen", "flex", "sdpa_per_sample")


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def varlen_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend to use: `requested` if it can run here (else a ValueError), or the best one for
    "auto"."""
    if requested not in BACKENDS:
        raise ValueError(f"attn_backend {requested!r}: choose one of {BACKENDS}")
    cuda = torch.device(device).type == "cuda"
    half = dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        if cuda and half and flash_available():
            return "flash"
        if cuda and varlen_available():
            return "varlen"
        return "sdpa_per_sample"
    if requested == "flash" and not (cuda and half and flash_available()):
        raise ValueError("attn_backend 'flash' needs CUDA, bf16/fp16 and flash-attn "
                         "(pip install 'granite-transcribe[gpu]')")
    if requested == "varlen" and not (cuda and varlen_available()):
        raise ValueError("attn_backend 'varlen' needs CUDA and torch.nn.attention.varlen (torch >= 2.9)")
    if requested == "flex" and not flex_available():
        raise ValueError("attn_backend 'flex' needs torch.nn.attention.flex_attention")
    return requested


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
        """FlexAttention BlockMask confining attention to each sample (built once per packing)."""
        if "block" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            doc = torch.repeat_interleave(torch.arange(len(self.lengths), device=self.device),
                                          torch.tensor(self.lengths, device=self.device))

            def same_sample(b, h, q_idx, kv_idx):
                return doc[q_idx] == doc[kv_idx]

            self._cache["block"] = create_block_mask(same_sample, None, None, self.total, self.total,
                                                     device=str(self.device))
        return self._cache["block"]


_flex_compiled = None


def _flex():
    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=True) if torch.cuda.is_available() else flex_attention
    return _flex_compiled


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packing: Packing,
                     scale: float) -> torch.Tensor:
    """query (1, Hq, L, D), key/value (1, Hkv, L, D) -> (1, L, Hq, D), attention within each sample."""
    backend = packing.backend
    if backend in ("flash", "varlen"):
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))   # (L, H, D)
        cu, n = packing.cu_seqlens(), packing.max_len
        if backend == "flash":
            from flash_attn import flash_attn_varlen_func

            out = flash_attn_varlen_func(q, k, v, cu, cu, n, n, softmax_scale=scale, causal=False)
        else:
            from torch.nn.attention.varlen import varlen_attn

            if k.shape[1] != q.shape[1]:  # GQA: expand kv heads
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = varlen_attn(q, k, v, cu, cu, n, n, scale=scale)
        return out.unsqueeze(0)
    gqa = key.shape[1] != query.shape[1]
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

