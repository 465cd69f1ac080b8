"""Run report: per-block stats computed where the block is written, summed on the driver.

WER uses jiwer on text normalised with Whisper's English normalizer (whisper-normalizer package) for
English and Whisper's basic normalizer for other languages. Corpus WER = sum of errors / sum of
reference words, over rows with a non-empty reference.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from functools import lru_cache

import pyarrow as pa

from operators.schema import COVERAGE_FLAG_BELOW, OK, error_kind

SAMPLE_RATE = 16_000  # operators.config.SAMPLE_RATE: the ASR stage's caps are in samples at this rate
SIZING_RTFX = 4000.0  # cpus_per_gpu_needed_at: the GPU speed (audio-s per s) a node is sized for

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
    ("perf", pa.string()),            # JSON: the block's timing (block_perf)
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


def block_perf(perf: pa.Table | None, write_cpu_s: float = 0.0) -> dict:
    """A block's timing from the perf_* columns (operators.schema): CPU sums, first read, and per ASR
    actor its start, model-ready time and first/last model call. `written_at` is now."""
    out: dict = {"write_cpu_s": write_cpu_s, "written_at": time.time()}
    if perf is None or perf.num_rows == 0:
        return out
    rows = perf.to_pylist()

    def total(name):
        return float(sum(r.get(name) or 0.0 for r in rows))

    out.update(decode_cpu_s=total("perf_decode_cpu_s"), vad_cpu_s=total("perf_vad_cpu_s"),
               speech_s=total("perf_speech_s"), asr_busy_s=total("perf_asr_busy_s"),
               asr_cpu_s=total("perf_asr_cpu_s"), asr_vad_cpu_s=total("perf_asr_vad_cpu_s"),
               asr_vad_s=total("perf_asr_vad_s"), carried_bytes=total("perf_carried_bytes"),
               fetch_retries=int(total("perf_fetch_retries")),
               asr_ooms=total("perf_asr_ooms"), asr_splits=total("perf_asr_splits"),
               redecoded_segments=total("perf_redecoded_segments"),
               redecode_audio_s=total("perf_redecode_audio_s"))
    caps = [r["perf_asr_cost_cap"] for r in rows if r.get("perf_asr_cost_cap")]
    if caps:
        out["asr_cost_cap"] = min(caps)
    out["decode_nodes"] = sorted({r["perf_decode_node"] for r in rows if r.get("perf_decode_node")})
    out["vad"] = sorted({r["perf_vad"] for r in rows if r.get("perf_vad")})
    reads = [r["perf_read_at"] for r in rows if r.get("perf_read_at")]
    if reads:
        out["read_first"] = min(reads)
    actors: dict = {}
    for r in rows:
        if not r.get("perf_actor"):
            continue
        a = actors.setdefault(r["perf_actor"], {"started": r["perf_actor_started"], "ready": r["perf_actor_ready"],
                                                "call_first": None, "call_last": None})
        if r.get("perf_call_first"):
            a["call_first"] = min(a["call_first"] or r["perf_call_first"], r["perf_call_first"])
            a["call_last"] = max(a["call_last"] or 0.0, r["perf_call_last"])
    out["actors"] = actors
    return out


def block_stats(table: pa.Table, path: str | None, perf: pa.Table | None = None,
                write_cpu_s: float = 0.0, write_retries: int = 0) -> pa.Table:
    rows = table.select([c for c in ("status", "error", "duration_s", "segments", "text", "reference",
                                     "language", "coverage") if c in table.column_names]).to_pylist()
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
        "perf": json.dumps({**block_perf(perf, write_cpu_s), "write_retries": write_retries,
                            "low_coverage_rows": _low_coverage(rows)}),
    }], schema=STATS_SCHEMA)


def _low_coverage(rows: list[dict]) -> int:
    """ok rows whose transcript covers less of the speech than schema.COVERAGE_FLAG_BELOW."""

    return sum(1 for r in rows if r.get("status") == OK and r.get("coverage") is not None
               and r["coverage"] < COVERAGE_FLAG_BELOW)


class Summary:
    """Accumulates stats rows as blocks finish; `as_dict` is the run's summary."""

    def __init__(self):
        self.files = self.ok = self.segments = self.wer_errors = self.wer_words = self.wer_files = 0
        self.audio_s = 0.0
        self.errors: Counter = Counter()
        self.parts = 0
        self.cpu = Counter()            # decode_cpu_s, asr_cpu_s, write_cpu_s, asr_busy_s
        self.read_first: float | None = None
        self.written_last: float | None = None
        self.actors: dict[str, dict] = {}
        self.decode_nodes: set[str] = set()
        self.vad: set[str] = set()        # the voice-activity detectors and where they ran
        self.cost_cap: int | None = None  # the smallest ASR cap on a call's padded samples seen

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
            self._add_perf(json.loads(r.get("perf") or "{}"))

    def _add_perf(self, p: dict) -> None:
        for k in ("decode_cpu_s", "vad_cpu_s", "speech_s", "asr_cpu_s", "asr_vad_cpu_s", "asr_vad_s",
                  "carried_bytes", "write_cpu_s", "asr_busy_s",
                  "fetch_retries", "write_retries", "asr_ooms", "asr_splits", "redecoded_segments",
                  "redecode_audio_s", "low_coverage_rows"):
            self.cpu[k] += p.get(k, 0.0)
        if p.get("asr_cost_cap"):
            self.cost_cap = min(self.cost_cap or p["asr_cost_cap"], p["asr_cost_cap"])
        self.decode_nodes.update(p.get("decode_nodes") or ())
        self.vad.update(p.get("vad") or ())
        if p.get("read_first"):
            self.read_first = min(self.read_first or p["read_first"], p["read_first"])
        if p.get("written_at"):
            self.written_last = max(self.written_last or 0.0, p["written_at"])
        for name, a in (p.get("actors") or {}).items():
            have = self.actors.setdefault(name, dict(a))
            have["started"] = min(have["started"], a["started"])
            if a.get("call_first"):
                have["call_first"] = min(have.get("call_first") or a["call_first"], a["call_first"])
                have["call_last"] = max(have.get("call_last") or 0.0, a["call_last"])

    def feeding(self, job_started: float | None = None) -> dict:
        """How well the pipeline fed the model: the figures a user sizes a cluster with.

        pipeline_wall_seconds: first input read to last file written (Ray start-up excluded).
        model_busy_seconds: sum over ASR actors of the time inside backend calls.
        model_busy_fraction: model_busy_seconds / sum over actors of their alive seconds (from the
          actor starting to load its model to the last file written; an actor that never got a batch is
          not seen). cpu_seconds_per_audio_hour: decode, asr_actor_overhead (the actor's CPU outside
          backend calls) and write; vad is the part of decode spent finding speech, asr_actor_vad the
          part of asr_actor_overhead (segment.vad_on actor).
        vad: the detectors that ran and where (`silero on decode CPU`, `silero on ASR actor cuda`), their
          share of the decode CPU, and the ASR actors' wall seconds finding speech.
        cpus_per_gpu_needed_at: busy cores per GPU at rtfx SIZING_RTFX (CPU-s per audio-s x rtfx), for
          decode and for the ASR actor outside model calls: size a node's cores per GPU from one run.
        carried_to_asr: the pcm16 that went from decode to the ASR actors through the object store
          (kept audio; the whole audio with segment.vad_on actor), per audio-hour and in MB/s per GPU
          at SIZING_RTFX.
        speech_seconds_kept: audio the model heard (speech and pads) out of audio_seconds;
        model_seconds_saved_est: model_busy_seconds scaled by the audio left out (the model's time
          is taken as proportional to audio length)."""
        if self.read_first is None or self.written_last is None:
            return {}
        end = self.written_last
        busy = self.cpu["asr_busy_s"]
        alive = sum(max(0.0, end - a["started"]) for a in self.actors.values())
        calls_first = [a["call_first"] for a in self.actors.values() if a.get("call_first")]
        calls_last = [a["call_last"] for a in self.actors.values() if a.get("call_last")]
        hours = self.audio_s / 3600
        per_hour = (lambda v: v / hours) if hours > 0 else (lambda v: None)
        at_rtfx = (lambda v: SIZING_RTFX * v / self.audio_s) if self.audio_s > 0 else (lambda v: None)
        out = {
            "pipeline_wall_seconds": end - self.read_first,
            "model_busy_seconds": busy,
            "model_busy_fraction": busy / alive if alive > 0 else None,
            "asr_actors_seen": len(self.actors),
            "asr_actors": sorted(self.actors),            # node/host:pid
            "decode_nodes": sorted(self.decode_nodes),
            "model_load_seconds": max((a["ready"] - a["started"] for a in self.actors.values()), default=None),
            "first_model_call_after_first_read_s": (min(calls_first) - self.read_first) if calls_first else None,
            "last_file_written_after_last_model_call_s": (end - max(calls_last)) if calls_last else None,
            "speech_seconds_kept": self.cpu["speech_s"],
            "speech_fraction": self.cpu["speech_s"] / self.audio_s if self.audio_s > 0 else None,
            "model_seconds_saved_est": (busy * (self.audio_s - self.cpu["speech_s"]) / self.cpu["speech_s"]
                                        if self.cpu["speech_s"] > 0 else None),
            "cpu_seconds_per_audio_hour": {
                "decode": per_hour(self.cpu["decode_cpu_s"]),
                "vad": per_hour(self.cpu["vad_cpu_s"]),
                "asr_actor_overhead": per_hour(self.cpu["asr_cpu_s"]),
                "asr_actor_vad": per_hour(self.cpu["asr_vad_cpu_s"]),
                "write": per_hour(self.cpu["write_cpu_s"]),
            },
            # where voice activity ran, its share of the decode CPU, the ASR actors' time on it
            "vad": {"ran": sorted(self.vad),
                    "share_of_decode_cpu": (self.cpu["vad_cpu_s"] / self.cpu["decode_cpu_s"]
                                            if self.cpu["decode_cpu_s"] > 0 else None),
                    "asr_actor_seconds": self.cpu["asr_vad_s"]},
            # busy cores per GPU this job needs to feed a GPU at `rtfx` audio-seconds per second
            "cpus_per_gpu_needed_at": {"rtfx": SIZING_RTFX, "decode": at_rtfx(self.cpu["decode_cpu_s"]),
                                       "asr_actor": at_rtfx(self.cpu["asr_cpu_s"])},
            "carried_to_asr": {
                "mb_per_audio_hour": per_hour(self.cpu["carried_bytes"] / 1e6),
                "mb_per_s_at_rtfx": at_rtfx(self.cpu["carried_bytes"] / 1e6)},
        }
        if job_started is not None and calls_first:
            out["first_model_call_after_job_start_s"] = min(calls_first) - job_started
        return out

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
            "retries": {"fetch": int(self.cpu["fetch_retries"]), "write": int(self.cpu["write_retries"])},
            # device out-of-memory errors the ASR stage caught, batches it halved (after one, or before a
            # call over the cap), and the smallest cap it set on a call's padded audio (clips x longest
            # clip, seconds; null: no out-of-memory error)
            "asr_oom_errors": int(round(self.cpu["asr_ooms"])),
            "asr_oom_splits": int(round(self.cpu["asr_splits"])),
            "asr_frame_cap_s": self.cost_cap / SAMPLE_RATE if self.cost_cap else None,
            # dropped speech (operators.asr.coverage): segments decoded a second time, the extra audio the model
            # heard for them, and ok rows still covering less of their speech than schema.COVERAGE_FLAG_BELOW
            "redecoded_segments": int(round(self.cpu["redecoded_segments"])),
            "redecode_audio_seconds": self.cpu["redecode_audio_s"],
            "low_coverage_rows": int(round(self.cpu["low_coverage_rows"])),
            **self.feeding(extra.pop("job_started", None)),
            **extra,
        }


def format_summary(s: dict) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, dict) and set(v) == {"files", "examples"}:  # input_left_out_by: 2 (a.txt, b.txt)
            return f"{v['files']} ({', '.join(v['examples'])})"
        if isinstance(v, dict):
            return ", ".join(f"{k}={fmt(n)}" for k, n in v.items()) or "-"
        return "-" if v is None else str(v)

    keys = ["job", "backend", "model", "model_revision", "input_files_seen", "input_files_left_out",
            "input_left_out_by", "inputs_listed", "skipped_already_done",
            "duplicate_ids_dropped", "files", "ok", "errors", "errors_by_kind", "audio_hours",
            "segments", "wall_seconds", "rtfx", "pipeline_wall_seconds", "model_busy_seconds",
            "model_busy_fraction", "first_model_call_after_first_read_s",
            "last_file_written_after_last_model_call_s", "speech_fraction", "model_seconds_saved_est",
            "cpu_seconds_per_audio_hour", "vad", "cpus_per_gpu_needed_at", "carried_to_asr", "retries",
            "asr_oom_errors",
            "asr_oom_splits",
            "asr_frame_cap_s", "redecoded_segments", "redecode_audio_seconds", "low_coverage_rows", "wer",
            "wer_files",
            "parquet_files_written", "output"]
    width = max(len(k) for k in keys)
    lines = ["=" * (width + 40)]
    lines += [f"{k:<{width}}  {fmt(s.get(k))}" for k in keys if k in s]
    lines.append("=" * (width + 40))
    return "\n".join(lines)
