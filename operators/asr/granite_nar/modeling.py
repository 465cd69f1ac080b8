"""Granite Speech 4.1 2B-NAR ("NLE"), native: conformer CTC encoder -> window Q-Former projector ->
bidirectional Granite editor that rewrites the encoder's BPE CTC hypothesis in one pass.

Module names follow the published checkpoint (encoder.*, projector.*, language_model.model.*), so
its safetensors load with a strict key check. transformers' own modules are reused where they are
the same thing: GraniteSpeechConformerBlock for the encoder blocks (driven by a padding-aware forward
here) and GraniteDecoderLayer / GraniteRMSNorm / GraniteRotaryEmbedding for the editor (driven with
a packed per-sample attention instead of a causal mask).

Batch invariance: a clip's token ids do not depend on the other clips in its batch. Padded frames are
masked wherever they could leak: keys of the block-local attention, the depthwise convolution input,
the BPE pooling windows and the projector windows (zeroed, which is what a lone clip sees as padding).
The editor runs all samples packed into one sequence, position ids restarting per sample and
attention confined to each sample (see attention.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from operators.asr import conformer
from operators.asr.granite_nar import attention
from operators.asr.granite_nar.config import NarConfig

try:
    from rapidfuzz.distance.Levenshtein import distance as _levenshtein
except ImportError:  # pragma: no cover - rapidfuzz ships with jiwer, a dependency
    _levenshtein = None

LOGIT_CHUNK = 4096  # rows per vocabulary-head matmul (bounds the (rows x 100k) logits in memory)


# --------------------------------------------------------------------------------------------------
# Discrete helpers
# --------------------------------------------------------------------------------------------------
def ctc_collapse(ids: Sequence[int] | torch.Tensor, blank: int, offset: int = 0) -> list[int]:
    """Greedy CTC: collapse repeats, drop `blank`, subtract `offset` from what is left."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out: list[int] = []
    prev = None
    for t in ids:
        if t != prev and t != blank:
            out.append(int(t) - offset)
        prev = t
    return out


def insertion_slots(ids: Sequence[int], blank: int, min_length: int) -> list[int]:
    """[a, b] -> [blank, a, blank, b, blank], padded with blanks to at least `min_length`."""
    out = [blank] * max(2 * len(ids) + 1, min_length)
    out[1:2 * len(ids):2] = list(ids)
    return out


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance of two token sequences (rapidfuzz's C code where installed: it comes
    with jiwer; a plain-Python loop otherwise, e.g. on a bare GPU machine)."""
    if _levenshtein is not None:
        return _levenshtein(a, b)
    return _edit_distance_py(a, b)


def _edit_distance_py(a: Sequence[int], b: Sequence[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def agreement(hypothesis: Sequence[int], edited: Sequence[int]) -> float:
    """1 - token edit distance / longer length, in [0, 1]; 1.0 when both are empty."""
    n = max(len(hypothesis), len(edited))
    return 1.0 if n == 0 else 1.0 - edit_distance(hypothesis, edited) / n


_MM_OUT_DTYPE: dict[str, bool] = {}   # device type -> torch.mm(..., out_dtype=float32) runs there


def _logits_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) with float32 output. Half inputs on CUDA use torch.mm's `out_dtype`
    (the tensor cores accumulate in fp32 anyway; only the rounding of the result to bf16 is avoided,
    with no fp32 copy of a 100k-row head); elsewhere the operands are upcast."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.linear(x, weight, bias)
    dev = x.device.type
    if _MM_OUT_DTYPE.get(dev, True):
        try:
            out = torch.mm(x, weight.t(), out_dtype=torch.float32)
            _MM_OUT_DTYPE[dev] = True
            return out if bias is None else out + bias.float()
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE[dev] = False
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


def _argmax_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """argmax over the vocabulary of x @ weight.T + bias, logits in float32 (a bf16 rounding of
    100k logits flips near-ties), LOGIT_CHUNK rows at a time. (A positive logits scale cannot change
    the arg-max: none is applied.)"""
    out = []
    for chunk in x.split(LOGIT_CHUNK):
        out.append(_logits_fp32(chunk, weight, bias).argmax(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------
@dataclass
class EncoderOutput:
    hypotheses: list[list[int]]           # collapsed BPE CTC token ids (editor vocabulary)
    hidden_states: list[torch.Tensor]     # the projector's inputs, (B, T, hidden) each, padding zeroed
    valid: torch.Tensor                   # (B, T) bool


class ConformerEncoder(nn.Module):
    def __init__(self, config: NarConfig):
        super().__init__()
        from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechConformerBlock

        self.config = config
        e = config.encoder_config
        block_cfg = config.encoder_block_config()
        self.input_linear = nn.Linear(e.input_dim, e.hidden_dim)
        self.layers = nn.ModuleList([GraniteSpeechConformerBlock(block_cfg) for _ in range(e.num_layers)])
        self.out = nn.Linear(e.hidden_dim, e.output_dim)
        self.out_mid = nn.Linear(e.output_dim, e.hidden_dim)
        config.bpe_blank  # a head width that matches no published layout fails here, before any weights
        self.out_bpe = nn.Linear(e.hidden_dim, e.bpe_output_dim)
        self.register_buffer("attention_dists", self._dists(), persistent=False)

    def _dists(self, device=None) -> torch.Tensor:
        c, p = self.config.encoder_config.context_size, self.config.encoder_config.max_pos_emb
        seq = torch.arange(c, device=device)
        return (seq.view(-1, 1) - seq.view(1, -1)).clamp(-c, c) + p

    def reset_buffers(self, device) -> None:
        self.attention_dists = self._dists(device)

    # one conformer block, padding-aware (operators.asr.conformer) --------------------------------
    def _block(self, blk, x, pad, key_drop):
        return conformer.conformer_block(blk, x, pad, key_drop, self.attention_dists)

    def _key_drop(self, valid: torch.Tensor) -> torch.Tensor | None:
        return conformer.key_drop(valid, self.config.encoder_config.context_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        cfg = self.config
        e = cfg.encoder_config
        b, t, _ = features.shape
        valid = torch.arange(t, device=features.device).unsqueeze(0) < lengths.unsqueeze(1)
        pad = None if bool(valid.all()) else ~valid
        key_drop = self._key_drop(valid)
        wanted = cfg.resolved_layer_indices()

        x = self.input_linear(features.to(self.input_linear.weight.dtype))
        if pad is not None:
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        states = {0: x} if 0 in wanted else {}
        blank_probs = None
        for i, blk in enumerate(self.layers, start=1):
            x = self._block(blk, x, pad, key_drop)
            if i == e.self_conditioning_layer:
                probs = torch.softmax(self.out(x).float(), dim=-1)
                blank_probs = probs[..., 0]
                x = x + self.out_mid(probs.to(x.dtype))
                if pad is not None:
                    x = x.masked_fill(pad.unsqueeze(-1), 0.0)
            if i in wanted:
                states[i] = x   # the self-conditioning layer's state is the one after its residual

        # BPE head: posterior-weighted pooling over windows of `w` frames, then CTC greedy
        w = e.bpe_pooling_window
        importance = (1.0 - blank_probs).masked_fill(~valid, 0.0)
        nw = math.ceil(t / w)
        h = F.pad(x.float(), (0, 0, 0, nw * w - t)).view(b, nw, w, -1)
        imp = F.pad(importance, (0, nw * w - t)).view(b, nw, w)
        weights = imp / (imp.sum(-1, keepdim=True) + 1e-8)
        pooled = (h * weights.unsqueeze(-1)).sum(2).to(x.dtype)
        bpe_lengths = [-(-int(n) // w) for n in lengths.tolist()]
        flat = torch.cat([pooled[i, :n] for i, n in enumerate(bpe_lengths)])
        blank, offset = cfg.bpe_blank
        weight, bias = self.out_bpe.weight, self.out_bpe.bias
        classes = cfg.bpe_token_classes
        if weight.shape[0] > classes:  # an odd checkpoint's classes past the vocabulary are no token
            weight = weight[:classes]
            bias = bias[:classes] if bias is not None else None
        ids = _argmax_rows(flat, weight, bias).tolist()
        hyps, start = [], 0
        for n in bpe_lengths:
            hyps.append(ctc_collapse(ids[start:start + n], blank, offset))
            start += n
        return EncoderOutput(hyps, [states[i] for i in wanted], valid)


# --------------------------------------------------------------------------------------------------
# Projector
# --------------------------------------------------------------------------------------------------
class _CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden, bias=bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=bias)
        self.o_proj = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        n, lq, d = x.shape
        lk = kv.shape[1]
        q = self.q_proj(x).view(n, lq, self.heads, -1).transpose(1, 2)
        k = self.k_proj(kv).view(n, lk, self.heads, -1).transpose(1, 2)
        v = self.v_proj(kv).view(n, lk, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(n, lq, d))


class _MLP(nn.Module):
    def __init__(self, hidden: int, ratio: float, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(hidden, int(hidden * ratio), bias=bias)
        self.fc2 = nn.Linear(int(hidden * ratio), hidden, bias=bias)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)))


class _QFormerLayer(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.attn_norm = nn.LayerNorm(p.hidden_size, eps=p.layernorm_eps)
        self.cross_attention = _CrossAttention(p.hidden_size, p.num_heads, p.attn_bias)
        self.mlp_norm = nn.LayerNorm(p.hidden_size, eps=p.layernorm_eps)
        self.mlp = _MLP(p.hidden_size, p.mlp_ratio, p.mlp_bias)

    def forward(self, x, kv):
        x = x + self.cross_attention(self.attn_norm(x), kv)
        return x + self.mlp(self.mlp_norm(x))


class _QFormer(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.layers = nn.ModuleList([_QFormerLayer(p) for _ in range(p.num_layers)])


class WindowProjector(nn.Module):
    """Encoder states (4 layers, normed, concatenated) -> windows of block_size frames -> block_size //
    downsample_rate queries per window (learned query + mean of each downsample_rate frames) that
    cross-attend to the window (+ learned window positions)."""

    def __init__(self, config: NarConfig):
        super().__init__()
        p = self.p = config.projector_config
        self.layer_norms = nn.ModuleList([nn.LayerNorm(p.encoder_dim, eps=p.layernorm_eps)
                                          for _ in range(p.num_encoder_layers)])
        self.layer_projector = nn.Linear(p.encoder_dim * p.num_encoder_layers, p.hidden_size)
        self.qformer = _QFormer(p)
        nq = p.block_size // p.downsample_rate
        self.query = nn.Parameter(torch.randn(1, nq, p.hidden_size) * p.hidden_size ** -0.5)
        self.window_positions = nn.Parameter(torch.randn(1, p.block_size, p.hidden_size) * p.hidden_size ** -0.5)
        self.out_norm = nn.LayerNorm(p.hidden_size, eps=p.layernorm_eps)
        self.out_linear = nn.Linear(p.hidden_size, p.llm_dim)

    def forward(self, states: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = torch.cat([norm(s) for norm, s in zip(self.layer_norms, states)], dim=-1)
        x = F.gelu(self.layer_projector(x))
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)   # a lone clip's windows are zero-padded here
        b, t, d = x.shape
        nb = math.ceil(t / p.block_size)
        x = F.pad(x, (0, 0, 0, nb * p.block_size - t)).view(b * nb, p.block_size, d)
        nq = p.block_size // p.downsample_rate
        q = self.query + x.view(b * nb, nq, p.downsample_rate, d).mean(dim=2)
        kv = x + self.window_positions
        for layer in self.qformer.layers:
            q = layer(q, kv)
        return self.out_linear(self.out_norm(q.reshape(b, nb * nq, d)))


# --------------------------------------------------------------------------------------------------
# Editor
# --------------------------------------------------------------------------------------------------
class EditorBackbone(nn.Module):
    """transformers' Granite decoder layers, bidirectional, over a packed sequence (no KV cache)."""

    def __init__(self, config: NarConfig):
        super().__init__()
        from transformers.models.granite.modeling_granite import (
            GraniteDecoderLayer, GraniteRMSNorm, GraniteRotaryEmbedding)

        gcfg = config.granite_config()
        gcfg._attn_implementation = attention.register()
        self.gconfig = gcfg
        self.embed_tokens = nn.Embedding(gcfg.vocab_size, gcfg.hidden_size)
        self.layers = nn.ModuleList([GraniteDecoderLayer(gcfg, i) for i in range(gcfg.num_hidden_layers)])
        self.norm = GraniteRMSNorm(gcfg.hidden_size, eps=gcfg.rms_norm_eps)
        self.rotary_emb = GraniteRotaryEmbedding(gcfg)

    def reset_buffers(self, device) -> None:
        from transformers.models.granite.modeling_granite import GraniteRotaryEmbedding

        with torch.device(device):
            self.rotary_emb = GraniteRotaryEmbedding(self.gconfig)

    def forward(self, embeds: torch.Tensor, packing: attention.Packing) -> torch.Tensor:
        """embeds (1, L, D) (before the embedding multiplier) -> final normed hidden states (1, L, D)."""
        x = embeds * self.gconfig.embedding_multiplier
        pos = packing.position_ids()
        cos_sin = self.rotary_emb(x, pos)
        for layer in self.layers:
            x = layer(x, attention_mask=None, position_ids=pos, position_embeddings=cos_sin,
                      nar_packing=packing)
        return self.norm(x)


class EditorLM(nn.Module):
    def __init__(self, config: NarConfig):
        super().__init__()
        self.model = EditorBackbone(config)   # keys: language_model.model.*; the head is tied


@dataclass
class EditorInputs:
    embeds: torch.Tensor          # (1, L, D) packed [audio ; slots] per sample, before the multiplier
    packing: attention.Packing    # the samples' boundaries
    text_rows: torch.Tensor       # (S,) rows of the slot positions in the packed sequence
    slot_lengths: list[int]       # slots per sample


@dataclass
class NarOutput:
    hypotheses: list[list[int]]   # encoder BPE CTC ids
    edited: list[list[int]]       # editor output ids


class GraniteSpeechNar(nn.Module):
    def __init__(self, config: NarConfig):
        super().__init__()
        self.config = config
        self.encoder = ConformerEncoder(config)
        self.projector = WindowProjector(config)
        self.language_model = EditorLM(config)

    def reset_buffers(self, device) -> None:
        """Recompute the non-persistent buffers (after loading a model built on the meta device)."""
        self.encoder.reset_buffers(device)
        self.language_model.model.reset_buffers(device)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.input_linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.input_linear.weight.device

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[list[list[int]], torch.Tensor, list[int]]:
        """features (B, T, 160) zero-padded + lengths (frames) -> (hypotheses, audio embeddings
        (B, N, D) already divided by the editor's embedding multiplier, audio lengths)."""
        if features.shape[1] == 0:  # every clip shorter than one frame: keep one masked frame
            features = features.new_zeros((features.shape[0], 1, features.shape[2]))
        enc = self.encoder(features, lengths)
        audio = self.projector(enc.hidden_states, enc.valid)
        if self.config.scale_projected_embeddings:
            audio = audio / self.config.text_config["embedding_multiplier"]
        ds = self.config.projector_config.downsample_rate
        audio_lengths = [int(n) // ds for n in lengths.tolist()]
        return enc.hypotheses, audio, audio_lengths

    def editor_inputs(self, hypotheses: Sequence[Sequence[int]], audio: torch.Tensor,
                      audio_lengths: Sequence[int], backend: str = "sdpa_per_sample") -> EditorInputs:
        """Pack every sample's [audio embeddings ; embedded insertion slots] into one sequence."""
        cfg = self.config
        lm = self.language_model.model
        blank = cfg.blank_token_id
        slots = [insertion_slots(h, blank, cfg.min_edit_sequence_length) for h in hypotheses]
        dev = audio.device
        text_emb = lm.embed_tokens(torch.tensor([t for s in slots for t in s], dtype=torch.long, device=dev))
        pieces, rows, lengths, row, tpos = [], [], [], 0, 0
        for i, (a, s) in enumerate(zip(audio_lengths, slots)):
            pieces += [audio[i, :a].to(text_emb.dtype), text_emb[tpos:tpos + len(s)]]
            rows.extend(range(row + a, row + a + len(s)))
            lengths.append(a + len(s))
            row += a + len(s)
            tpos += len(s)
        embeds = torch.cat(pieces).unsqueeze(0)
        text_rows = torch.tensor(rows, dtype=torch.long).to(dev, non_blocking=True)
        return EditorInputs(embeds, attention.Packing(lengths, backend, dev), text_rows,
                            [len(s) for s in slots])

    def editor_hidden(self, inputs: EditorInputs) -> torch.Tensor:
        """The bidirectional editor over the packed sequence -> (L, D) final normed hidden states."""
        return self.language_model.model(inputs.embeds, inputs.packing)[0]

    def edit_ids(self, inputs: EditorInputs, hidden: torch.Tensor) -> list[list[int]]:
        """Arg-max of the tied vocabulary head at the slot positions, collapsed per sample."""
        text_hidden = hidden.index_select(0, inputs.text_rows)
        ids = _argmax_rows(text_hidden, self.language_model.model.embed_tokens.weight).tolist()
        out, start = [], 0
        for n in inputs.slot_lengths:
            out.append(ctc_collapse(ids[start:start + n], self.config.blank_token_id))
            start += n
        return out

    def edit(self, hypotheses: Sequence[Sequence[int]], audio: torch.Tensor, audio_lengths: Sequence[int],
             backend: str = "sdpa_per_sample", packed: bool = True) -> list[list[int]]:
        """One editing pass. packed=True: every sample in one sequence; False: one forward per
        sample (reference path for tests)."""
        if not packed:
            return [self.edit([h], audio[i:i + 1], [a], backend)[0]
                    for i, (h, a) in enumerate(zip(hypotheses, audio_lengths))]
        inputs = self.editor_inputs(hypotheses, audio, audio_lengths, backend)
        return self.edit_ids(inputs, self.editor_hidden(inputs))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, backend: str = "sdpa_per_sample",
                packed: bool = True) -> NarOutput:
        hyps, audio, audio_lengths = self.encode(features, lengths)
        return NarOutput(hyps, self.edit(hyps, audio, audio_lengths, backend, packed))


def build_random(config: NarConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> GraniteSpeechNar:
    """A model with random weights, built directly on `device` and cast to `dtype`, its
    non-persistent buffers (RoPE inverse frequencies, relative-position distances) re-created after the
    cast: a blanket `.to(bf16)` would round inv_freq and give wrong rotary angles."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = GraniteSpeechNar(config)
    model = model.to(dtype)
    model.reset_buffers(torch.device(device))
    return model.eval().requires_grad_(False)
