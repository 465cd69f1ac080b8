"""Word timestamps and speaker turns from Granite Speech Plus output: a tolerant tag parser and the
stitching of per-segment words into file-level columns. Plain Python; no model, no Ray.

The model writes (no punctuation):
- speaker mode: `[Speaker N]: words ... [Speaker M]: words ...`, speakers numbered by first
  appearance *within one generation* (each segment starts again at 1);
- timestamp mode: `word [T:N]` after each word, N the word's end time in centiseconds modulo 1000
  (the value wraps every 10 s and is unwrapped here); silences come out as `_ [T:N]`.

`parse(raw, duration_s)` never raises. What it repairs it records in `Parsed.problems`; a clip with any
problem is `suspect` (the output's `tags_suspect` column; labeling exports drop such rows). Repairs:
- malformed tags (`[T:]`, `[T:4x]`, `[T:12` at the end, `[Speaker]`, `[Speaker two]:`): dropped;
- a time tag with no word before it (two tags in a row, or a tag first): dropped;
- several words before one time tag (missing tags): the tag belongs to the last word, the others
  keep no times;
- a time that goes back: a drop of less than `min_wrap_s` of the 10-s dial is a decreasing time, not
  a wrap: clamped to the previous time; a drop of more is the dial wrapping (the model card's rule);
- a time past the clip's end (+ `end_slack_s`): clamped to the end;
- a speaker tag glued inside a word (`hel[Speaker 2]:lo`): the word is kept whole, the new speaker
  starts with the next word.

Stitching across segments (`attach`): clip times become file times (segment offsets added, and mapped
through the speech ranges the decoder kept where voice activity dropped silence: `KeptTime`). Speaker
numbers restart in every segment, and nothing in one segment's output says who its "Speaker 1" is in
the next, so speakers are labelled per segment, `seg<j>-spk<n>` (j counts segments from 1): segment
2's first speaker is never mistaken for segment 1's. Linking them across segments needs evidence the
model does not give (a speaker embedding, a diarizer); `speakers` lists each segment's labels in order
of appearance so such a step can map them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from operators.audio.segment import to_file_samples

WRAP_S = 10.0          # [T:N] is centiseconds modulo 1000
SILENCE = "_"

# a tag-looking piece: a short closed `[...]`, or an unclosed `[T:12` / `[Speaker 3` (a trailing `:`
# belongs to the tag). A bracket in nothing tag-shaped stays in the text (and is flagged there).
_PIECE = re.compile(r"\[[^\[\]]{0,20}\]:?|\[\s*(?:T\s*:?\s*\d*|Speaker\s*\d*)(?![\d\]])", re.IGNORECASE)
_BRACKETS = re.compile(r"[\[\]]")
_TIME = re.compile(r"\[\s*T\s*:\s*(\d{1,6})\s*\]:?$", re.IGNORECASE)
_SPEAKER = re.compile(r"\[\s*Speaker\s+(\d{1,4})\s*\]:?$", re.IGNORECASE)


@dataclass
class Word:
    word: str
    start_s: float | None = None
    end_s: float | None = None
    speaker: int | None = None


@dataclass
class Parsed:
    text: str                                  # the words without tags or silences, space-joined
    words: list[Word] = field(default_factory=list)
    speakers: list[int] = field(default_factory=list)   # speaker numbers in order of first appearance
    problems: list[str] = field(default_factory=list)
    has_times: bool = False
    has_speakers: bool = False

    @property
    def suspect(self) -> bool:
        return bool(self.problems)

    def word_dicts(self) -> list[dict]:
        """The words as the `words` column's structs (word, start_s, end_s, speaker)."""
        return [asdict(w) for w in self.words]


def _tokens(raw: str):
    """('text', str) and ('tag', str, glued_left, glued_right) pieces in order."""
    at = 0
    for m in _PIECE.finditer(raw):
        if m.start() > at:
            yield ("text", raw[at:m.start()])
        glued_left = m.start() > 0 and not raw[m.start() - 1].isspace()
        glued_right = m.end() < len(raw) and not raw[m.end()].isspace()
        yield ("tag", m.group(0), glued_left, glued_right)
        at = m.end()
    if at < len(raw):
        yield ("text", raw[at:])


def parse(raw: str | None, duration_s: float | None = None, min_wrap_s: float = 1.0,
          end_slack_s: float = 0.5) -> Parsed:
    """Tag soup -> words with clip-relative times and speaker numbers. Never raises."""
    out = Parsed(text="")
    if not raw:
        return out
    words: list[Word] = []
    pending: list[Word] = []        # words since the last time tag
    speaker: int | None = None
    last_end = 0.0                  # unwrapped time of the last accepted tag
    last_mod = 0.0                  # the dial reading of that tag (seconds, 0..10)
    offset = 0.0
    glue_next = False               # a speaker tag was glued inside a word: join the next piece
    limit = None if duration_s is None else max(0.0, float(duration_s)) + end_slack_s
    problems = out.problems

    def note(problem: str) -> None:
        if problem not in problems:
            problems.append(problem)

    for tok in _tokens(raw):
        if tok[0] == "text":
            pieces = tok[1].split()
            if any(_BRACKETS.search(p) for p in pieces):
                note("stray bracket")
                pieces = [_BRACKETS.sub("", p).strip(":") for p in pieces]
            if glue_next and words and pieces and not tok[1][:1].isspace():
                words[-1].word += pieces[0]
                pieces = pieces[1:]
            glue_next = False
            for p in pieces:
                if not p:
                    continue
                w = Word(p, speaker=speaker)
                words.append(w)
                pending.append(w)
            continue
        _, tag, glued_left, glued_right = tok
        t = _TIME.match(tag)
        s = _SPEAKER.match(tag)
        glue_next = False
        if s:
            n = int(s.group(1))
            out.has_speakers = True
            if n <= 0:
                note("speaker number < 1")
            if glued_left and glued_right and words:
                note("speaker tag inside a word")
                glue_next = True
            speaker = n
            if n not in out.speakers:
                if out.speakers and n != max(out.speakers) + 1:
                    note("speakers not numbered by first appearance")
                out.speakers.append(n)
            continue  # a word it split keeps its speaker; the next word takes the new one
        if not t:
            note(f"malformed tag {tag[:24]!r}")
            continue
        out.has_times = True
        if not pending:
            note("time tag without a word")
            continue
        mod = (int(t.group(1)) % 1000) / 100.0
        if int(t.group(1)) >= 1000:
            note("time tag past the 10-s dial")
        value = mod + offset
        if value < last_end - 1e-9:
            if last_mod - mod >= min_wrap_s:        # the dial wrapped
                offset += WRAP_S
                while mod + offset < last_end - 1e-9:
                    offset += WRAP_S
                value = mod + offset
            else:
                note("decreasing time")
                value = last_end
        if limit is not None and value > limit - end_slack_s:  # within the slack: rounding, clamp quietly
            if value > limit:
                note("time past the clip's end")
            value = max(last_end, limit - end_slack_s)
        if len(pending) > 1:
            note("words without a time tag")
        w = pending[-1]
        w.start_s, w.end_s = last_end, value
        last_end, last_mod = value, mod
        pending = []
    if out.has_times and pending:
        note("words without a time tag")
    out.words = [w for w in words if w.word != SILENCE]
    out.text = " ".join(w.word for w in out.words)
    return out


def speaker_label(segment: int, speaker: int | None) -> str | None:
    """The label of speaker `speaker` of segment `segment` (0-based): unique within a file."""
    return None if speaker is None else f"seg{segment + 1}-spk{speaker}"


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class KeptTime:
    """Clip time -> file time. Where the decoder dropped silence (voice activity), the model's audio is
    the kept ranges joined, so a clip can span several ranges: a time maps into the range it falls in
    (a start at a range boundary into the next range, an end into the one it closes). Without kept
    ranges a clip's audio is the file's from the segment start."""

    def __init__(self, seg_start: list[int], speech_start: list[int] | None = None,
                 speech_end: list[int] | None = None, sample_rate: int = 16_000):
        self.seg_start, self.sr = list(seg_start), sample_rate
        self.speech_start, self.speech_end = speech_start or [], speech_end or []

    def __call__(self, segment: int, t: float, end: bool = False) -> float:
        p = self.seg_start[segment] + t * self.sr
        return float(to_file_samples([p], self.speech_start, self.speech_end, ends=end)[0]) / self.sr


def attach(rec: dict, results: list, to_file: KeptTime | None = None) -> None:
    """Fill a file's output row from its segments' results (those with `raw_text`), after the stage has
    stitched `segments` (file-time start_s/end_s, one per result): `raw_text` (one entry per segment,
    as generated), `words` in file time with per-segment speaker labels, `speakers` (per segment) and
    `tags_suspect`. `to_file` maps clip times to file times (default: segment start + clip time).
    Rows of other backends are left as they are."""
    if not any(getattr(x, "raw_text", None) is not None for x in results):
        return
    raws, words, speakers, suspect = [], [], [], False
    any_words = False
    segs = rec.get("segments") or []
    for j, res in enumerate(results):
        s, e = (segs[j]["start_s"], segs[j]["end_s"]) if j < len(segs) else (0.0, float("inf"))
        raws.append(getattr(res, "raw_text", None))
        seg_words = getattr(res, "words", None)
        suspect = suspect or bool(getattr(res, "tags_suspect", False))
        if seg_words is None:
            speakers.append([])
            continue
        any_words = True

        def place(t, end, j=j, s=s, e=e):
            if t is None:
                return None
            return _r(min(e, max(s, to_file(j, t, end) if to_file is not None else s + t)))

        labels: list[str] = []
        for w in seg_words:
            label = speaker_label(j, w.get("speaker"))
            if label is not None and label not in labels:
                labels.append(label)
            words.append({"word": w["word"], "start_s": place(w.get("start_s"), False),
                          "end_s": place(w.get("end_s"), True), "speaker": label})
        speakers.append(labels)
    rec["raw_text"] = raws
    rec["words"] = words if any_words else None
    rec["speakers"] = speakers if any_words else None
    rec["tags_suspect"] = suspect


# ---------------------------------------------------------------- checks and turns (filters, exports)


def timestamp_problem(row: dict, max_words_per_s: float = 8.0, slack_s: float = 0.05) -> str | None:
    """Why a row's word times are not fit to cut clips from (None when fine, or when it has none):
    times must be monotonic, each word inside its segment, and the words per second of speech plausible."""
    words = [w for w in (row.get("words") or []) if w.get("end_s") is not None]
    if not words:
        return None
    segs = row.get("segments") or []
    bounds = [(s["start_s"], s["end_s"]) for s in segs] or [(0.0, row.get("duration_s") or float("inf"))]
    prev = -1.0
    for w in words:
        start = w["start_s"] if w.get("start_s") is not None else w["end_s"]
        if start > w["end_s"] + 1e-9 or start < prev - 1e-9:
            return "not monotonic"
        if not any(a - slack_s <= start and w["end_s"] <= b + slack_s for a, b in bounds):
            return "outside its segment"
        prev = w["end_s"]
    span = sum(b - a for a, b in bounds)
    if span > 0 and len(words) / span > max_words_per_s:
        return "implausible word rate"
    return None


def speaker_turns(row: dict) -> list[tuple[str, float, float]]:
    """(speaker label, start_s, end_s) per turn. Words with times give exact turns; words from the
    speaker mode carry no times, so a segment's duration is shared among its turns in proportion to
    their characters (an estimate, exact only at segment boundaries)."""
    words = row.get("words") or []
    segs = row.get("segments") or []
    turns: list[tuple[str, float, float]] = []
    by_seg: dict[int, list[dict]] = {}
    for w in words:
        if not w.get("speaker"):
            continue
        m = re.match(r"seg(\d+)-", w["speaker"])
        by_seg.setdefault(int(m.group(1)) - 1 if m else 0, []).append(w)
    for j, ws in sorted(by_seg.items()):
        a, b = (segs[j]["start_s"], segs[j]["end_s"]) if j < len(segs) else (0.0, row.get("duration_s") or 0.0)
        groups: list[list[dict]] = []
        for w in ws:
            if groups and groups[-1][0]["speaker"] == w["speaker"]:
                groups[-1].append(w)
            else:
                groups.append([w])
        if all(w.get("end_s") is not None for w in ws):
            for g in groups:
                start = g[0]["start_s"] if g[0].get("start_s") is not None else a
                turns.append((g[0]["speaker"], start, g[-1]["end_s"]))
            continue
        chars = [sum(len(w["word"]) + 1 for w in g) for g in groups]
        total, at = sum(chars) or 1, a
        for g, c in zip(groups, chars):
            end = at + (b - a) * c / total
            turns.append((g[0]["speaker"], at, end))
            at = end
    return turns
