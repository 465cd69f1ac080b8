"""Voice activity: where is speech in a 16 kHz mono signal.

Two detectors give a speech probability per 32 ms window (512 samples):
- `SileroVAD`: the silero-vad package's TorchScript model (shipped inside the wheel; no hub). Vectorised
  over time and files: each file is cut into `CHUNK_WINDOWS`-window pieces, each piece preceded by
  `WARM_WINDOWS` windows of the audio before it (whose outputs are dropped) so the recurrent state is
  warm where the piece starts; all pieces of all files of a block run as one batch.
- `EnergyVAD`: frame energy against the file's own noise floor; the fallback where silero-vad is not
  installed (or chosen with `segment.vad: energy`).

`speech_regions` turns probabilities into sample ranges (hysteresis, shortest speech, shortest pause,
pad) with numpy run-length operations, no per-window Python loop.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from operators.config import SAMPLE_RATE, SegmentConfig

WINDOW = 512                 # samples per decision (32 ms)
CHUNK_WINDOWS = 160          # ~5 s per piece
WARM_WINDOWS = 16            # ~0.5 s of preceding audio warms the state; its outputs are dropped
PIECES_PER_CALL = 256        # pieces per model call (~2.4 CPU-s per audio-hour from 256 up; input <= 92 MB)


def silero_available() -> bool:
    return importlib.util.find_spec("silero_vad") is not None


def resolve_method(name: str) -> str:
    """`auto` -> silero where installed, else energy; `silero` without the package is a config error."""
    if name == "auto":
        return "silero" if silero_available() else "energy"
    if name == "silero" and not silero_available():
        raise ValueError("segment.vad is 'silero' but the silero-vad package is not installed: "
                         "`pip install silero-vad`, or set segment.vad to 'energy' or 'auto'")
    return name


class SileroVAD:
    """silero-vad's TorchScript model, loaded from the installed package's data folder. The package's
    own import sets torch's thread count process-wide, so the file is loaded directly instead."""

    name = "silero"

    def __init__(self, threads: int = 1):
        import torch

        spec = importlib.util.find_spec("silero_vad")
        if spec is None or spec.origin is None:
            raise ImportError("silero-vad is not installed")
        path = os.path.join(os.path.dirname(spec.origin), "data", "silero_vad.jit")
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.model = torch.jit.load(path, map_location="cpu").eval()

    def probs(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Per file, the speech probability of each whole or partial 512-sample window."""
        torch = self._torch
        pieces, where = [], []  # (file, first window, last window) of each piece
        for f, audio in enumerate(audios):
            n_win = -(-len(audio) // WINDOW)
            padded = np.zeros((n_win + WARM_WINDOWS) * WINDOW, np.float32)
            padded[WARM_WINDOWS * WINDOW: WARM_WINDOWS * WINDOW + len(audio)] = audio
            for w0 in range(0, n_win, CHUNK_WINDOWS):
                w1 = min(n_win, w0 + CHUNK_WINDOWS)
                pieces.append(padded[w0 * WINDOW: (w1 + WARM_WINDOWS) * WINDOW])
                where.append((f, w0, w1))
        out = [np.zeros(-(-len(a) // WINDOW), np.float32) for a in audios]
        # pieces of like length share a call (a short file's piece is not padded to 10 s)
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k]))
        with torch.inference_mode():
            for at in range(0, len(order), PIECES_PER_CALL):
                group = order[at:at + PIECES_PER_CALL]
                x = np.zeros((len(group), max(len(pieces[k]) for k in group)), np.float32)
                for row, k in enumerate(group):
                    x[row, :len(pieces[k])] = pieces[k]
                self.model.reset_states()
                p = self.model.audio_forward(torch.from_numpy(x), SAMPLE_RATE).numpy()
                for row, k in enumerate(group):
                    f, w0, w1 = where[k]
                    out[f][w0:w1] = p[row, WARM_WINDOWS: WARM_WINDOWS + (w1 - w0)]
        return out


class EnergyVAD:
    """Window energy above the file's noise floor: 1.0 (speech) or 0.0. The floor is the 10th
    percentile of window levels; speech is `margin_db` above it and no more than `range_db` below
    the loudest window (so a noise-free file with digital silence still has a sensible threshold)."""

    name = "energy"

    def __init__(self, margin_db: float = 12.0, range_db: float = 45.0):
        self.margin_db = margin_db
        self.range_db = range_db

    def probs(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for audio in audios:
            n_win = -(-len(audio) // WINDOW)
            if n_win == 0:
                out.append(np.zeros(0, np.float32))
                continue
            padded = np.zeros(n_win * WINDOW, np.float32)
            padded[:len(audio)] = audio
            level = 10 * np.log10(np.square(padded.reshape(n_win, WINDOW), dtype=np.float64).mean(axis=1) + 1e-12)
            floor = np.percentile(level, 10)
            thr = max(floor + self.margin_db, level.max() - self.range_db, -70.0)
            out.append((level >= thr).astype(np.float32))
        return out


def make_detector(method: str):
    """The detector for `segment.vad` (resolved as `resolve_method` does); None for `none`."""
    method = resolve_method(method)
    if method == "none":
        return None
    return SileroVAD() if method == "silero" else EnergyVAD()


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the True runs of a boolean array (ends exclusive)."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def speech_regions(probs: np.ndarray, n_samples: int, cfg: SegmentConfig) -> list[tuple[int, int]]:
    """Speech as sorted, disjoint (start, end) sample ranges, padded by `cfg.pad_s` on each side.

    A window at or above `speech_threshold` is speech, one below `speech_threshold - 0.15` is not,
    one in between keeps the previous decision (hysteresis). Pauses shorter than `min_silence_s`
    are bridged; speech shorter than `min_speech_s` is dropped."""
    n = len(probs)
    if n == 0 or n_samples == 0:
        return []
    win_s = WINDOW / SAMPLE_RATE
    hi, lo = probs >= cfg.speech_threshold, probs < cfg.speech_threshold - 0.15
    # a dip shorter than min_silence_s decides nothing: speech goes on through it (as silero's own
    # get_speech_timestamps waits min_silence before ending speech)
    ls, le = _runs(lo)
    for s, e in zip(ls, le):
        if (e - s) * win_s < cfg.min_silence_s:
            lo[s:e] = False
    decided = hi | lo
    idx = np.where(decided, np.arange(n), -1)
    last = np.maximum.accumulate(idx)                 # the latest decisive window at or before each
    speech = np.where(last >= 0, hi[np.maximum(last, 0)], False)
    # bridge short pauses between speech
    gs, ge = _runs(~speech)
    short = (ge - gs) * win_s < cfg.min_silence_s
    inner = (gs > 0) & (ge < n)
    for s, e in zip(gs[short & inner], ge[short & inner]):
        speech[s:e] = True
    ss, se = _runs(speech)
    keep = (se - ss) * win_s >= cfg.min_speech_s
    pad = int(cfg.pad_s * SAMPLE_RATE)
    regions: list[tuple[int, int]] = []
    for s, e in zip(ss[keep] * WINDOW, se[keep] * WINDOW):
        s, e = max(0, int(s) - pad), min(n_samples, int(e) + pad)
        if regions and s <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(regions[-1][1], e))
        elif e > s:
            regions.append((s, e))
    return regions
