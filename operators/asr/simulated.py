"""simulated backend: an accelerator of fixed speed that uses no CPU, for capacity planning and CI.

"Will my CPUs keep N GPUs busy?": run the real job (listing, fetch, decode, segmentation, batching,
stitching, writing) with this backend in place of the model. Each call costs
`per_call_s + audio_seconds / rtfx` of wall time, spent sleeping (the GIL is released, no CPU is
used), and returns empty transcripts. The summary's `model_busy_fraction` then says how much of the
time the accelerator would have waited for the CPUs.

asr.model.options:
  rtfx        audio seconds per second of the simulated model (default 4000: a tuned NAR on one H100)
  per_call_s  fixed cost of one call (default 0.005: kernel launches, host-device copies)
  max_clip_s  longest clip accepted (default 240)
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from operators.asr.base import Transcript
from operators.config import ModelConfig

SAMPLE_RATE = 16_000
OPTIONS = {"rtfx": 4000.0, "per_call_s": 0.005, "max_clip_s": 240.0}


def _options(cfg: ModelConfig) -> dict:
    from operators.asr.checks import ModelCheckError

    unknown = sorted(set(cfg.options) - set(OPTIONS))
    if unknown:
        raise ModelCheckError(f"asr.model.options: unknown simulated options {unknown}; known: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **cfg.options}
    try:
        opts = {k: float(v) for k, v in opts.items()}
    except (TypeError, ValueError):
        raise ModelCheckError(f"asr.model.options: simulated options are numbers, got {cfg.options}") from None
    if opts["rtfx"] <= 0 or opts["per_call_s"] < 0 or opts["max_clip_s"] <= 0:
        raise ModelCheckError("asr.model.options: simulated needs rtfx > 0, per_call_s >= 0, max_clip_s > 0")
    return opts


class SimulatedBackend:
    name = "simulated"

    def __init__(self, cfg: ModelConfig):
        opts = _options(cfg)
        self.rtfx, self.per_call_s, self.max_clip_s = opts["rtfx"], opts["per_call_s"], opts["max_clip_s"]
        self.model_id, self.revision = self.identity(cfg)

    @staticmethod
    def identity(cfg: ModelConfig) -> tuple[str, str]:
        opts = _options(cfg)
        return "simulated", f"rtfx{opts['rtfx']:g}-call{opts['per_call_s']:g}s"

    @staticmethod
    def check(cfg: ModelConfig) -> str:
        opts = _options(cfg)
        return f"simulated accelerator at {opts['rtfx']:g}x real time, {opts['per_call_s']:g} s per call"

    def cost_s(self, audios: Sequence[np.ndarray]) -> float:
        return self.per_call_s + sum(len(a) for a in audios) / SAMPLE_RATE / self.rtfx

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Transcript]:
        if not audios:
            return []
        for a in audios:
            if len(a) > self.max_clip_s * SAMPLE_RATE:
                raise ValueError(f"clip of {len(a) / SAMPLE_RATE:.1f} s exceeds the simulated "
                                 f"{self.max_clip_s:g} s limit")
        time.sleep(self.cost_s(audios))
        return [Transcript(text="") for _ in audios]
