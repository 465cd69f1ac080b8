"""16 kHz mono 16-bit PCM: the samples decode carries to the ASR actors, and their float form.

The int16 <-> float scale is 32767 (operators.asr.features.PCM_SCALE). `as_float` is what every
stage that listens to a row computes from its int16 samples, so the detector and planner on decode
(which take the int16 samples and convert only what they read) hear exactly what the ASR actor does.
"""

from __future__ import annotations

import numpy as np

PCM_SCALE = np.float32(32767.0)


def pcm16_float(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 -> float32, the inverse of pcm16_samples (what the ASR actor computes from the row)."""
    return np.divide(samples, PCM_SCALE, dtype=np.float32, out=out)


def pcm16_samples(audio: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 (scale 32767, clipped, rounded half to even)."""
    x = np.multiply(audio, PCM_SCALE, dtype=np.float32)
    np.clip(x, -PCM_SCALE, PCM_SCALE, out=x)
    return np.rint(x, out=x).astype("<i2")


def as_float(audio: np.ndarray) -> np.ndarray:
    """float32 audio as it is; int16 samples as pcm16_float gives them."""
    return pcm16_float(audio) if audio.dtype == np.int16 else audio


def peak(audio: np.ndarray) -> float:
    """The largest |sample| on the float scale (as_float's), without a float copy of int16 samples."""
    if len(audio) == 0:
        return 0.0
    if audio.dtype == np.int16:
        top = max(int(audio.max()), -int(audio.min()))
        return float(pcm16_float(np.array([top], np.int32))[0])
    return float(np.max(np.abs(audio)))
