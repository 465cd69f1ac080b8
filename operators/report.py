"""Run report: per-block stats computed where the block is written, summed on the driver.

WER uses jiwer on text normalised with Whisper's English normalizer (whisper-normalizer package) for
English and Whisper's basic normalizer for other languages. Corpus WER = sum of errors / sum of
reference words, over rows with a non-empty reference.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache

import pyarrow as pa

from operators.schema import OK, error_kind

STATS_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("files", pa.int64()),
    ("ok", pa.int64()),
    ("audio_s", pa.float64()),
    ("segments", pa.int64()),
    ("errors", pa.string()),          # JSON {kind: count}
    ("wer_errors", pa.int64()),
    ("wer_words", pa.int64()),
    ("wer_files", pa.int64()),
])


@lru_cache(maxsize=None)
def _normalizer(english: bool):
    if english:
        from whisper_normalizer.english import EnglishTextNormalizer

        return EnglishTextNormalizer()
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize(text: str, language: str | None = "en") -> str:
    english = (language or "en").lower().split("-")[0] == "en"
    return " ".join(_normalizer(english)(text or "").split())


def word_errors(reference: str, hypothesis: str, language: str | None = "en") -> tuple[int, int]:
    """(errors, reference words) after normalisation; (0, 0) for an empty reference."""
    import jiwer

    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    if not ref:
        return 0, 0
    if not hyp:
        return len(ref.split()), len(ref.split())
    o = jiwer.process_words(ref, hyp)
    return o.substitutions + o.deletions + o.insertions, o.substitutions + o.deletions + o.hits


def wer(reference: str, hypothesis: str, language: str | None = "en") -> float | None:
    errors, words = word_errors(reference, hypothesis, language)
    return errors / words if words else None


def block_stats(table: pa.Table, path: str | None) -> pa.Table:
    rows = table.select([c for c in ("status", "error", "duration_s", "segments", "text", "reference",
                                     "language") if c in table.column_names]).to_pylist()
    errors = Counter(error_kind(r["error"]) for r in rows if r["status"] != OK)
    werr = words = wfiles = 0
    for r in rows:
        # translation-only rows have no transcript to score
        if r["status"] == OK and r.get("reference") and r.get("text") is not None:
            e, w = word_errors(r["reference"], r.get("text") or "", r.get("language"))
            werr, words, wfiles = werr + e, words + w, wfiles + (1 if w else 0)
    return pa.Table.from_pylist([{
        "path": path,
        "files": len(rows),
        "ok": sum(r["status"] == OK for r in rows),
        "audio_s": float(sum(r["duration_s"] or 0.0 for r in rows)),
        "segments": sum(len(r.get("segments") or []) for r in rows),
        "errors": json.dumps(dict(errors), sort_keys=True),
        "wer_errors": werr, "wer_words": words, "wer_files": wfiles,
    }], schema=STATS_SCHEMA)


class Summary:
    """Accumulates stats rows as blocks finish; `as_dict` is the run's summary."""

    def __init__(self):
        self.files = self.ok = self.segments = self.wer_errors = self.wer_words = self.wer_files = 0
        self.audio_s = 0.0
        self.errors: Counter = Counter()
        self.parts = 0

    def add(self, stats: pa.Table) -> None:
        for r in stats.to_pylist():
            self.files += r["files"]
            self.ok += r["ok"]
            self.audio_s += r["audio_s"]
            self.segments += r["segments"]
            self.errors.update(json.loads(r["errors"]))
            self.wer_errors += r["wer_errors"]
            self.wer_words += r["wer_words"]
            self.wer_files += r["wer_files"]
            self.parts += 1 if r["path"] else 0

    def as_dict(self, wall_s: float, **extra) -> dict:
        return {
            "files": self.files,
            "ok": self.ok,
            "errors": self.files - self.ok,
            "errors_by_kind": dict(sorted(self.errors.items())),
            "audio_hours": self.audio_s / 3600,
            "audio_seconds": self.audio_s,
            "segments": self.segments,
            "wall_seconds": wall_s,
            "rtfx": (self.audio_s / wall_s) if wall_s > 0 else None,
            "wer": (self.wer_errors / self.wer_words) if self.wer_words else None,
            "wer_files": self.wer_files,
            "wer_reference_words": self.wer_words,
            "parquet_files_written": self.parts,
            **extra,
        }


def format_summary(s: dict) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, dict):
            return ", ".join(f"{k}={n}" for k, n in v.items()) or "-"
        return "-" if v is None else str(v)

    keys = ["job", "backend", "model", "model_revision", "inputs_listed", "skipped_already_done",
            "duplicate_ids_dropped", "files", "ok", "errors", "errors_by_kind", "audio_hours",
            "segments", "wall_seconds", "rtfx", "wer", "wer_files", "parquet_files_written", "output"]
    width = max(len(k) for k in keys)
    lines = ["=" * (width + 40)]
    lines += [f"{k:<{width}}  {fmt(s.get(k))}" for k in keys if k in s]
    lines.append("=" * (width + 40))
    return "\n".join(lines)
