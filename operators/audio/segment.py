"""Choose what audio the model hears, cut it into segments, and stitch results back.

`plan_speech` (the job's planner): speech regions from a voice-activity detector (operators.audio.vad) are
padded, the silence between them is left out, and consecutive regions are joined into segments up to
the backend's target length; a cut falls only between regions (in a pause), except inside a region
longer than the target (dense speech: interviews, lectures, read books, whose pauses are all under
`min_silence_s`), which `plan_segments` cuts at its deepest pause near the target: the quietest 200 ms
in the `search_window_s` before it. Rules measured for whisper on dense recordings (issue 18,
benchmarks/long_form.py --dense and 8 held-out recordings): this one (the quietest point; among
exact ties the latest) missed the fewest sentences before the second try (WER 0.109 vs 0.115 for the
earliest deep pause the detector heard and 0.129 for the latest), and all were equal after it (0.094).
The row then carries only the kept audio, joined; `speech_start`/`speech_end` say where each kept
piece lies in the file, so segment times (`file_bounds`) stay file times.

`plan_segments` (also `segment.vad: none`): the energy cutter over the whole signal, no silence removed:
the cut goes at the quietest stretch (frame energy smoothed over ~200 ms) inside the last
`search_window_s` before the length limit, so words are not split where a pause exists.
"""

from __future__ import annotations

import time

import numpy as np

from operators.audio.pcm import as_float, peak
from operators.config import SAMPLE_RATE, SegmentConfig

SMOOTH_S = 0.2
DEFAULT_MAX_S = 30.0


def plan_segments(audio: np.ndarray, cfg: SegmentConfig | None = None) -> tuple[list[int], list[int]]:
    """Segment boundaries as sample offsets (starts, ends); empty for silent audio."""
    cfg = cfg or SegmentConfig()
    n = len(audio)
    if n == 0 or float(np.max(np.abs(audio))) < cfg.silence_peak:
        return [], []
    max_len = int((cfg.max_segment_s or DEFAULT_MAX_S) * SAMPLE_RATE)
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


def plan_speech(audio: np.ndarray, cfg: SegmentConfig, probs: np.ndarray | None
                ) -> tuple[list[int], list[int], list[int], list[int]]:
    """(speech_start, speech_end, seg_start, seg_end): the file ranges kept (sorted, disjoint), and
    the segments as offsets into those ranges joined end to end. `probs` None keeps everything and
    cuts with `plan_segments` (segment.vad: none). Silent or speechless audio: all empty. `audio` may be
    int16 samples: only what is cut by energy is converted (pcm.as_float), as the ASR actor hears it."""
    n = len(audio)
    if n == 0 or peak(audio) < cfg.silence_peak:
        return [], [], [], []
    max_len = int((cfg.max_segment_s or DEFAULT_MAX_S) * SAMPLE_RATE)
    target = min(max_len, int((cfg.target_segment_s or cfg.max_segment_s or DEFAULT_MAX_S) * SAMPLE_RATE))
    if probs is None:  # no pauses known: cut at the quietest point before the target
        starts, ends = plan_segments(as_float(audio),
                                     cfg.model_copy(update={"max_segment_s": target / SAMPLE_RATE}))
        return [0], [n], starts, ends
    from operators.audio.vad import speech_regions

    # units: (file start, file end, may join neighbours); a region over the target is cut inside it,
    # at its quietest point in the search window before the target (issue 18: not only past the maximum)
    units: list[tuple[int, int, bool]] = []
    inner = cfg.model_copy(update={"max_segment_s": target / SAMPLE_RATE})
    for s, e in speech_regions(probs, n, cfg):
        if e - s <= target:
            units.append((s, e, True))
        else:
            cs, ce = plan_segments(as_float(audio[s:e]), inner)
            units += [(s + a, s + b, False) for a, b in zip(cs, ce)]
    speech_start, speech_end, seg_start, seg_end = [], [], [], []
    at = 0            # offset in the kept audio
    open_at = None    # kept-audio offset where the open segment began
    open_joins = True  # whether the open segment may take more units
    for s, e, joins in units:
        if open_at is not None and (not joins or not open_joins or at + (e - s) - open_at > target):
            seg_start.append(open_at)
            seg_end.append(at)
            open_at = None
        if open_at is None:
            open_at, open_joins = at, joins
        speech_start.append(s)
        speech_end.append(e)
        at += e - s
    if open_at is not None:
        seg_start.append(open_at)
        seg_end.append(at)
    return speech_start, speech_end, seg_start, seg_end


def plan_block(audios: list[np.ndarray], cfg: SegmentConfig, detector,
               samples: list[np.ndarray] | None = None) -> tuple[list, float, float]:
    """Voice activity over a block's files at once (`detector`, an operators.audio.vad detector; None
    keeps all audio) and each file's plan: per audio `(spans, kept)` (spans as `plan_speech` returns
    them, kept: the audio at the kept ranges, joined; cut from `samples`, the same audio in another
    form, where given) or the exception its planning raised; then the detector's CPU seconds (this
    thread's) and wall seconds. `audios` may be float32 or int16 samples (decode's: the detector and
    planner convert only what they read, never a float copy of the whole block)."""
    probs, vad_cpu, vad_s = [None] * len(audios), 0.0, 0.0
    if detector is not None and audios:
        t0, c0 = time.perf_counter(), time.thread_time()
        probs = detector.probs(audios)
        vad_cpu, vad_s = time.thread_time() - c0, time.perf_counter() - t0
    out: list = []
    for audio, p, src in zip(audios, probs, samples or audios):
        try:
            spans = plan_speech(audio, cfg, p)
            kept = np.concatenate([src[s:e] for s, e in zip(*spans[:2])]) if spans[0] else src[:0]
            out.append((spans, kept))
        except Exception as e:  # noqa: BLE001 - a planning failure stays per file
            out.append(e)
    return out, vad_cpu, vad_s


def to_file_samples(positions, speech_start: list[int] | None, speech_end: list[int] | None,
                    ends: bool = False) -> np.ndarray:
    """Offsets into the kept audio (the row's pcm16) -> file sample offsets (integers stay integers,
    fractional offsets stay fractional). An offset where one kept
    range meets the next maps to the next one's start, or with `ends` (an end of something heard) to
    the previous one's end. No kept ranges: the offsets are file offsets already."""
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iuf":
        pos = pos.astype(np.int64)
    if not speech_start:
        return pos
    starts = np.asarray(speech_start, np.int64)
    kept_at = np.concatenate([[0], np.cumsum(np.asarray(speech_end, np.int64) - starts)])
    k = np.searchsorted(kept_at, pos, side="left" if ends else "right") - 1
    k = np.clip(k, 0, len(starts) - 1)
    return starts[k] + (pos - kept_at[k])


def file_bounds(seg_start: list[int], seg_end: list[int], speech_start: list[int] | None,
                speech_end: list[int] | None) -> tuple[list[int], list[int]]:
    """Segment bounds as file sample offsets: a segment starts where its first kept range starts and
    ends where its last one ends (never at the next range's start)."""
    return (to_file_samples(seg_start, speech_start, speech_end).tolist(),
            to_file_samples(seg_end, speech_start, speech_end, ends=True).tolist())


def stitch(texts: list[str], starts: list[int], ends: list[int], joiner: str = " ") -> tuple[str, list[dict]]:
    """Per-segment texts -> (file text, segments with start_s/end_s/text)."""
    segments = [
        {"start_s": round(s / SAMPLE_RATE, 3), "end_s": round(e / SAMPLE_RATE, 3), "text": t.strip()}
        for t, s, e in zip(texts, starts, ends)
    ]
    text = joiner.join(seg["text"] for seg in segments if seg["text"])
    return text, segments
