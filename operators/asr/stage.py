"""The ASR operator: a callable class for a Ray Data actor pool, wrapping any ASRBackend.

It receives a batch of decoded files, cuts their planned segments, sorts all segments by length and
runs them through the backend in sub-batches (cross-file batching), then stitches text back per file.
One output row per input row, in order. A failing sub-batch is retried clip by clip so only the
clips that really fail become error rows.

Each row's task (transcribe / transcribe_raw / translate / both, target language, keywords) is the
job's asr.* unless the row's task columns say otherwise; a row asking for something the backend cannot
do becomes a `task:` error row. Backends that take per-clip tasks get them with the clips; the others
keep the two-argument call.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from operators.asr import load_backend
from operators.asr.base import (TRANSLATE, TaskError, TaskSpec, accepts_tasks, capabilities, check_task,
                                normalize_keywords, normalize_language, parse_task)
from operators.config import SAMPLE_RATE, JobConfig
from operators.decode import from_pcm16, ray_node_id
from operators.metrics import JobMetrics
from operators.schema import ASR_OUT_SCHEMA, DECODE_PERF_COLUMNS, ERROR, OK, error_text
from operators.segment import file_bounds, stitch
from operators.words import KeptTime, attach as attach_words

log = logging.getLogger(__name__)

NO_SPACE_LANGUAGES = {"ja", "zh", "th", "lo", "my", "km"}


class BackendLoadError(RuntimeError):
    """The backend could not load on this worker (CUDA missing or out of memory, a driver mismatch...):
    one line, so the driver can end the job with it (pipelines.transcribe.actor_failure)."""


class ASRStage:
    """Runs in a threaded actor (asr.concurrent_batches calls at once): while one call holds the model,
    the others convert rows, cut segments and build output, so the model never waits for them. Model
    calls are serialised by a lock; the time inside them is the accelerator's busy time."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.started_at = time.time()
        self.actor = f"{ray_node_id() or 'local'}/{socket.gethostname()}:{os.getpid()}"
        self._model_lock = threading.Lock()
        self._local = threading.local()
        try:
            self.backend = load_backend(cfg.asr.backend, cfg.asr.model)
        except Exception as e:  # noqa: BLE001 - one line instead of a chained traceback per retry
            message = " ".join(str(e).split())[:400]
            raise BackendLoadError(f"the {cfg.asr.backend} backend could not load on {socket.gethostname()} "
                                   f"(pid {os.getpid()}): {type(e).__name__}: {message}") from None
        self.batch_size = cfg.asr.batch_size
        self.default_language = cfg.asr.model.language
        self.caps = capabilities(type(self.backend))
        self.takes_tasks = accepts_tasks(self.backend)
        self.metrics = JobMetrics(cfg.name)
        self.ready_at = time.time()

    def _task(self, r: dict, lang: str | None) -> TaskSpec:
        """The row's task: its task columns over the job's asr.*; TaskError if the backend cannot."""
        a = self.cfg.asr
        try:
            task = parse_task(r["task"]) if r.get("task") else a.task
        except ValueError as e:
            raise TaskError("task", str(e)) from None
        target = normalize_language(r.get("target_language")) or a.target_language
        try:
            keywords = (normalize_keywords(r["keywords"]) if r.get("keywords") is not None
                        else tuple(a.keywords))
        except ValueError as e:
            raise TaskError("keywords", str(e)) from None
        spec = TaskSpec(task, target if TRANSLATE in task.split("+") else None, keywords)
        check_task(self.backend.name, self.caps, spec, lang)
        return spec

    def _call(self, clips: list[np.ndarray], langs: list[str | None], specs: list[TaskSpec]) -> list:
        """One backend call under the model lock; its wall and thread-CPU time are accounted to this
        thread's current batch (busy time, and CPU that is the backend's rather than the actor's)."""
        acc = getattr(self._local, "acc", None)
        if acc is None:  # called outside __call__ (tests): account to a scratch batch
            acc = self._local.acc = _new_account()
        with self._model_lock:
            t0, c0 = time.time(), time.thread_time()
            try:
                if self.takes_tasks:
                    return list(self.backend.transcribe(clips, langs, tasks=specs))
                return list(self.backend.transcribe(clips, langs))
            finally:
                t1 = time.time()
                acc["busy"] += t1 - t0
                acc["backend_cpu"] += time.thread_time() - c0
                acc["first"] = min(acc["first"], t0)
                acc["last"] = max(acc["last"], t1)

    def _run(self, clips: list[np.ndarray], langs: list[str | None], specs: list[TaskSpec]) -> list:
        """Transcripts or exceptions, one per clip; a failed batch is retried one by one."""
        try:
            return self._call(clips, langs, specs)
        except Exception as batch_error:  # noqa: BLE001
            if len(clips) == 1:
                return [batch_error]
            log.warning("batch of %d clips failed (%s); retrying one by one", len(clips), batch_error)
            return [self._run([c], [l], [t])[0] for c, l, t in zip(clips, langs, specs)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        cpu0 = time.thread_time()
        self._local.acc = acc = _new_account()
        out = self._transcribe_batch(batch)
        n = max(1, len(out))
        cpu = max(0.0, time.thread_time() - cpu0 - acc["backend_cpu"])
        perf = {"perf_asr_busy_s": acc["busy"] / n, "perf_asr_cpu_s": cpu / n, "perf_actor": self.actor,
                "perf_actor_started": self.started_at, "perf_actor_ready": self.ready_at,
                "perf_call_first": acc["first"] if acc["busy"] else None,
                "perf_call_last": acc["last"] if acc["busy"] else None}
        for rec in out:
            rec.update(perf)
        return pa.Table.from_pylist(out, schema=ASR_OUT_SCHEMA)

    def _transcribe_batch(self, batch: pa.Table) -> list[dict]:
        rows = batch.to_pylist()
        specs: dict[int, TaskSpec] = {}
        task_errors: dict[int, TaskError] = {}
        for i, r in enumerate(rows):
            try:
                specs[i] = self._task(r, r["language"] or self.default_language)
            except TaskError as e:
                task_errors[i] = e
        clips: list[tuple[int, int, np.ndarray]] = []
        for i, r in enumerate(rows):
            if r["status"] != OK or i in task_errors:
                continue
            audio = from_pcm16(r["pcm16"])
            for j, (s, e) in enumerate(zip(r["seg_start"], r["seg_end"])):
                clips.append((i, j, audio[s:e]))
        order = sorted(range(len(clips)), key=lambda k: len(clips[k][2]))
        results: list = [None] * len(clips)
        for at in range(0, len(order), self.batch_size):
            chunk = order[at:at + self.batch_size]
            langs = [rows[clips[k][0]]["language"] or self.default_language for k in chunk]
            tasks = [specs[clips[k][0]] for k in chunk]
            audio = [clips[k][2] for k in chunk]
            started = time.perf_counter()
            for k, res in zip(chunk, self._run(audio, langs, tasks)):
                results[k] = res
            self.metrics.model_call(time.perf_counter() - started, len(chunk), self.batch_size,
                                    sum(len(a) for a in audio) / SAMPLE_RATE)
        per_row: dict[int, list] = {}
        for (i, j, _), res in zip(clips, results):
            per_row.setdefault(i, []).append(res)

        now = datetime.now(timezone.utc)
        out = []
        for i, r in enumerate(rows):
            lang = r["language"] or self.default_language
            spec = specs.get(i)
            rec = {
                "audio_id": r["audio_id"], "source_uri": r["source_uri"],
                "source_version": r.get("source_version"), "duration_s": r["duration_s"],
                "language": lang, "text": None, "segments": None, "reference": r["reference"],
                "task": spec.task if spec else r.get("task"),
                "target_language": spec.target_language if spec else r.get("target_language"),
                "translation": None,
                "model": self.backend.model_id, "model_revision": self.backend.revision,
                "backend": self.backend.name, "status": r["status"], "error": r["error"],
                "ctc_text": None, "agreement": None, "loop_suspected": None, "processed_at": now,
                **{k: r.get(k) for k in DECODE_PERF_COLUMNS},
            }
            if r["status"] == OK and i in task_errors:
                rec.update(status=ERROR, error=error_text("task", str(task_errors[i])))
            elif r["status"] == OK:
                res = per_row.get(i, [])
                failed = [x for x in res if isinstance(x, Exception)]
                if failed:
                    rec.update(status=ERROR, error=error_text("asr", f"{type(failed[0]).__name__}: {failed[0]}"))
                else:
                    joiner = _joiner(lang)
                    starts, ends = file_bounds(r["seg_start"], r["seg_end"], r.get("speech_start"),
                                               r.get("speech_end"))
                    rec["text"], rec["segments"] = stitch([x.text for x in res], starts, ends, joiner)
                    if spec.transcription is None:  # translation only: no transcript to show
                        rec["text"] = None
                        for seg in rec["segments"]:
                            seg["text"] = None
                    if spec.translates:  # joined by the target language's rule (no spaces for ja)
                        rec["translation"], tsegs = stitch(
                            [getattr(x, "translation", None) or "" for x in res], starts, ends,
                            _joiner(spec.target_language))
                        for seg, tseg in zip(rec["segments"], tsegs):
                            seg["translation"] = tseg["text"]
                    ctc = [x.ctc_text for x in res if x.ctc_text is not None]
                    if ctc:
                        rec["ctc_text"] = joiner.join(t for t in ctc if t)
                    loops = [x.loop_suspected for x in res if x.loop_suspected is not None]
                    if loops:
                        rec["loop_suspected"] = any(loops)
                    attach_words(rec, res, KeptTime(r["seg_start"], r.get("speech_start"),  # granite-plus:
                                                    r.get("speech_end"), SAMPLE_RATE))  # words, speakers
                    scores = [(x.agreement, e - s) for x, s, e in zip(res, r["seg_start"], r["seg_end"])
                              if x.agreement is not None]
                    if scores:  # duration-weighted over segments
                        total = sum(w for _, w in scores) or 1
                        rec["agreement"] = float(sum(a * w for a, w in scores) / total)
            out.append(rec)
        return out


def _new_account() -> dict:
    """One batch's model-call accounting: busy wall seconds, the backend's thread CPU, first/last call."""
    return {"busy": 0.0, "backend_cpu": 0.0, "first": float("inf"), "last": 0.0}


def _joiner(language: str | None) -> str:
    return "" if (language or "").split("-")[0] in NO_SPACE_LANGUAGES else " "
