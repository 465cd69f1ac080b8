"""Exports from word timestamps and speaker turns (granite-plus rows): SRT and WebVTT subtitles (one
file per audio file, `<audio_id>.srt|.vtt`), RTTM speaker turns (one file per block) and the word
alignments NeMo manifests carry. The writers are Ray Data block functions like operators.labeling.export's:
filtered by the same rules, one stats row per file written.

Cues: words in order, a new cue at a speaker change, a pause of `CUE_GAP_S`, `CUE_MAX_CHARS`
characters or `CUE_MAX_S` seconds. RTTM turns come from operators.asr.words.speaker_turns: exact where
words carry times, shared out by characters within a segment where they do not (the speakers task
gives no times).
"""

from __future__ import annotations

import pyarrow as pa

from operators import storage
from operators.asr.words import speaker_turns
from operators.labeling.files import file_name, put, split, stats
from operators.labeling.filters import FilterRules

CUE_MAX_CHARS = 42
CUE_MAX_S = 7.0
CUE_GAP_S = 1.0


def timed_words(row: dict) -> list[dict]:
    return [w for w in (row.get("words") or []) if w.get("end_s") is not None]


def cues(row: dict) -> list[tuple[float, float, str, str | None]]:
    """(start_s, end_s, text, speaker) subtitle cues from a row's timed words."""
    out: list[tuple[float, float, str, str | None]] = []
    cur: list[dict] = []

    def flush():
        if cur:
            start = cur[0]["start_s"] if cur[0].get("start_s") is not None else cur[0]["end_s"]
            out.append((start, cur[-1]["end_s"], " ".join(w["word"] for w in cur), cur[0].get("speaker")))
            cur.clear()

    for w in timed_words(row):
        if cur:
            start = w["start_s"] if w.get("start_s") is not None else w["end_s"]
            text = " ".join(x["word"] for x in cur + [w])
            cue_start = cur[0]["start_s"] if cur[0].get("start_s") is not None else cur[0]["end_s"]
            if (w.get("speaker") != cur[0].get("speaker") or start - cur[-1]["end_s"] >= CUE_GAP_S
                    or len(text) > CUE_MAX_CHARS or w["end_s"] - cue_start > CUE_MAX_S):
                flush()
        cur.append(w)
    flush()
    return out


def _clock(t: float, sep: str) -> str:
    ms = max(0, int(round(t * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(row: dict) -> str:
    blocks = []
    for i, (a, b, text, _) in enumerate(cues(row), start=1):
        blocks.append(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n")
    return "\n".join(blocks)


def vtt(row: dict) -> str:
    lines = ["WEBVTT", ""]
    for a, b, text, speaker in cues(row):
        lines += [f"{_clock(a, '.')} --> {_clock(b, '.')}", f"<v {speaker}>{text}" if speaker else text, ""]
    return "\n".join(lines)


def rttm(row: dict) -> str:
    """NIST RTTM SPEAKER lines: file id (audio_id, spaces replaced), channel 1, onset, duration, label."""
    file_id = "_".join(row["audio_id"].split())
    return "".join(f"SPEAKER {file_id} 1 {a:.3f} {max(0.0, b - a):.3f} <NA> <NA> {spk} <NA> <NA>\n"
                   for spk, a, b in speaker_turns(row))


def nemo_words(row: dict) -> dict:
    """NeMo manifest extras: word alignments (`words`: word, start, end[, speaker]) where the row has them."""
    words = row.get("words")
    if not words:
        return {}
    return {"words": [{"word": w["word"], "start": w.get("start_s"), "end": w.get("end_s"),
                       **({"speaker": w["speaker"]} if w.get("speaker") else {})} for w in words]}


def _per_file(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None, ext: str,
              render) -> pa.Table:
    kept, dropped = split(batch, rules)
    done, paths = [], []
    for r in kept:
        if not timed_words(r):
            dropped["no_word_times"] += 1
            continue
        uri = storage.join(out_dir, r["audio_id"] + ext)
        put(uri, render(r).encode(), storage_options)
        done.append(r)
        paths.append(uri)
    return stats(done, dropped, paths)


def write_srt(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None = None) -> pa.Table:
    """One SubRip file per audio file with word times (`<audio_id>.srt`)."""
    return _per_file(batch, out_dir, rules, storage_options, ".srt", srt)


def write_vtt(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None = None) -> pa.Table:
    """One WebVTT file per audio file with word times (`<audio_id>.vtt`, speakers as voice spans)."""
    return _per_file(batch, out_dir, rules, storage_options, ".vtt", vtt)


def write_rttm(batch: pa.Table, out_dir: str, rules: FilterRules, storage_options: dict | None = None) -> pa.Table:
    """One RTTM file per block with the speaker turns of every kept row that has speakers."""
    kept, dropped = split(batch, rules)
    done, text = [], []
    for r in kept:
        lines = rttm(r)
        if not lines:
            dropped["no_speakers"] += 1
            continue
        done.append(r)
        text.append(lines)
    if not done:
        return stats([], dropped, [])
    uri = storage.join(out_dir, file_name(done, "rttm"))
    put(uri, "".join(text).encode(), storage_options)
    return stats(done, dropped, [uri])
