"""Voice activity: where is speech in a 16 kHz mono signal.

Two detectors give a speech probability per 32 ms window (512 samples):
- `SileroVAD`: the silero-vad package's TorchScript model (shipped inside the wheel; no hub). Vectorised
  over time and files: each file is cut into `CHUNK_WINDOWS`-window pieces, each piece preceded by
  `WARM_WINDOWS` windows of the audio before it (whose outputs are dropped) so the recurrent state is
  warm where the piece starts; all pieces of all files of a block run as one batch. By default
  (`segment.vad: silero`) a gate runs the model only where window energy leaves the answer open
  (short probes, dense only on music, noise or doubt: ~11 % of the windows of plain speech);
  `silero_full` runs it on every window.
- `EnergyVAD`: frame energy against the file's own noise floor; the fallback where silero-vad is not
  installed (or chosen with `segment.vad: energy`).

Where a detector runs (`segment.vad_on`, `resolve_where`): on the decode workers' CPUs (one thread),
which then carry only the kept audio to the ASR actors; or on the ASR actor (`on_actor`), on its GPU
where it has one (`detector_device`), which then receives the whole audio. `auto` picks the actor
only where the ASR actors take GPUs, decode shares their nodes and those nodes are short of CPUs
(ACTOR_BELOW_CPUS_PER_GPU): measured on an H200, a decode core is the cheaper place.

`speech_regions` turns probabilities into sample ranges (hysteresis, shortest speech, shortest pause,
pad) with numpy run-length operations, no per-window Python loop.
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

from operators.audio.pcm import as_float, pcm16_float
from operators.config import SAMPLE_RATE, SegmentConfig

WINDOW = 512                 # samples per decision (32 ms)
CHUNK_WINDOWS = 160          # ~5 s per piece
WARM_WINDOWS = 16            # ~0.5 s of preceding audio warms the state; its outputs are dropped
PIECES_PER_CALL = 256        # pieces per model call (~2.4 CPU-s per audio-hour from 256 up; input <= 92 MB)
# the gate (SileroVAD(gate=True)): where the model runs at all
PROBE_EVERY = 64             # one probe per ~2 s of sound
PROBE_WINDOWS = 2            # windows a probe decides (4 cost 13 % more CPU for the same regions)
PROBE_WARM = 4               # windows of audio before a probe that warm its state (outputs dropped)
QUIET_DB = 6.0               # quiet: within this of the file's floor (10th percentile of window levels)
QUIET_RANGE_DB = 50.0        # or this far below its loud level (99th percentile)


def silero_available() -> bool:
    return importlib.util.find_spec("silero_vad") is not None


# vad_on auto puts voice activity on the ASR actors only where the GPU nodes have fewer CPUs per GPU
# than this. Measured on an H200 (benchmarks/gpu_check.py stage_vad, benchmarks/RESULTS.md "GPU"): silero
# on the actor's GPU made the ASR stage 1.31x slower (RTFx 3012 -> 2303 over the same recordings, same
# segments and text; the TorchScript model is launch-bound there and shares the actor's host thread), while
# on a decode core it cost 1.85 CPU-s per audio-hour (~1.5 busy cores per GPU at 3000x, on top of ~1 for the
# codec and the rest): where a node has the cores, decode is the cheaper place; below ~4 per GPU (Ray, the
# object store and the actor's own thread share them) decode itself would starve the GPU more than that.
ACTOR_BELOW_CPUS_PER_GPU = 4.0


def resolve_where(vad_on: str, method: str, asr_num_gpus: float, model_device: str,
                  decode_apart: bool = False, cpus_per_gpu: float | None = None) -> str:
    """segment.vad_on with `auto` resolved for the resolved `method`: `actor` where the ASR actors take
    GPUs (asr.num_gpus > 0, asr.model.device not cpu), the detector is a model (silero, silero_full),
    the decode workers share the GPU nodes' cores (not `decode_apart`, on CPU-only nodes: there a core is
    cheap and the silence would cross the network) and those nodes are short of cores: `cpus_per_gpu`
    (their CPUs over their GPUs; None: not known, e.g. no GPU node up yet) under
    ACTOR_BELOW_CPUS_PER_GPU; else `decode`. `none` runs nowhere."""
    if method == "none":
        return "decode"
    if vad_on == "auto":
        gpu = asr_num_gpus > 0 and model_device != "cpu"
        short = cpus_per_gpu is not None and cpus_per_gpu < ACTOR_BELOW_CPUS_PER_GPU
        return "actor" if gpu and short and not decode_apart and method in ("silero", "silero_full") else "decode"
    return vad_on


def on_actor(segment: SegmentConfig) -> bool:
    """Whether the ASR actors find speech (segment.vad_on as resolved on the driver) instead of decode."""
    return segment.vad_on == "actor" and segment.vad != "none"


def detector_device(model_device: str) -> str:
    """Where an ASR actor runs its detector: cuda where the backend may use it and torch sees one."""
    if model_device == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_method(name: str) -> str:
    """`auto` -> silero where installed, else energy; `silero`/`silero_full` without the package is a
    config error."""
    if name == "auto":
        return "silero" if silero_available() else "energy"
    if name in ("silero", "silero_full") and not silero_available():
        raise ValueError(f"segment.vad is '{name}' but the silero-vad package is not installed: "
                         "`pip install silero-vad`, or set segment.vad to 'energy' or 'auto'")
    return name


class SileroVAD:
    """silero-vad's TorchScript model, loaded from the installed package's data folder. The package's
    own import sets torch's thread count process-wide, so the file is loaded directly instead.

    `gate=True` (segment.vad `silero`, the default) runs the model only where its answer is needed;
    `gate=False` (`silero_full`) runs it on every window. The gate cuts each file at its long quiet
    stretches (window level within `QUIET_DB` of the file's floor or `QUIET_RANGE_DB` below its loud
    level, for at least `min_silence_s` less 4 windows: pauses the regions leave out) into stretches,
    and probes each stretch with the model (`PROBE_WINDOWS` warmed by `PROBE_WARM`) at its loudest
    window in every `PROBE_EVERY`:
    - a sounding stretch whose every probe hears speech is speech (its short pauses would be kept
      inside the region anyway: none reaches `min_silence_s`);
    - a quiet stretch whose probes hear no speech, or so far below the loud level that it gets no
      probe, is not speech;
    - any other stretch (music, noise, a probe unsure) runs densely, as `gate=False` does.
    So the energy finds where the pauses are and the model decides what the sound is. Measured against
    `gate=False` (tests/unit/test_vad.py): region edges move by up to ~0.2 s (the pause's energy edge,
    not the model's, which lags by a few windows; inside `pad_s`), and a pause within a few windows of
    `min_silence_s` may be bridged where the model would have split it. What it can miss: loud
    non-speech shorter than about `PROBE_EVERY` windows right next to speech (kept inside the region,
    as a pause would be)."""

    name = "silero"

    def __init__(self, threads: int = 1, gate: bool = True, min_silence_s: float = 1.0,
                 threshold: float = 0.5, device: str = "cpu"):
        """`threads`: torch's intra-op threads, set process-wide (0 leaves them: an ASR actor's backend
        owns them); `device`: where the model runs (cuda on a GPU actor); probabilities come back to
        the CPU."""
        import torch

        spec = importlib.util.find_spec("silero_vad")
        if spec is None or spec.origin is None:
            raise ImportError("silero-vad is not installed")
        path = os.path.join(os.path.dirname(spec.origin), "data", "silero_vad.jit")
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self._lock = threading.Lock()  # an ASR actor calls it from several threads
        self.device = torch.device(device)
        self.model = torch.jit.load(path, map_location=self.device).eval()
        self.gate = gate
        self.name = "silero" if gate else "silero_full"
        self.threshold = threshold
        self.long_quiet = max(8, int(round(min_silence_s * SAMPLE_RATE / WINDOW)) - 4)
        self.windows_run = self.windows_seen = 0   # model windows evaluated (warm-up included) / heard

    def probs(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Per file, the speech probability of each whole or partial 512-sample window. `audios`: float32,
        or int16 samples (pcm.pcm16_float's scale), of which only what the model hears is converted."""
        out = [np.zeros(-(-len(a) // WINDOW), np.float32) for a in audios]
        self.windows_seen += sum(len(p) for p in out)
        if not self.gate:
            self._run(audios, out, [(f, 0, len(p), WARM_WINDOWS) for f, p in enumerate(out)])
            return out
        stretches = [self._stretches(a, len(p)) for a, p in zip(audios, out)]
        # pass 1: the probes of every stretch of every file, one batch
        self._run(audios, out, [(f, a, b, PROBE_WARM) for f, st in enumerate(stretches) for _, _, _, at, _ in st
                                for a, b in at])
        # pass 2: a stretch whose probes agree takes their answer; any other runs densely
        dense = []
        for f, st in enumerate(stretches):
            p = out[f]
            for s, e, quiet, at, hush in st:
                heard = [float(p[a:b].mean()) for a, b in at]
                if not heard and quiet:
                    p[s:e] = 0.0       # far below the file's loud level: nothing to hear
                elif heard and not quiet and min(heard) >= self.threshold:
                    p[s:e] = 1.0       # sound, and speech at every probe
                    for a, b in hush:  # but its quiet end (a pause too short to cut the stretch at)
                        p[a:b] = 0.0
                elif heard and quiet and max(heard) < self.threshold - 0.15:
                    p[s:e] = 0.0       # quiet, and no speech at any probe
                else:
                    dense.append((f, s, e, WARM_WINDOWS))
        self._run(audios, out, dense)
        return out

    def _stretches(self, x: np.ndarray, n: int) -> list[tuple[int, int, bool, list, list]]:
        """One file (`n` windows) cut at its long quiet stretches: (first window, end window, quiet,
        probes, hush); a quiet stretch far below the loud level gets no probe. In a sounding stretch, a
        `PROBE_EVERY` block whose loudest window is quiet (the stretch's quiet end: a pause shorter than
        a long quiet one, at the file's end or before a long quiet stretch) gets no probe either: its
        windows are `hush` (no speech) where the probes find speech; a probe there would hear silence
        and send the whole stretch to the model, window by window."""
        if n == 0:
            return []
        level = 10 * np.log10(window_power(x) + 1e-12)
        floor, loud = np.percentile(level, [10, 99])
        hushed = max(floor + QUIET_DB, loud - QUIET_RANGE_DB)
        qs, qe = _runs(level < hushed)
        long = qe - qs >= self.long_quiet
        edges = sorted({0, n, *qs[long].tolist(), *qe[long].tolist()})
        quiet_starts = set(qs[long].tolist())
        out = []
        for s, e in zip(edges, edges[1:]):
            quiet = s in quiet_starts
            lv = level[s:e]
            if quiet and lv.max() < loud - QUIET_RANGE_DB:
                out.append((s, e, True, [], []))
                continue
            at, hush = [], []
            for c in range(s, e, PROBE_EVERY):   # the loudest window of each PROBE_EVERY
                m = c + int(np.argmax(lv[c - s: c - s + PROBE_EVERY]))
                if not quiet and lv[m - s] < hushed:
                    hush.append((c, min(e, c + PROBE_EVERY)))
                    continue
                a = min(max(s, m - PROBE_WINDOWS // 2), max(s, e - PROBE_WINDOWS))
                at.append((a, min(e, a + PROBE_WINDOWS)))
            out.append((s, e, quiet, at, hush))
        return out

    def _run(self, audios: list[np.ndarray], out: list[np.ndarray], spans) -> None:
        """The model over (file, first window, end window, warm-up windows) spans, in pieces of at most
        CHUNK_WINDOWS, each preceded by its warm-up audio (zeros before the file; the last window
        zero-padded); all pieces of all files batched, pieces of like length in one call. Each piece is
        copied (int16: converted) from its file straight into the call's input."""
        torch = self._torch
        pieces = []   # (file, first window, end window, warm-up windows)
        for f, w0, w1, warm in spans:
            for a in range(w0, w1, CHUNK_WINDOWS):
                pieces.append((f, a, min(w1, a + CHUNK_WINDOWS), warm))
        if not pieces:
            return
        sizes = [(b - a + warm) * WINDOW for _, a, b, warm in pieces]
        self.windows_run += sum(sizes) // WINDOW
        order = sorted(range(len(pieces)), key=sizes.__getitem__)
        short = 2 * (PROBE_WARM + PROBE_WINDOWS) * WINDOW
        with torch.inference_mode():
            at = 0
            while at < len(order):
                # probes (short pieces) go 8 times as many to a call: the same few MB of input; a call
                # never mixes them with long pieces (each row is padded to the call's longest)
                end = min(len(order), at + PIECES_PER_CALL * (8 if sizes[order[at]] <= short else 1))
                while end - at > PIECES_PER_CALL and sizes[order[end - 1]] > short:
                    end -= 1
                group = order[at:end]
                at = end
                x = np.zeros((len(group), max(sizes[k] for k in group)), np.float32)
                for row, k in enumerate(group):
                    f, a, b, warm = pieces[k]
                    audio, s0 = audios[f], (a - warm) * WINDOW     # the piece's first sample in its file
                    lo, hi = max(0, s0), min(len(audio), b * WINDOW)
                    if hi > lo:
                        _copy_float(audio[lo:hi], x[row, lo - s0: hi - s0])
                with self._lock:  # the model keeps its recurrent state on itself: one call at a time
                    self.model.reset_states()
                    p = self.model.audio_forward(torch.from_numpy(x).to(self.device), SAMPLE_RATE).numpy()
                for row, k in enumerate(group):
                    f, a, b, warm = pieces[k]
                    out[f][a:b] = p[row, warm: warm + (b - a)]


def _copy_float(src: np.ndarray, dst: np.ndarray) -> None:
    """src (float32, or int16 converted as pcm16_float does) into dst."""
    if src.dtype == np.int16:
        pcm16_float(src, out=dst)
    else:
        dst[:] = src


def window_power(audio: np.ndarray, rows: int = 256) -> np.ndarray:
    """Mean square per 512-sample window on the float scale (the last window zero-padded), for float32
    audio or int16 samples (converted `rows` windows at a time, as pcm16_float does: no float copy of
    the file), without a squared copy (einsum: ~4x less CPU than square+mean)."""
    n = -(-len(audio) // WINDOW)
    full = len(audio) // WINDOW
    ss = np.empty(n, np.float32)
    w = audio[: full * WINDOW].reshape(full, WINDOW)
    buf = np.empty((min(rows, full), WINDOW), np.float32) if audio.dtype == np.int16 else None
    for a in range(0, full, rows):
        part = w[a: a + rows]
        if buf is not None:
            part = pcm16_float(part, out=buf[: len(part)])
        ss[a: a + len(part)] = np.einsum("ij,ij->i", part, part)
    if n > full:
        last = np.zeros((1, WINDOW), np.float32)
        _copy_float(audio[full * WINDOW:], last[0, : len(audio) - full * WINDOW])
        ss[full] = np.einsum("ij,ij->i", last, last)[0]
    return ss / np.float32(WINDOW)


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
            audio = as_float(audio)
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


def make_detector(method: str, segment: SegmentConfig | None = None, device: str = "cpu", threads: int = 1):
    """The detector for `segment.vad` (resolved as `resolve_method` does); None for `none`. `silero`
    runs the model only where it can change the regions (SileroVAD, gate=True), `silero_full` on every
    window; `segment` gives the gate the pauses that matter (min_silence_s, speech_threshold);
    `device` and `threads` as SileroVAD takes them (a decode worker: cpu, 1 thread)."""
    method = resolve_method(method)
    if method == "none":
        return None
    if method in ("silero", "silero_full"):
        seg = segment or SegmentConfig()
        return SileroVAD(threads=threads, gate=method == "silero", min_silence_s=seg.min_silence_s,
                         threshold=seg.speech_threshold, device=device)
    return EnergyVAD()


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
