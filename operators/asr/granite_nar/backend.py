"""granite-nar backend: IBM Granite Speech 4.1 2B-NAR, native (no trust_remote_code), batch-invariant.

asr.model: id = local checkpoint directory or hub id (default the published model at a pinned
revision), device auto|cpu|cuda, dtype auto (bf16 on CUDA, fp32 on CPU)|float32|bfloat16|float16.
asr.model.options:
  attn_backend   auto | flash | varlen | flex | sdpa_per_sample (editor attention; auto picks the best)
  max_batch      clips per model call (default 128; a transcribe() call is cut into sorted sub-batches)
  max_clip_s     longest clip accepted (default 240 s: the editor holds 4096 positions)
  empty_cache    true: torch.cuda.empty_cache() between sub-batches of very different shapes (default
                 false: every growing shape would pay synchronous allocations; the CUDA allocator runs
                 with expandable segments instead, so memory freed by one shape serves the next)
  probe          true (default): one small forward on the device at load with the chosen attention
                 kernel and dtype, so a kernel, ABI or dtype fault ends the job at load
  bpe_blank_shifted  unset (default): the BPE CTC head's layout follows its width (vocab + 1: blank 0,
                 class k = token k-1; vocab: classes are token ids, blank = blank_token_id); true/false
                 forces one reading for a checkpoint of another width
"""

from __future__ import annotations

import gc
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from operators.asr import checks
from operators.asr.base import Transcript, model_identity
from operators.asr import features
from operators.asr.granite_nar import attention
from operators.asr.granite_nar.loader import inspect_checkpoint, load_model, load_tokenizer, resolve_model_dir
from operators.asr.granite_nar.modeling import GraniteSpeechNar, agreement

if TYPE_CHECKING:  # pydantic is not needed to run the backend (the GPU check has none)
    from operators.config import ModelConfig

DEFAULT_MODEL = "ibm-granite/granite-speech-4.1-2b-nar"
DEFAULT_REVISION = "a1e3416e25ce29ab3852778e54fa8b3bd59c4bf2"
SAMPLE_RATE = 16_000
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_OPTIONS = ("attn_backend", "max_batch", "max_clip_s", "empty_cache", "bpe_blank_shifted", "probe")


def _options(options: dict, dtype: str) -> dict:
    opts = dict(options)
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise checks.ModelCheckError(f"asr.model.options: unknown granite-nar options {unknown}; known: "
                                     f"{list(_OPTIONS)}")
    if dtype != "auto" and dtype not in _DTYPES:
        raise checks.ModelCheckError(f"asr.model.dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    return opts


@dataclass
class _SubBatch:
    index: list[int]                 # positions in the call's clip list
    lengths: list[int]               # samples per clip
    host: Any                        # CPU: float32 clips; CUDA: pinned (B, max_len) int16
    device_pcm: torch.Tensor | None = None   # CUDA: the copy made on the side stream
    ready: Any = None                # CUDA: event recorded after that copy


@dataclass
class Prepared:
    n: int
    batches: list[_SubBatch] = field(default_factory=list)


class GraniteNarBackend:
    name = "granite-nar"
    segment_target_s = 30.0   # the editor was trained on windows up to 30 s
    segment_max_s = 60.0      # it holds ~4 min (4096 positions): an unbroken region may run to 60 s
    languages = frozenset({"en", "fr", "de", "es", "pt"})   # the model card's; plain transcription only

    def __init__(self, cfg: ModelConfig):
        self.model_id, self.revision = self.identity(cfg)
        opts = self._configure(cfg.options, cfg.device, cfg.dtype)
        model_dir = resolve_model_dir(cfg.id or DEFAULT_MODEL, None if cfg.id and Path(cfg.id).is_dir()
                                      else self.revision)
        shifted = opts.get("bpe_blank_shifted")
        self.model = load_model(model_dir, self.device, self.dtype,
                                bpe_blank_shifted=None if shifted is None else bool(shifted))
        self.tokenizer = load_tokenizer(model_dir)
        if opts.get("probe", True):
            self.probe()

    @classmethod
    def from_model(cls, model: GraniteSpeechNar, tokenizer, options: dict | None = None,
                   model_id: str = "in-memory", revision: str = "random") -> "GraniteNarBackend":
        """A backend around a model already in memory (benchmarks, the GPU check): device and dtype
        are the model's."""
        self = cls.__new__(cls)
        self.model_id, self.revision = model_id, revision
        opts = self._configure(dict(options or {}), str(model.device), _dtype_name(model.dtype))
        self.model, self.tokenizer = model, tokenizer
        if opts.get("probe", True):
            self.probe()
        return self

    def _configure(self, options: dict, device: str, dtype: str) -> dict:
        opts = _options(options, dtype)
        self.max_clip_s = float(opts.get("max_clip_s", 240.0))
        self.max_batch = int(opts.get("max_batch", 128))
        self.empty_cache = bool(opts.get("empty_cache", False))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[dtype]
        self.attn_backend = attention.resolve_backend(str(opts.get("attn_backend", "auto")), self.device, self.dtype)
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            expandable_segments()
            self._copy_stream = torch.cuda.Stream(device=self.device)
        self._last_shape: tuple[int, int] | None = None
        return opts

    @staticmethod
    def identity(cfg: ModelConfig) -> tuple[str, str]:
        return model_identity(cfg.id, cfg.revision, DEFAULT_MODEL, DEFAULT_REVISION)

    @staticmethod
    def check(cfg: ModelConfig) -> str:
        """On the driver, before Ray: options, then the checkpoint (config.json, every key and shape in
        the safetensors headers, the BPE head's layout, the tokenizer) without loading a tensor.
        Returns what was found, for the log; raises ModelCheckError."""
        opts = _options(cfg.options, cfg.dtype)
        model_id = cfg.id or DEFAULT_MODEL
        revision = None if cfg.id and Path(cfg.id).is_dir() else (cfg.revision or DEFAULT_REVISION)
        model_dir, from_hub = checks.locate(model_id, revision, "granite-nar")
        shifted = opts.get("bpe_blank_shifted")
        ckpt = inspect_checkpoint(model_dir, None if shifted is None else bool(shifted),
                                  shapes=checks.shapes_for(model_dir, from_hub, model_id, revision))
        checks.load_tokenizer_or_fail(model_dir)
        return (f"{model_dir}: {'native transformers' if ckpt.native else 'hub'} layout, "
                f"BPE head {ckpt.bpe_layout}")

    def probe(self) -> None:
        """One small forward on the device with the chosen attention kernel and dtype (two clips, so
        the packed path runs), synchronised: a kernel that does not import, an ABI mismatch or a
        dtype the kernel refuses fails here, at load, as one error, never as error rows later."""
        rng = np.random.default_rng(0)
        clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (2 * SAMPLE_RATE, SAMPLE_RATE)]
        try:
            self.transcribe_ids(clips)
            if self._cuda:
                torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001 - re-raised as one line naming the setup
            raise RuntimeError(f"a first forward with attention {self.attn_backend!r} in "
                               f"{str(self.dtype).replace('torch.', '')} on {self.device} failed: "
                               f"{type(e).__name__}: {e}; set asr.model.options.attn_backend to another "
                               f"of {attention.BACKENDS} or check the install") from None

    def release_memory(self) -> None:
        """After an out-of-memory error (the stage calls it outside its except block)."""
        gc.collect()
        if self._cuda:
            torch.cuda.empty_cache()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # staged protocol (operators.asr.base.StagedBackend) ------------------------------------------
    def prepare(self, audios: Sequence[np.ndarray], languages: Sequence[str | None] | None = None) -> Prepared:
        """Host work, outside the model lock: check lengths, sort, cut sub-batches; on CUDA stage each
        sub-batch as pinned int16 PCM and start its copy to the device on a side stream."""
        limit = self.max_clip_s * SAMPLE_RATE
        for i, a in enumerate(audios):
            if len(a) > limit:
                raise ValueError(f"clip {i} of {len(a) / SAMPLE_RATE:.1f} s exceeds granite-nar's "
                                 f"{self.max_clip_s:g} s limit (the editor holds 4096 positions); "
                                 "segment the audio first (segment.max_segment_s)")
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]), reverse=True)
        prepared = Prepared(len(audios))
        for s in range(0, len(order), self.max_batch):
            idx = order[s:s + self.max_batch]
            clips = [audios[i] for i in idx]
            if not self._cuda:
                prepared.batches.append(_SubBatch(idx, [len(a) for a in clips],
                                                  [np.asarray(a, np.float32) for a in clips]))
                continue
            host, lengths = features.pcm16_matrix(clips, pin=True)
            with torch.cuda.stream(self._copy_stream):
                dev = host.to(self.device, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._copy_stream)
            prepared.batches.append(_SubBatch(idx, lengths, host, dev, ready))
        return prepared

    @torch.inference_mode()
    def run(self, prepared: Prepared) -> list[tuple[list[int], list[int]]]:
        """Device work, under the model lock: features on the device, then the model. Returns
        (hypothesis ids, edited ids) per clip in the call's order."""
        out: list[tuple[list[int], list[int]]] = [None] * prepared.n  # type: ignore[list-item]
        for sub in prepared.batches:
            if self._cuda:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(sub.ready)
                sub.device_pcm.record_stream(stream)   # allocated on the copy stream, used on this one
                feats, lengths = features.batch_log_mel(sub.device_pcm.float() / features.PCM_SCALE,
                                                        sub.lengths)
                sub.device_pcm = None
            else:
                feats, lengths = features.batch_features(sub.host, "nar", self.device)
            shape = (len(sub.index), int(feats.shape[1]))
            if self.empty_cache and self._cuda and self._last_shape and shape[1] < self._last_shape[1] // 2:
                torch.cuda.empty_cache()
            self._last_shape = shape
            res = self.model(feats.to(self.dtype), lengths, backend=self.attn_backend)
            for j, i in enumerate(sub.index):
                out[i] = (res.hypotheses[j], res.edited[j])
        return out

    def finish(self, ran: list[tuple[list[int], list[int]]]) -> list[Transcript]:
        """Host work, outside the model lock: tokenizer decodes and the agreement score."""
        return [Transcript(text=self._decode(edited), ctc_text=self._decode(hyp), agreement=agreement(hyp, edited))
                for hyp, edited in ran]

    def transcribe_ids(self, audios: Sequence[np.ndarray]) -> list[tuple[list[int], list[int]]]:
        """(hypothesis ids, edited ids) per clip, same order; clips run in length-sorted sub-batches."""
        return self.run(self.prepare(audios))

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Transcript]:
        if not audios:
            return []
        return self.finish(self.run(self.prepare(audios, languages)))


def expandable_segments() -> None:
    """Let the CUDA caching allocator grow segments in place (PYTORCH_CUDA_ALLOC_CONF
    expandable_segments:True), so memory freed by one batch shape serves the next without
    synchronous empty_cache() calls. A setting the user made in the environment wins."""
    import os

    if any("expandable_segments" in os.environ.get(k, "") for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")):
        return
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError):  # an allocator without the setting: keep its default
        pass


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)
