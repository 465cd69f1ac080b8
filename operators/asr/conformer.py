"""A padding-aware forward for transformers' GraniteSpeechConformerBlock (shared by granite-nar's
encoder and granite-ar's batched encoder). No Ray in here.

Batched clips of different lengths are zero-padded to one length. Each clip must come out as it would
alone, so padded frames are masked wherever they could leak: keys of the block-local attention (a lone
clip's last block is filled with zeros and those keys are masked, in transformers' code and IBM's),
the depthwise convolution input (a lone clip sees zeros past its end) and the block output (zeroed).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def key_drop(valid: torch.Tensor, context_size: int) -> torch.Tensor | None:
    """(B*M, 1, 1, C) True where a key is padding: batch padding or the zeros that fill the last block
    up to context_size. Blocks with no valid frame keep all keys, so no row is fully masked: their
    outputs are padding, zeroed after the block. None when nothing is padded."""
    b, t = valid.shape
    c = context_size
    m = math.ceil(t / c)
    if m * c == t and bool(valid.all()):
        return None
    v = F.pad(valid, (0, m * c - t), value=False).view(b * m, c)
    drop = ~v & v.any(dim=-1, keepdim=True)
    return drop.view(b * m, 1, 1, c)


def block_attention(attn, x: torch.Tensor, dists: torch.Tensor, drop: torch.Tensor | None,
                    math_sdpa: bool = False) -> torch.Tensor:
    """GraniteSpeechConformerAttention with `drop` masking padded keys (Shaw relative positions over
    `dists`). math_sdpa: torch's reference SDPA kernel, as transformers' own forward uses."""
    x = attn.pre_norm(x)
    b, t, _ = x.shape
    c = attn.context_size
    m = math.ceil(t / c)
    if m * c > t:
        x = F.pad(x, (0, 0, 0, m * c - t))
    q = attn.to_q(x)
    k, v = attn.to_kv(x).chunk(2, dim=-1)
    q, k, v = (z.reshape(b * m, c, attn.num_heads, -1).transpose(1, 2) for z in (q, k, v))
    rel = attn.rel_pos_emb(dists)                                     # (c, c, d)
    bias = torch.einsum("bhcd,crd->bhcr", q, rel) * attn.scale        # Shaw relative positions
    if drop is not None:
        bias = bias.masked_fill(drop, -torch.finfo(bias.dtype).max)
    kernel = (torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH) if math_sdpa
              else nullcontext())
    with kernel:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, m * c, -1)[:, :t]
    return attn.to_out(out)


def conv_module(conv, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    x = conv.up_conv(conv.norm(x).transpose(1, 2))
    x = conv.glu(x)
    if pad is not None:  # padded frames are zeros for the depthwise conv, as for a lone clip
        x = x.masked_fill(pad.unsqueeze(1), 0.0)
    x = conv.depth_conv(x)
    x = conv.silu(conv.batch_norm(x))
    return conv.down_conv(x).transpose(1, 2)


def conformer_block(blk, x: torch.Tensor, pad: torch.Tensor | None, drop: torch.Tensor | None,
                    dists: torch.Tensor, math_sdpa: bool = False) -> torch.Tensor:
    """One GraniteSpeechConformerBlock (macaron FFs, attention, conv, post norm); padding zeroed."""
    x = 0.5 * blk.ff1(x) + x
    x = block_attention(blk.attn, x, dists, drop, math_sdpa) + x
    x = conv_module(blk.conv, x, pad) + x
    x = 0.5 * blk.ff2(x) + x
    x = blk.post_norm(x)
    return x if pad is None else x.masked_fill(pad.unsqueeze(-1), 0.0)


def ctc_encoder(encoder, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """transformers' GraniteSpeechCTCEncoder on zero-padded features (B, T, input_dim) with per-clip
    `lengths`: the same last hidden state each clip gets alone (padding frames zeroed). An encoder
    whose config names `cat_hidden_layers` (GraniteSpeechPlusCTCEncoder) returns those layers' outputs
    (0: the input projection) and the last state concatenated on the feature axis, as it does."""
    b, t, _ = features.shape
    valid = torch.arange(t, device=features.device).unsqueeze(0) < lengths.to(features.device).unsqueeze(1)
    pad = None if bool(valid.all()) else ~valid
    drop = key_drop(valid, encoder.layers[0].attn.context_size)
    x = encoder.input_linear(features)
    if pad is not None:
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)
    cat = set(getattr(getattr(encoder, "config", None), "cat_hidden_layers", None) or ())
    exported = [x] if 0 in cat else []
    for i, blk in enumerate(encoder.layers, start=1):
        x = conformer_block(blk, x, pad, drop, encoder.attention_dists, math_sdpa=True)
        if i == encoder.num_layers // 2:   # self-conditioning, as GraniteSpeechCTCEncoder.forward
            x = x + encoder.out_mid(torch.softmax(encoder.out(x), dim=-1))
            if pad is not None:
                x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        if i in cat:  # after the mid-layer update: transformers adds it in place to the exported state
            exported.append(x)
    return torch.cat([*exported, x], dim=-1) if exported else x
