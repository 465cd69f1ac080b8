"""The one protocol every model backend implements. No Ray in here or in any backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class Transcript:
    """One result per input clip, in input order."""

    text: str
    ctc_text: str | None = None      # NAR backends: the encoder's own hypothesis
    agreement: float | None = None   # NAR backends: agreement between ctc_text and text
    extras: dict = field(default_factory=dict)


@runtime_checkable
class ASRBackend(Protocol):
    """Loaded once per actor (device, dtype from config); `transcribe` is called many times."""

    name: str          # backend name, e.g. "whisper"
    model_id: str      # what goes into the output's `model` column
    revision: str      # what goes into `model_revision`
    max_clip_s: float  # longest clip the backend accepts (segmentation keeps clips below it)

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Transcript]:
        """16 kHz mono float32 clips -> one Transcript per clip, same order."""
        ...
