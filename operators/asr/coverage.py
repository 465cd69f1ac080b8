"""Did the transcript cover the speech? Dropped-speech detection and its bounded recovery, per segment,
for every backend. Pure functions (numpy only): the ASR stage calls them, the tests call them directly.

What the job knows about a segment: the audio the model heard (the kept ranges joined, so the whole clip
is speech as voice activity saw it, pauses under `segment.min_silence_s` included, minus the pad at
each kept range's ends), and what the backend says it transcribed:

- times (`spans`, [start_s, end_s, text] in clip seconds; end_s None for a phrase the model did not
  close): whisper's timestamped phrases (`Transcript.extras["spans"]`), granite-plus's word times
  (`Transcript.words`, a point per word where it gives only end times), or any backend that puts
  spans in `extras`. The speech no span reaches (each span counted `SLACK_S` wider either side)
  is uncovered; a stretch of it shorter than `MIN_GAP_S` is not a loss (pauses, pads, timestamp slack);
  coverage = 1 - (uncovered stretches of `MIN_GAP_S` or more) / speech seconds.
- no times: the segment's words per second of speech against the file's own rate (the median over
  its segments with at least `RATE_MIN_SPEECH_S` of speech); coverage = min(1, rate / (RATE_TOLERANCE
  x file rate)); a file with one such segment has nothing to compare with (coverage None unless the
  segment has speech and no words at all: 0).

Recovery (at most once per segment, never looping): a timed segment whose last complete phrase ends
`MIN_GAP_S` or more before the speech does is re-decoded to its end from `CONTEXT_S` before that point
(`tail_start`), as whisper's own long-form decoding continues from its last complete timestamp; the
continuation's phrases that end before that point are the context, dropped (and words heard twice
where the two meet); any other segment under
`RECOVER_BELOW` is split at its deepest internal pauses (`split_points`) and the pieces decoded. The
result replaces the segment's text only where it covers more (`better`). The extra model audio is at
most the segment itself, so a job does at most twice the model work, and the stage counts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from operators.schema import COVERAGE_FLAG_BELOW

SLACK_S = 0.5            # a timed span covers this much either side (timestamps are 20 ms tokens, loose)
MIN_GAP_S = 1.5          # uncovered speech shorter than this is no loss (a pause bridged by the VAD is <1 s)
RATE_TOLERANCE = 0.8     # words per second this far under the file's own rate is still normal speech
#                          (whisper tiny.en, dense recordings: segments at 0.92-1.13 of the file's rate;
#                          one that lost most of its speech, 0.12)
RATE_MIN_SPEECH_S = 4.0  # segments shorter than this do not set the file's rate
RECOVER_BELOW = 0.95     # a segment covered less than this is recovered (once)
FLAG_BELOW = COVERAGE_FLAG_BELOW  # a row below this is flagged (summary low_coverage_rows; FilterRules.min_coverage)
SPLIT_PIECE_S = 10.0     # a split segment's pieces are about this long (whisper stops early in long windows)
MIN_PIECE_S = 2.0        # no piece shorter than this
SMOOTH_S = 0.2           # energy smoothing for finding pauses
CONTEXT_S = 5.0          # a continuation starts this far before the last complete timestamp, so the model
#                          hears the end of what it already said (faster-whisper's long form gives it the
#                          previous text instead); its phrases ending before that point are dropped, and
#                          words heard twice where the two meet (`join_overlap`). Measured (issue 18,
#                          tiny.en, 4 dense recordings): 0.5 s of it gave a 3 s tail alone, which the
#                          model garbled on a hard voice (a sentence lost after all)
KEEP_AFTER_S = 0.3       # a continuation's phrase is new where it ends this far past the last complete one
MAX_OVERLAP_WORDS = 24   # CONTEXT_S of speech holds up to ~20 words
SKIP_WORDS = 2


NO_COVERAGE = frozenset({"simulated"})  # backends whose text says nothing about the audio (capacity checks)


def enabled(backend) -> bool:
    """Whether the stage measures (and recovers) coverage for this backend: all but those in NO_COVERAGE
    and any class that sets `coverage = False`."""
    return getattr(backend, "name", None) not in NO_COVERAGE and getattr(backend, "coverage", True) is not False


def signal(backend) -> str:
    """Which signal a backend's coverage comes from, for the README and the summary: "times" where its
    results carry spans or word times, else "rate"."""
    name = getattr(backend, "name", "")
    if name == "whisper":
        return "times" if getattr(backend, "timestamps", True) else "rate"
    return "times" if name == "granite-plus" else "rate"


@dataclass
class SegmentCoverage:
    coverage: float | None     # fraction of the speech the transcript covers (None: cannot tell)
    signal: str                # "times" or "rate" (or "none": no speech)
    speech_s: float            # seconds of speech in the segment
    gaps: list                 # uncovered stretches (clip seconds) of MIN_GAP_S or more (times only)


def speech_spans(seg_start: int, seg_end: int, speech_start: list[int] | None, speech_end: list[int] | None,
                 pad: int, sample_rate: int = 16_000) -> list[tuple[float, float]]:
    """The speech voice activity found inside one segment, as clip seconds: the kept ranges (file
    `speech_start`/`speech_end`, joined end to end in the row's audio) that the segment `[seg_start,
    seg_end)` (offsets into that joined audio) overlaps, clipped to it, less the `pad` samples the
    planner added at each range's own ends (not at a cut inside a range). No kept ranges (segment.vad
    none): the whole segment."""
    if not speech_start:
        return [(0.0, (seg_end - seg_start) / sample_rate)]
    out = []
    at = 0
    for s, e in zip(speech_start, speech_end):
        k0, k1 = at, at + (e - s)
        at = k1
        a, b = max(k0, seg_start), min(k1, seg_end)
        if b <= a:
            continue
        a = max(a, k0 + pad) if a == k0 else a
        b = min(b, k1 - pad) if b == k1 else b
        if b > a:
            out.append(((a - seg_start) / sample_rate, (b - seg_start) / sample_rate))
    return out


def _total(spans) -> float:
    return float(sum(b - a for a, b in spans))


def uncovered(speech: list[tuple[float, float]], spans: list, slack: float = SLACK_S,
              min_gap: float = MIN_GAP_S) -> list[tuple[float, float]]:
    """Stretches of `speech` (clip seconds) that no span [start, end, ...] reaches (spans widened by
    `slack` each side; an unclosed phrase, end None, covers nothing), joined across pauses of the
    speech, kept where `min_gap` seconds or longer."""
    cover = sorted((float(s[0]) - slack, float(s[1]) + slack) for s in spans if _closed(s))
    merged: list[list[float]] = []
    for a, b in cover:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    holes: list[list[float]] = []  # uncovered speech, in order, with the speech seconds in each
    for a, b in speech:
        pos = a
        for c0, c1 in merged:
            if c1 <= pos or c0 >= b:
                continue
            if c0 > pos:
                holes.append([pos, c0, c0 - pos])
            pos = max(pos, c1)
            if pos >= b:
                break
        if pos < b:
            holes.append([pos, b, b - pos])
    # a hole interrupted only by a pause of the speech (no covered speech between) is one hole
    joined: list[list[float]] = []
    for h in holes:
        if joined and not _covered_between(merged, joined[-1][1], h[0]):
            joined[-1][1], joined[-1][2] = h[1], joined[-1][2] + h[2]
        else:
            joined.append(list(h))
    return [(a, b) for a, b, sec in joined if sec >= min_gap]


def _closed(span) -> bool:
    return span[1] is not None and float(span[1]) >= float(span[0])


def _covered_between(merged, a: float, b: float) -> bool:
    return any(c0 < b and c1 > a for c0, c1 in merged)


def timed_coverage(speech: list[tuple[float, float]], spans: list) -> SegmentCoverage:
    total = _total(speech)
    if total <= 0:
        return SegmentCoverage(None, "none", 0.0, [])
    gaps = uncovered(speech, spans)
    lost = sum(_total(_clip(speech, a, b)) for a, b in gaps)
    return SegmentCoverage(max(0.0, 1.0 - lost / total), "times", total, gaps)


def _clip(speech, a: float, b: float):
    return [(max(s, a), min(e, b)) for s, e in speech if min(e, b) > max(s, a)]


def count_words(text: str | None, spaced: bool = True) -> float:
    """Words in a transcript; for languages written without spaces, characters / 2."""
    text = (text or "").strip()
    if not text:
        return 0.0
    return float(len(text.split())) if spaced else len("".join(text.split())) / 2.0


def file_rate(words: list[float], speech_s: list[float]) -> float | None:
    """The file's own words per second of speech: the median over segments with RATE_MIN_SPEECH_S of
    speech or more; None with fewer than two such segments."""
    rates = [w / s for w, s in zip(words, speech_s) if s >= RATE_MIN_SPEECH_S]
    return float(np.median(rates)) if len(rates) >= 2 else None


def rate_coverage(words: float, speech_s: float, ref_rate: float | None) -> SegmentCoverage:
    if speech_s <= 0:
        return SegmentCoverage(None, "none", 0.0, [])
    if words == 0 and speech_s >= MIN_GAP_S:
        return SegmentCoverage(0.0, "rate", speech_s, [])
    if ref_rate is None or ref_rate <= 0 or speech_s < MIN_GAP_S:
        return SegmentCoverage(None, "rate", speech_s, [])
    return SegmentCoverage(min(1.0, words / speech_s / (RATE_TOLERANCE * ref_rate)), "rate", speech_s, [])


def transcript_spans(res) -> list | None:
    """A Transcript's clip-relative times, if its backend gave any: extras["spans"] ([start_s, end_s,
    text]) or word times (`words`: {word, start_s, end_s}); None when it gave none."""
    extras = getattr(res, "extras", None) or {}
    if extras.get("spans") is not None:
        return list(extras["spans"])
    words = getattr(res, "words", None)
    if words:
        out = []
        for w in words:
            s, e = w.get("start_s"), w.get("end_s")
            if s is None and e is None:
                continue
            s = e if s is None else s
            e = s if e is None else e
            out.append([float(s), float(max(s, e)), w.get("word", "")])  # a point where only one time
        return out or None
    return None


def segment_coverages(results: list, speech: list[list[tuple[float, float]]], spaced: bool = True
                      ) -> list[SegmentCoverage]:
    """Per segment of one file: coverage from the backend's times where it gave them, else from the
    words-per-second rate against the file's own."""
    timed = [transcript_spans(r) for r in results]
    secs = [_total(s) for s in speech]
    words = [count_words(getattr(r, "text", ""), spaced) for r in results]
    ref = file_rate(words, secs)
    return [timed_coverage(sp, t) if t is not None else rate_coverage(w, s, ref)
            for t, sp, w, s in zip(timed, speech, words, secs)]


def file_coverage(covs: list[SegmentCoverage]) -> float | None:
    """Speech-weighted mean over the segments that could tell; None when none could."""
    known = [(c.coverage, c.speech_s) for c in covs if c.coverage is not None and c.speech_s > 0]
    if not known:
        return None
    total = sum(s for _, s in known)
    return float(sum(c * s for c, s in known) / total) if total else None


def tail_start(res, speech: list[tuple[float, float]]) -> float | None:
    """Whisper-style continuation: where to re-decode from (clip seconds), or None. A timed transcript
    whose last complete phrase (`extras["complete_s"]`, else its last span's end) ends MIN_GAP_S or more
    of speech before the speech does is continued from there, as whisper's long-form decoding seeks to
    its last complete timestamp."""
    spans = transcript_spans(res)
    if spans is None or not speech:
        return None
    extras = getattr(res, "extras", None) or {}
    done = extras.get("complete_s")
    if done is None:
        done = max((float(s[1]) for s in spans if _closed(s)), default=0.0)
    left = _total(_clip(speech, float(done) + SLACK_S, math.inf))
    return float(done) if left >= MIN_GAP_S else None


def complete_text(res) -> str:
    """The transcript up to its last complete phrase: the text of the spans that closed, the unclosed
    tail (which a continuation decodes again) dropped. Without spans: the text."""
    spans = transcript_spans(res)
    extras = getattr(res, "extras", None) or {}
    if spans is None or extras.get("spans") is None:
        return (getattr(res, "text", "") or "").strip()
    return " ".join(str(s[2]).strip() for s in spans if _closed(s) and str(s[2]).strip())


def split_points(audio: np.ndarray, sample_rate: int = 16_000, piece_s: float = SPLIT_PIECE_S,
                 min_piece_s: float = MIN_PIECE_S) -> list[int]:
    """Sample offsets at which to split one segment into pieces of about `piece_s`: at each ideal cut
    (equal pieces), the deepest pause within a third of a piece either side: the quietest frame of the
    energy smoothed over SMOOTH_S, and among near-ties the one nearest the ideal cut. No piece shorter
    than `min_piece_s`; [] when the segment is too short to split."""
    n = len(audio)
    pieces = int(round(n / (piece_s * sample_rate)))
    if pieces < 2 or n < 2 * min_piece_s * sample_rate:
        pieces = 2 if n >= 2 * min_piece_s * sample_rate and n > piece_s * sample_rate else 0
    if pieces < 2:
        return []
    frame = max(1, sample_rate // 100)
    nf = n // frame
    energy = np.square(np.asarray(audio[: nf * frame], np.float64).reshape(nf, frame)).mean(axis=1)
    width = max(1, int(SMOOTH_S * sample_rate / frame))
    smooth = np.convolve(energy, np.ones(width) / width, mode="same")
    cuts: list[int] = []
    step = n / pieces
    lo_bound = int(min_piece_s * sample_rate)
    for k in range(1, pieces):
        ideal = k * step
        lo = max(int(ideal - step / 3), (cuts[-1] if cuts else 0) + lo_bound)
        hi = min(int(ideal + step / 3), n - lo_bound)
        f_lo, f_hi = -(-lo // frame), hi // frame
        if f_hi <= f_lo:
            continue
        seg = smooth[f_lo:f_hi]
        near = np.flatnonzero(seg <= seg.min() * 1.05 + 1e-12) + f_lo
        best = int(near[np.argmin(np.abs(near * frame + frame // 2 - ideal))])
        cuts.append(best * frame + frame // 2)
    return cuts


def better(old: SegmentCoverage, new: SegmentCoverage) -> bool:
    """Whether a recovery's result replaces the segment's first one: it covers more speech."""
    if new.coverage is None:
        return False
    return old.coverage is None or new.coverage > old.coverage + 1e-6


@dataclass
class Recovery:
    """One segment's second try: `kind` "tail" (decode from `offsets[0]` to the end, after the first
    result's complete text) or "split" (decode the pieces starting at `offsets`, joined); `audios` are
    what the model hears (their total is the extra model audio)."""

    segment: int
    kind: str
    offsets: list[int]
    audios: list
    done_s: float = 0.0  # tail: where the first result's last complete phrase ends (clip seconds)


def plan_recovery(clips: list, results: list, speech: list, covs: list[SegmentCoverage],
                  sample_rate: int = 16_000, below: float = RECOVER_BELOW) -> list[Recovery]:
    """The second tries for one file's segments (at most one per segment): each segment covered less
    than `below` (and not failed) gets a continuation from its last complete phrase where its backend
    gave times and the speech runs on past it, else a split at its deepest pauses."""
    out = []
    for j, (clip, res, sp, c) in enumerate(zip(clips, results, speech, covs)):
        if isinstance(res, BaseException) or c.coverage is None or c.coverage >= below:
            continue
        t = tail_start(res, sp)
        if t is not None:
            # with CONTEXT_S of what it already heard before the last complete timestamp
            at = min(len(clip), int(round(max(0.0, t - CONTEXT_S) * sample_rate)))
            if len(clip) - at >= MIN_PIECE_S * sample_rate / 2:
                out.append(Recovery(j, "tail", [at], [clip[at:]], done_s=t))
                continue
        cuts = split_points(np.asarray(clip), sample_rate)
        if cuts:
            bounds = [0, *cuts, len(clip)]
            out.append(Recovery(j, "split", bounds[:-1], [clip[a:b] for a, b in zip(bounds, bounds[1:])]))
    return out


def _new_after(span, done_s: float) -> bool:
    """Whether a continuation's phrase (its own seconds) says something after `done_s`: it ends
    KEEP_AFTER_S or more past it, or it never closed (cut by the token budget: the last words said)."""
    return span[1] is None or float(span[1]) >= done_s + KEEP_AFTER_S


def _shifted(spans, at_s: float) -> list:
    return [[float(s[0]) + at_s, None if s[1] is None else float(s[1]) + at_s, s[2]] for s in spans]


def _word_key(w: str) -> str:
    return "".join(ch for ch in w.lower() if ch.isalnum())


def join_overlap(before: str, after: str, most: int = MAX_OVERLAP_WORDS) -> str:
    """`after` less its first words where they repeat the last words of `before` (a continuation that
    started CONTEXT_S early hears the end of what was said again): the longest run of up to `most`
    words, compared without case and punctuation; runs of 4 words or more may differ in a quarter of
    their words (the model hears the context a little differently the second time), and may start up
    to `SKIP_WORDS` into `after` (a word cut at the continuation's start comes out as noise)."""
    a, b = before.split(), after.split()
    ka, kb = [_word_key(w) for w in a], [_word_key(w) for w in b]
    for k in range(min(most, len(a), len(b)), 0, -1):
        tail = ka[-k:]
        if not any(tail):
            continue
        for skip in range(0, min(SKIP_WORDS, len(b) - k) + 1 if k >= 3 else 1):
            head = kb[skip: skip + k]
            if head == tail or (k >= 4 and _alike(tail, head)):
                return " ".join(b[skip + k:])
    return after


def _alike(x: list[str], y: list[str]) -> bool:
    import difflib

    same = sum(m.size for m in difflib.SequenceMatcher(None, x, y, autojunk=False).get_matching_blocks())
    return same >= 0.75 * len(x) and x[-1] == y[-1]


def merged(rec: Recovery, first, outputs: list, sample_rate: int = 16_000, joiner: str = " "):
    """The Transcript a recovery makes of the first result and the new outputs (one per audio), or
    None if any of them failed. Times stay clip seconds; a tail keeps the first result's complete
    phrases and adds the continuation's; split pieces are joined in order."""
    from operators.asr.base import Transcript

    if any(isinstance(o, BaseException) or o is None for o in outputs):
        return None
    spans: list = []
    texts: list[str] = []
    complete = 0.0
    timed = True
    if rec.kind == "tail":
        first_spans = transcript_spans(first) or []
        spans = [s for s in first_spans if _closed(s)]
        texts.append(complete_text(first))
        complete = float((getattr(first, "extras", None) or {}).get("complete_s") or 0.0)
    for at, o in zip(rec.offsets, outputs):
        at_s = at / sample_rate
        said = (o.text or "").strip()
        own = transcript_spans(o)
        if own is not None and rec.kind == "tail":  # the context the continuation heard again: dropped
            own = [s for s in own if _new_after(s, rec.done_s - at_s)]
            said = " ".join(str(s[2]).strip() for s in own if str(s[2]).strip())
        texts.append(join_overlap(texts[-1], said) if rec.kind == "tail" and texts else said)
        if own is None:
            timed = False
        else:
            spans += _shifted(own, at_s)
            done = (getattr(o, "extras", None) or {}).get("complete_s")
            complete = max(complete, at_s + float(done)) if done is not None else complete
    text = joiner.join(t for t in texts if t)
    extras = dict(getattr(first, "extras", None) or {})
    extras.pop("spans", None)
    extras.pop("complete_s", None)
    if timed and (rec.kind == "split" or transcript_spans(first) is not None):
        extras.update(spans=spans, complete_s=complete)
    extras["recovered"] = rec.kind
    return Transcript(text=text, extras=extras)


@dataclass
class FileItem:
    """One file's segments for `recover_batch`: their audio, first results and speech (clip seconds),
    how its language counts words and joins text, and whether second tries are allowed (plain
    transcription; a translation or a tagged output is not merged)."""

    clips: list
    results: list
    speech: list
    spaced: bool = True
    joiner: str = " "
    recover: bool = True


def recoverable(res) -> bool:
    """A first result that a second try may replace: a plain transcript (not an error, no tagged
    raw output, no translation)."""
    return not isinstance(res, BaseException) and res is not None and getattr(res, "raw_text", None) is None \
        and getattr(res, "translation", None) is None


def recover_batch(call, files: list[FileItem], sample_rate: int = 16_000
                  ) -> tuple[list[list], list[list[SegmentCoverage]], list[dict]]:
    """`recover` for the files of one batch at once: every second try of every file goes to
    `call(owners, audios) -> results` in one list (`owners[k]`: the index of the file audio k is
    from), so the caller batches them across files as it does the first pass. Returns per file its
    results, coverages and counts (`redecoded_segments`, `redecode_audio_s`)."""
    covs = [segment_coverages(f.results, f.speech, f.spaced) for f in files]
    plans: list[tuple[int, Recovery]] = []
    for i, f in enumerate(files):
        if not f.recover:
            continue
        ok = [c if recoverable(r) else SegmentCoverage(None, c.signal, c.speech_s, c.gaps)
              for r, c in zip(f.results, covs[i])]
        plans += [(i, p) for p in plan_recovery(f.clips, f.results, f.speech, ok, sample_rate)]
    counts = [{"redecoded_segments": 0, "redecode_audio_s": 0.0} for _ in files]
    results = [list(f.results) for f in files]
    if not plans:
        return results, covs, counts
    owners = [i for i, p in plans for _ in p.audios]
    outs = call(owners, [a for _, p in plans for a in p.audios])
    at = 0
    for i, p in plans:
        got = outs[at: at + len(p.audios)]
        at += len(p.audios)
        counts[i]["redecoded_segments"] += 1
        counts[i]["redecode_audio_s"] += sum(len(a) for a in p.audios) / sample_rate
        new = merged(p, results[i][p.segment], got, sample_rate, files[i].joiner)
        if new is None:
            continue
        new_cov = _recount(new, results[i], p.segment, files[i].speech, files[i].spaced)
        if better(covs[i][p.segment], new_cov):
            results[i][p.segment] = new
            covs[i][p.segment] = new_cov
    return results, covs, counts


def recover(call, clips: list, results: list, speech: list, spaced: bool = True, joiner: str = " ",
            sample_rate: int = 16_000) -> tuple[list, list[SegmentCoverage], dict]:
    """Detect and recover one file's dropped speech with `call(audios) -> results` (the backend, one
    list of clips, results in order). Returns (results, coverages, counts): a segment's result is
    replaced only where the second try covers more; counts: `redecoded_segments`, `redecode_audio_s`.
    One round: whatever the second try still leaves out stays flagged in its coverage."""
    res, covs, counts = recover_batch(lambda owners, audios: call(audios),
                                      [FileItem(clips, results, speech, spaced, joiner)], sample_rate)
    return res[0], covs[0], counts[0]


def _recount(new, results: list, j: int, speech: list, spaced: bool) -> SegmentCoverage:
    """Coverage of segment j with `new` in place of its result (the rate signal is the file's)."""
    trial = list(results)
    trial[j] = new
    return segment_coverages(trial, speech, spaced)[j]
