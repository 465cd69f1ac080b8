"""Cut long audio at pauses into segments no longer than `max_segment_s`, and stitch results back.

Energy-based: the cut goes at the quietest stretch (frame energy smoothed over ~200 ms) inside the last
`search_window_s` before the length limit, so words are not split where a pause exists.
"""

from __future__ import annotations

import numpy as np

from operators.config import SAMPLE_RATE, SegmentConfig

SMOOTH_S = 0.2


def plan_segments(audio: np.ndarray, cfg: SegmentConfig | None = None) -> tuple[list[int], list[int]]:
    """Segment boundaries as sample offsets (starts, ends); empty for silent audio."""
    cfg = cfg or SegmentConfig()
    n = len(audio)
    if n == 0 or float(np.max(np.abs(audio))) < cfg.silence_peak:
        return [], []
    max_len = int(cfg.max_segment_s * SAMPLE_RATE)
    if n <= max_len:
        return [0], [n]
    frame = max(1, int(cfg.frame_ms * SAMPLE_RATE / 1000))
    n_frames = n // frame
    energy = np.square(audio[: n_frames * frame].reshape(n_frames, frame), dtype=np.float64).mean(axis=1)
    width = max(1, int(SMOOTH_S * SAMPLE_RATE / frame))
    csum = np.concatenate([[0.0], np.cumsum(energy)])
    lo_idx = np.clip(np.arange(n_frames) - width // 2, 0, n_frames)
    hi_idx = np.clip(np.arange(n_frames) + width - width // 2, 0, n_frames)
    smooth = (csum[hi_idx] - csum[lo_idx]) / np.maximum(hi_idx - lo_idx, 1)

    min_len = int(cfg.min_segment_s * SAMPLE_RATE)
    window = int(cfg.search_window_s * SAMPLE_RATE)
    starts, ends = [], []
    start = 0
    while n - start > max_len:
        lo = start + max(min_len, max_len - window)
        hi = start + max_len
        f_lo, f_hi = -(-lo // frame), hi // frame  # frames wholly inside [lo, hi]
        if f_hi > f_lo:
            # quietest frame; among near-ties the latest, so segments stay long
            seg = smooth[f_lo:f_hi]
            best = f_lo + int(np.flatnonzero(seg <= seg.min() * 1.0001 + 1e-20)[-1])
            cut = min(hi, best * frame + frame // 2)
        else:
            cut = hi
        starts.append(start)
        ends.append(cut)
        start = cut
    starts.append(start)
    ends.append(n)
    return starts, ends


def stitch(texts: list[str], starts: list[int], ends: list[int], joiner: str = " ") -> tuple[str, list[dict]]:
    """Per-segment texts -> (file text, segments with start_s/end_s/text)."""
    segments = [
        {"start_s": round(s / SAMPLE_RATE, 3), "end_s": round(e / SAMPLE_RATE, 3), "text": t.strip()}
        for t, s, e in zip(texts, starts, ends)
    ]
    text = joiner.join(seg["text"] for seg in segments if seg["text"])
    return text, segments
