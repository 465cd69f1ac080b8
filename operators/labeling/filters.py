"""Row filters for labeling exports: each rule names why a transcript is not fit for training.

`drop_reason(row, rules)` returns the first rule a row fails (or None); exports count rows per reason,
so a user sees what each bound removed.
"""

from __future__ import annotations

import zlib
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from operators.asr.words import timestamp_problem
from operators.schema import COVERAGE_FLAG_BELOW

# checked in this order; the first failing rule is the row's reason
REASONS = ("error", "empty", "duration", "chars_per_second", "agreement", "language", "loop", "repetition",
           "coverage", "tags", "timestamps")


class FilterRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_duration_s: float = Field(0.0, ge=0, description="Drop shorter audio.")
    max_duration_s: float | None = Field(None, gt=0, description="Drop longer audio.")
    min_chars_per_s: float = Field(0.0, ge=0, description="Drop transcripts with fewer characters per "
                                   "second of audio (missed speech).")
    max_chars_per_s: float | None = Field(None, gt=0, description="Drop transcripts with more characters "
                                          "per second (hallucination; ~25 is far past fast speech).")
    min_agreement: float | None = Field(None, ge=0, le=1, description="Drop rows whose agreement (or "
                                        "confidence) is below; rows without a score pass.")
    languages: list[str] | None = Field(None, description="Keep only these languages.")
    max_compression_ratio: float | None = Field(2.4, gt=0, description="Drop rows with a segment whose "
                                                "zlib compression ratio exceeds this (Whisper's looping rule).")
    max_ngram_repeats: int | None = Field(4, ge=1, description="Drop rows with a segment where one word "
                                          "3-gram occurs more than this many times.")
    drop_loop_suspected: bool = Field(True, description="Drop rows the backend flagged loop_suspected "
                                      "(granite-ar: a run of one repeated n-gram in its output).")
    keep_empty: bool = Field(False, description="Keep ok rows with an empty transcript.")
    drop_tags_suspect: bool = Field(True, description="Drop rows whose word/speaker tags needed repairs "
                                    "(granite-plus: tags_suspect).")
    check_timestamps: bool = Field(True, description="Drop rows whose word times are not monotonic, leave "
                                   "their segment, or exceed max_words_per_s.")
    max_words_per_s: float = Field(8.0, gt=0, description="Words per second of segment audio above which "
                                   "word timestamps are implausible.")
    min_coverage: float | None = Field(COVERAGE_FLAG_BELOW, ge=0, le=1, description="Drop rows whose transcript covers "
                                       "less of the speech than this (`coverage`: speech lost even after "
                                       "the second try); rows without it pass. None keeps all.")


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def max_ngram_count(text: str, n: int = 3) -> int:
    words = text.lower().split()
    if len(words) < n:
        return 0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return max(counts.values())


def drop_reason(row: dict, rules: FilterRules) -> str | None:
    if row.get("status") != "ok":
        return "error"
    text = (row.get("text") or "").strip()
    if not text:
        return None if rules.keep_empty else "empty"
    duration = row.get("duration_s") or 0.0
    if duration < rules.min_duration_s or (rules.max_duration_s and duration > rules.max_duration_s):
        return "duration"
    cps = len(text) / duration if duration > 0 else float("inf")
    if cps < rules.min_chars_per_s or (rules.max_chars_per_s and cps > rules.max_chars_per_s):
        return "chars_per_second"
    agreement = row.get("agreement")
    if rules.min_agreement is not None and agreement is not None and agreement < rules.min_agreement:
        return "agreement"
    if rules.languages and (row.get("language") or "").split("-")[0] not in rules.languages:
        return "language"
    if rules.drop_loop_suspected and row.get("loop_suspected"):
        return "loop"
    # judged per segment (<= 30 s, like Whisper's rule): a whole long file compresses well anyway
    pieces = [s.get("text") or "" for s in (row.get("segments") or [])] or [text]
    for piece in pieces:
        if (rules.max_compression_ratio and compression_ratio(piece) > rules.max_compression_ratio) or \
                (rules.max_ngram_repeats and max_ngram_count(piece) > rules.max_ngram_repeats):
            return "repetition"
    coverage = row.get("coverage")
    if rules.min_coverage is not None and coverage is not None and coverage < rules.min_coverage:
        return "coverage"
    if rules.drop_tags_suspect and row.get("tags_suspect"):
        return "tags"
    if rules.check_timestamps and timestamp_problem(row, rules.max_words_per_s):
        return "timestamps"
    return None
