"""granite-nar backend: IBM Granite Speech 4.1 2B-NAR, native (no trust_remote_code), batch-invariant.

asr.model: id = local checkpoint directory or hub id (default the published model at a pinned
revision), device auto|cpu|cuda, dtype auto (bf16 on CUDA, fp32 on CPU)|float32|bfloat16|float16.
asr.model.options:
  attn_backend   auto | flash | varlen | flex | sdpa_per_sample (editor attention; auto picks the best)
  max_batch      clips per model call (default 128; a transcribe() call is cut into sorted sub-batches)
  max_clip_s     longest clip accepted (default 240 s: the editor holds 4096 positions)
  empty_cache    true: torch.cuda.empty_cache() between sub-batches of very different shapes
  bpe_blank_shifted  unset (default): the BPE CTC head's layout follows its width (vocab + 1: blank 0,
                 class k = token k-1; vocab: classes are token ids, blank = blank_token_id); true/false
                 forces one reading for a checkpoint of another width
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from operators.asr import checks
from operators.asr.base import Transcript, model_identity
from operators.asr.features import batch_features
from operators.asr.granite_nar import attention
from operators.asr.granite_nar.loader import inspect_checkpoint, load_model, load_tokenizer, resolve_model_dir
from operators.asr.granite_nar.modeling import agreement
from operators.config import ModelConfig

DEFAULT_MODEL = "ibm-granite/granite-speech-4.1-2b-nar"
DEFAULT_REVISION = "a1e3416e25ce29ab3852778e54fa8b3bd59c4bf2"
SAMPLE_RATE = 16_000
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_OPTIONS = ("attn_backend", "max_batch", "max_clip_s", "empty_cache", "bpe_blank_shifted")


def _options(cfg: ModelConfig) -> dict:
    opts = dict(cfg.options)
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise checks.ModelCheckError(f"asr.model.options: unknown granite-nar options {unknown}; known: "
                                     f"{list(_OPTIONS)}")
    if cfg.dtype != "auto" and cfg.dtype not in _DTYPES:
        raise checks.ModelCheckError(f"asr.model.dtype {cfg.dtype!r}: use auto, {', '.join(_DTYPES)}")
    return opts


class GraniteNarBackend:
    name = "granite-nar"
    segment_target_s = 30.0   # the editor was trained on windows up to 30 s
    segment_max_s = 60.0      # it holds ~4 min (4096 positions): an unbroken region may run to 60 s
    languages = frozenset({"en", "fr", "de", "es", "pt"})   # the model card's; plain transcription only

    def __init__(self, cfg: ModelConfig):
        self.model_id, self.revision = self.identity(cfg)
        opts = _options(cfg)
        self.max_clip_s = float(opts.get("max_clip_s", 240.0))
        self.max_batch = int(opts.get("max_batch", 128))
        self.empty_cache = bool(opts.get("empty_cache", False))
        if cfg.device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = cfg.device
        self.device = torch.device(device)
        if cfg.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[cfg.dtype]
        self.attn_backend = attention.resolve_backend(str(opts.get("attn_backend", "auto")), self.device, self.dtype)
        model_dir = resolve_model_dir(cfg.id or DEFAULT_MODEL, None if cfg.id and Path(cfg.id).is_dir()
                                      else self.revision)
        shifted = opts.get("bpe_blank_shifted")
        self.model = load_model(model_dir, self.device, self.dtype,
                                bpe_blank_shifted=None if shifted is None else bool(shifted))
        self.tokenizer = load_tokenizer(model_dir)
        self._last_shape: tuple[int, int] | None = None

    @staticmethod
    def identity(cfg: ModelConfig) -> tuple[str, str]:
        return model_identity(cfg.id, cfg.revision, DEFAULT_MODEL, DEFAULT_REVISION)

    @staticmethod
    def check(cfg: ModelConfig) -> str:
        """On the driver, before Ray: options, then the checkpoint (config.json, every key and shape in
        the safetensors headers, the BPE head's layout, the tokenizer) without loading a tensor.
        Returns what was found, for the log; raises ModelCheckError."""
        opts = _options(cfg)
        model_id = cfg.id or DEFAULT_MODEL
        revision = None if cfg.id and Path(cfg.id).is_dir() else (cfg.revision or DEFAULT_REVISION)
        model_dir, from_hub = checks.locate(model_id, revision, "granite-nar")
        shifted = opts.get("bpe_blank_shifted")
        ckpt = inspect_checkpoint(model_dir, None if shifted is None else bool(shifted),
                                  shapes=checks.shapes_for(model_dir, from_hub, model_id, revision))
        checks.load_tokenizer_or_fail(model_dir)
        return (f"{model_dir}: {'native transformers' if ckpt.native else 'hub'} layout, "
                f"BPE head {ckpt.bpe_layout}")

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.inference_mode()
    def transcribe_ids(self, audios: Sequence[np.ndarray]) -> list[tuple[list[int], list[int]]]:
        """(hypothesis ids, edited ids) per clip, same order; clips run in length-sorted sub-batches."""
        limit = self.max_clip_s * SAMPLE_RATE
        for i, a in enumerate(audios):
            if len(a) > limit:
                raise ValueError(f"clip {i} of {len(a) / SAMPLE_RATE:.1f} s exceeds granite-nar's "
                                 f"{self.max_clip_s:g} s limit (the editor holds 4096 positions); "
                                 "segment the audio first (segment.max_segment_s)")
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]), reverse=True)
        out: list[tuple[list[int], list[int]]] = [None] * len(audios)  # type: ignore[list-item]
        for s in range(0, len(order), self.max_batch):
            idx = order[s:s + self.max_batch]
            feats, lengths = batch_features([np.asarray(audios[i], np.float32) for i in idx], "nar", self.device)
            shape = (len(idx), int(feats.shape[1]))
            if self.empty_cache and self.device.type == "cuda" and self._last_shape and (
                    shape[1] < self._last_shape[1] // 2):
                torch.cuda.empty_cache()
            self._last_shape = shape
            res = self.model(feats.to(self.dtype), lengths, backend=self.attn_backend)
            for j, i in enumerate(idx):
                out[i] = (res.hypotheses[j], res.edited[j])
        return out

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Transcript]:
        if not audios:
            return []
        results = []
        for hyp, edited in self.transcribe_ids(audios):
            results.append(Transcript(text=self._decode(edited), ctc_text=self._decode(hyp),
                                      agreement=agreement(hyp, edited)))
        return results
