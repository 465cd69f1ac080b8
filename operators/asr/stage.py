"""The ASR operator: a callable class for a Ray Data actor pool, wrapping any ASRBackend.

It receives a batch of decoded files, cuts their planned segments, sorts all segments by length and
runs them through the backend in sub-batches (cross-file batching), then stitches text back per file.
One output row per input row, in order. A failing sub-batch is retried clip by clip so only the
clips that really fail become error rows.

Failures of a model call (operators.asr.errors):
- device out of memory: the stage drops the exception (its traceback holds the call's tensors), asks
  the backend to `release_memory()`, and runs the batch in halves of its length order, down to single
  clips (a single clip that still runs out is that file's `asr:` error). It also remembers a cap on
  the padded audio of one call (clips x longest clip, in samples): after an out-of-memory error at cost
  C the cap is at most C // 2, for the rest of the actor's life, and a batch over the cap is split
  before it is tried, so batches as big as one that failed never run out again.
- a sticky device error (illegal memory access, device-side assert, ECC...): the device context is
  broken, so the actor process ends (one error line, exit status 70) and Ray Data starts a fresh actor
  and retries the batch. A batch that has already ended STICKY_RETRIES actors on this node ends the
  job instead (BackendLoadError), so a fault that some input triggers every time cannot loop.
- every clip of a batch (two or more) failing on its own with the same error as the batch: the fault is
  the backend's, not the clips'; the job ends with one line (BackendLoadError).

With segment.vad_on actor (operators.audio.vad.on_actor) the rows arrive whole and unplanned: the stage
finds speech over the batch's files at once (silero on this actor's GPU where it has one, outside the
model lock), plans each file's segments as decode would have (operators.audio.segment.plan_block), and
goes on as above with the kept audio; the CPU and wall time it took are the rows' perf_asr_vad_*.

Each row's task (transcribe / transcribe_raw / translate / both, target language, keywords) is the
job's asr.* unless the row's task columns say otherwise; a row asking for something the backend cannot
do becomes a `task:` error row. Backends that take per-clip tasks get them with the clips; the others
keep the two-argument call.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from operators.asr import load_backend
from operators.asr.base import (TRANSLATE, TaskError, TaskSpec, accepts_tasks, capabilities, check_task,
                                is_staged, normalize_keywords, normalize_language, parse_task)
from operators.asr.errors import (OutOfMemoryError, describe, drop_tracebacks, is_out_of_memory,
                                  is_sticky_device_error)
from operators.config import SAMPLE_RATE, JobConfig
from operators.metrics import JobMetrics
from operators.schema import ASR_OUT_SCHEMA, DECODE_PERF_COLUMNS, ERROR, OK, error_text
from operators.audio.segment import file_bounds, plan_block, stitch
from operators.audio.vad import detector_device, make_detector, on_actor
from operators.asr.words import KeptTime, attach as attach_words

log = logging.getLogger(__name__)

NO_SPACE_LANGUAGES = {"ja", "zh", "th", "lo", "my", "km"}
# segment.vad_on actor: files go to the detector in groups of at most ~30 min of audio (a batch of 256
# hour-long files would otherwise hold the detector's padded copies of all of them at once)
VAD_GROUP_SAMPLES = 30 * 60 * SAMPLE_RATE
STICKY_EXIT_CODE = 70  # EX_SOFTWARE: the actor ended itself after a sticky device error
STICKY_RETRIES = 2     # actors one batch may end on a node before the job ends instead


class BackendLoadError(RuntimeError):
    """The backend could not load on this worker (CUDA missing or out of memory, a driver mismatch...),
    or it fails whatever the input (every clip of a batch with the same error; a device fault that
    follows one batch from actor to actor): one line, so the driver can end the job with it
    (pipelines.transcribe.actor_failure). Raised from a call rather than from loading, Ray hands the
    driver only its text, which actor_failure finds by this class's name: keep the name."""


class ASRStage:
    """Runs in a threaded actor (asr.concurrent_batches calls at once): while one call holds the model,
    the others convert rows, cut segments and build output, so the model never waits for them. Model
    calls are serialised by a lock; the time inside them is the accelerator's busy time (for a staged
    backend only its `run`: `prepare` and `finish` run outside the lock)."""

    def __init__(self, cfg: JobConfig, backend=None):
        """`backend`: an already built backend object to use instead of loading asr.backend (a check
        script driving the stage without Ray)."""
        self.cfg = cfg
        self.started_at = time.time()
        self.actor = f"{_ray_node_id() or 'local'}/{socket.gethostname()}:{os.getpid()}"
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()  # the cap below, shared by the actor's threads
        self._local = threading.local()
        if backend is not None:
            self.backend = backend
        else:
            try:
                self.backend = load_backend(cfg.asr.backend, cfg.asr.model)
            except Exception as e:  # noqa: BLE001 - one line instead of a chained traceback per retry
                message = " ".join(str(e).split())[:400]
                raise BackendLoadError(f"the {cfg.asr.backend} backend could not load on "
                                       f"{socket.gethostname()} (pid {os.getpid()}): {type(e).__name__}: "
                                       f"{message}") from None
        self.batch_size = cfg.asr.batch_size
        self.default_language = cfg.asr.model.language
        self.caps = capabilities(type(self.backend))
        self.takes_tasks = accepts_tasks(self.backend)
        self.staged = is_staged(self.backend)
        self.prepare_takes_tasks = self.staged and _has_parameter(self.backend.prepare, "tasks")
        # padded audio one call may hold (clips x longest clip, samples); None: no limit seen yet
        self.cost_cap: int | None = None
        self.metrics = JobMetrics(cfg.name)
        self.detector = self.vad_where = None
        if on_actor(cfg.segment):  # segment.vad_on actor: the rows come whole, unplanned
            device = detector_device(cfg.asr.model.device)
            if device == "cpu" and cfg.asr.num_gpus:
                log.warning("segment.vad_on is actor but this ASR actor sees no CUDA device: voice activity "
                            "runs on its CPU")
            self._load_detector(device)
        self.ready_at = time.time()

    def _load_detector(self, device: str) -> None:
        """The voice-activity detector on `device`; where it cannot load on cuda, on this actor's CPU."""
        seg = self.cfg.segment
        try:
            self.detector = make_detector(seg.vad, seg, device=device, threads=0)
        except Exception as e:  # noqa: BLE001 - the detector on CPU rather than no actor at all
            if device == "cpu":
                raise
            log.warning("the %s detector could not load on %s (%s): voice activity runs on this actor's CPU",
                        seg.vad, device, describe(e, 300))
            device = "cpu"
            self.detector = make_detector(seg.vad, seg, device=device, threads=0)
        self.vad_where = f"{self.detector.name} on ASR actor {device}"

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
        """One backend call; only its device work holds the model lock, and the wall and thread-CPU
        time under the lock are accounted to this thread's current batch (busy time, and CPU that is
        the backend's rather than the actor's). A staged backend (base.StagedBackend) prepares and
        finishes outside the lock, while another thread's call runs; any other backend transcribes
        under it."""
        acc = self._acc()
        if self.staged:
            if self.prepare_takes_tasks:
                prepared = self.backend.prepare(clips, langs, tasks=specs)
            else:
                prepared = self.backend.prepare(clips, langs)
            ran = self._locked(acc, self.backend.run, prepared)
            del prepared
            return list(self.backend.finish(ran))
        if self.takes_tasks:
            return list(self._locked(acc, self.backend.transcribe, clips, langs, tasks=specs))
        return list(self._locked(acc, self.backend.transcribe, clips, langs))

    def _acc(self) -> dict:
        """This thread's current batch's accounting (a scratch one outside __call__, as in tests)."""
        acc = getattr(self._local, "acc", None)
        if acc is None:
            acc = self._local.acc = _new_account()
        return acc

    def _locked(self, acc: dict, fn, *args, **kwargs):
        with self._model_lock:
            t0, c0 = time.time(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.time()
                acc["busy"] += t1 - t0
                acc["backend_cpu"] += time.thread_time() - c0
                acc["first"] = min(acc["first"], t0)
                acc["last"] = max(acc["last"], t1)

    def _run(self, clips: list[np.ndarray], langs: list[str | None], specs: list[TaskSpec]) -> list:
        """Transcripts or exceptions, one per clip (clips in length order). A batch over the cost cap
        is split in halves untried; one that runs out of device memory is split in halves after the
        cache is freed; one that fails otherwise is retried one by one (BackendLoadError when every
        clip fails alone with the batch's own error); a sticky device error ends the actor."""
        n = len(clips)
        cost = _padded_cost(clips)
        cap = self.cost_cap
        if n > 1 and cap is not None and cost > cap:
            return self._halves(clips, langs, specs)
        oom = sticky = error = None
        try:
            return self._call(clips, langs, specs)
        except Exception as e:  # noqa: BLE001
            drop_tracebacks(e)  # the frames hold the failed call's tensors
            if is_out_of_memory(e):
                oom = describe(e)  # a string: nothing of the exception outlives this block
            elif is_sticky_device_error(e):
                sticky = describe(e)
            else:
                error = e
        if sticky is not None:
            self._die(f"sticky device error in a call of {n} clips: {sticky}")
            raise BackendLoadError(sticky)  # _die returns only where a test replaced it
        if oom is not None:
            self._out_of_memory(cost, n, oom)
            if n == 1:
                return [OutOfMemoryError(oom.split(": ", 1)[-1])]
            return self._halves(clips, langs, specs)
        if n == 1:
            return [error]
        log.warning("batch of %d clips failed (%s); retrying one by one", n, describe(error, 200))
        results = [self._run([c], [l], [t])[0] for c, l, t in zip(clips, langs, specs)]
        same = _signature(error)
        if all(isinstance(r, Exception) and _signature(r) == same for r in results):
            raise BackendLoadError(f"the {self.backend.name} backend failed on every clip of a batch of "
                                    f"{n}, alone too, with the same error: {describe(error)}")
        return results

    def _halves(self, clips: list, langs: list, specs: list) -> list:
        """The batch as two calls: the shorter half of its length order, then the longer."""
        self._acc()["splits"] += 1
        mid = len(clips) // 2
        return (self._run(clips[:mid], langs[:mid], specs[:mid])
                + self._run(clips[mid:], langs[mid:], specs[mid:]))

    def _out_of_memory(self, cost: int, n: int, message: str) -> None:
        """After an out-of-memory error at padded cost `cost` (outside the except block): free the
        backend's cached device memory and lower the cap to cost // 2."""
        self._acc()["ooms"] += 1
        release = getattr(self.backend, "release_memory", None)
        if callable(release):
            try:
                release()
            except Exception as e:  # noqa: BLE001 - freeing memory must not fail the batch
                log.warning("release_memory failed: %s", describe(e, 200))
        new = max(1, cost // 2)
        with self._state_lock:
            lowered = self.cost_cap is None or new < self.cost_cap
            if lowered:
                self.cost_cap = new
        if lowered:
            log.warning("out of device memory on a call of %d clips (%.1f s of padded audio): calls are "
                        "now capped at %.1f s of padded audio (clips x longest clip) on this actor; %s",
                        n, cost / SAMPLE_RATE, new / SAMPLE_RATE, message[:300])
        self.metrics.out_of_memory()

    def _die(self, reason: str) -> None:
        """End this actor's process: its device context is broken, and Ray Data replaces the actor and
        retries its batches. A batch that already ended STICKY_RETRIES actors on this node (a fault the
        input triggers every time) raises BackendLoadError instead, which ends the job."""
        key = getattr(self._local, "batch_key", None)
        seen = _note_sticky(self.cfg.name, key) if key else 0
        if seen > STICKY_RETRIES:
            raise BackendLoadError(f"the {self.backend.name} backend hit a device error on the same batch "
                                    f"in {seen} actors: {reason}")
        log.error("ASR actor %s ends itself (Ray Data starts a fresh one and retries its batches): %s",
                  self.actor, reason)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(STICKY_EXIT_CODE)

    def __call__(self, batch: pa.Table) -> pa.Table:
        cpu0 = time.thread_time()
        self._local.acc = acc = _new_account()
        self._local.batch_key = _batch_key(batch)
        out = self._transcribe_batch(batch)
        n = max(1, len(out))
        cpu = max(0.0, time.thread_time() - cpu0 - acc["backend_cpu"])
        perf = {"perf_asr_busy_s": acc["busy"] / n, "perf_asr_cpu_s": cpu / n, "perf_actor": self.actor,
                "perf_actor_started": self.started_at, "perf_actor_ready": self.ready_at,
                "perf_call_first": acc["first"] if acc["busy"] else None,
                "perf_call_last": acc["last"] if acc["busy"] else None,
                "perf_asr_vad_cpu_s": acc["vad_cpu"] / n, "perf_asr_vad_s": acc["vad_s"] / n,
                "perf_asr_ooms": acc["ooms"] / n, "perf_asr_splits": acc["splits"] / n,
                "perf_asr_cost_cap": self.cost_cap}
        for rec in out:
            rec.update(perf)
        return pa.Table.from_pylist(out, schema=ASR_OUT_SCHEMA)

    def _batched(self, owners: list[int], audios: list, rows: list[dict], specs: dict) -> list:
        """Results for `audios` in order (`owners[k]`: the row audio k is from), decoded length-sorted
        in model calls of up to batch_size, each counted in the metrics."""
        out: list = [None] * len(audios)
        order = sorted(range(len(audios)), key=lambda k: len(audios[k]))
        for at in range(0, len(order), self.batch_size):
            chunk = order[at:at + self.batch_size]
            langs = [rows[owners[k]]["language"] or self.default_language for k in chunk]
            tasks = [specs[owners[k]] for k in chunk]
            audio = [audios[k] for k in chunk]
            started = time.perf_counter()
            for k, res in zip(chunk, self._run(audio, langs, tasks)):
                out[k] = res
            self.metrics.model_call(time.perf_counter() - started, len(chunk), self.batch_size,
                                    sum(len(a) for a in audio) / SAMPLE_RATE)
        return out

    def _transcribe_batch(self, batch: pa.Table) -> list[dict]:
        rows = batch.to_pylist()
        specs: dict[int, TaskSpec] = {}
        task_errors: dict[int, TaskError] = {}
        for i, r in enumerate(rows):
            try:
                specs[i] = self._task(r, r["language"] or self.default_language)
            except TaskError as e:
                task_errors[i] = e
        ok = [i for i, r in enumerate(rows) if r["status"] == OK and i not in task_errors]
        if self.detector is not None:   # segment.vad_on actor
            audio_of = self._find_speech(rows, ok)
        else:
            audio_of = {i: _from_pcm16(rows[i]["pcm16"]) for i in ok}
        clips: list[tuple[int, int, np.ndarray]] = []
        for i, audio in audio_of.items():
            r = rows[i]
            for j, (s, e) in enumerate(zip(r["seg_start"], r["seg_end"])):
                clips.append((i, j, audio[s:e]))
        results = self._batched([i for i, _, _ in clips], [a for _, _, a in clips], rows, specs)
        per_row: dict[int, list] = {}
        for (i, j, _), res in zip(clips, results):
            per_row.setdefault(i, []).append(res)
        coverage = self._coverage(rows, clips, per_row, specs)  # dropped speech: measured, retried once

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
                    if i in coverage:
                        rec["coverage"], rec["segment_coverage"], counts = coverage[i]
                        rec["perf_redecoded_segments"] = counts["redecoded_segments"]
                        rec["perf_redecode_audio_s"] = counts["redecode_audio_s"]
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

    def _find_speech(self, rows: list[dict], ok: list[int]) -> dict[int, np.ndarray]:
        """segment.vad_on actor: voice activity over the batch's whole files (`ok`), a group of up to
        VAD_GROUP_SAMPLES at a time (on this actor's GPU where it has one), then each file's plan, as
        decode would have made it (segment.plan_block). Fills the rows' speech and segment fields;
        returns the kept audio by row (only the group in hand is held whole); a planning failure is that
        row's `segment:` error."""
        acc = self._acc()
        kept: dict[int, np.ndarray] = {}
        group, size = [], 0
        for k, i in enumerate(ok):
            group.append(i)
            size += len(rows[i]["pcm16"] or b"") // 2
            if size >= VAD_GROUP_SAMPLES or k == len(ok) - 1:
                self._plan_group(rows, group, kept, acc)
                group, size = [], 0
        for r in rows:
            r["perf_vad"] = self.vad_where
        return kept

    def _plan_group(self, rows: list[dict], group: list[int], kept: dict, acc: dict) -> None:
        """`_find_speech` for one group of rows: the detector (on cuda; where it fails there, once more
        and from then on on this actor's CPU), the plans, the kept audio into `kept`."""
        audios = [_from_pcm16(rows[i]["pcm16"]) for i in group]
        try:
            plans, vad_cpu, vad_s = plan_block(audios, self.cfg.segment, self.detector)
        except Exception as e:  # noqa: BLE001 - a device fault in the detector: once more on the CPU
            if not self.vad_where.endswith(" cuda"):
                raise
            drop_tracebacks(e)
            log.warning("voice activity failed on cuda (%s); it runs on this actor's CPU from now on",
                        describe(e, 300))
            self._load_detector("cpu")
            plans, vad_cpu, vad_s = plan_block(audios, self.cfg.segment, self.detector)
        del audios
        acc["vad_cpu"] += vad_cpu
        acc["vad_s"] += vad_s
        for i, plan in zip(group, plans):
            r = rows[i]
            if isinstance(plan, Exception):
                r.update(status=ERROR, error=error_text("segment", f"{type(plan).__name__}: {plan}"))
                continue
            (r["speech_start"], r["speech_end"], r["seg_start"], r["seg_end"]), kept[i] = plan
            r["perf_speech_s"] = len(kept[i]) / SAMPLE_RATE

    def _coverage(self, rows: list[dict], clips: list, per_row: dict[int, list], specs: dict) -> dict:
        """Dropped speech (operators.asr.coverage): each ok row's segments against the speech voice activity
        found in them (the transcript's times where the backend gives them, else its words per second
        against the file's own rate). A segment that lost speech is decoded a second time, once: all of
        the batch's second tries length-sorted and batched like the first pass, through the same
        retries; a result is replaced only where the second try covers more. Updates `per_row`;
        returns per row (file coverage, per-segment coverage, counts)."""
        from operators.asr import coverage as cv

        if not cv.enabled(self.backend) or self.cfg.segment.vad == "none":  # none: speech unknown
            return {}
        audio_of: dict[int, list] = {}
        for i, _, a in clips:
            audio_of.setdefault(i, []).append(a)
        pad = int(self.cfg.segment.pad_s * SAMPLE_RATE)
        order, items = [], []
        for i, res in per_row.items():
            if i not in specs or specs[i].transcription is None or any(isinstance(x, Exception) for x in res):
                continue  # failed, or translation only (no transcript to measure)
            r, spec = rows[i], specs[i]
            joiner = _joiner(r["language"] or self.default_language)
            speech = [cv.speech_spans(s, e, r.get("speech_start"), r.get("speech_end"), pad)
                      for s, e in zip(r["seg_start"], r["seg_end"])]
            items.append(cv.FileItem(audio_of[i], res, speech, spaced=joiner == " ", joiner=joiner,
                                     recover=spec.task in ("transcribe", "transcribe_raw")))
            order.append(i)

        def call(owners: list[int], audios: list) -> list:
            return self._batched([order[o] for o in owners], audios, rows, specs)

        results, covs, counts = cv.recover_batch(call, items, SAMPLE_RATE)
        found = {}
        for i, res, c, n in zip(order, results, covs, counts):
            per_row[i] = res
            found[i] = (cv.file_coverage(c), [x.coverage for x in c], n)
        return found


def _new_account() -> dict:
    """One batch's model-call accounting: busy wall seconds, the backend's thread CPU, first/last call,
    out-of-memory errors caught, halvings (after one, or before a call over the cap), and the CPU and wall
    seconds of voice activity run here (segment.vad_on actor)."""
    return {"busy": 0.0, "backend_cpu": 0.0, "first": float("inf"), "last": 0.0, "ooms": 0, "splits": 0,
            "vad_cpu": 0.0, "vad_s": 0.0}


def _padded_cost(clips: list) -> int:
    """Samples a call pads its batch to: clips x the longest clip."""
    return len(clips) * max((len(c) for c in clips), default=0)


def _signature(e: BaseException) -> tuple[str, str]:
    return type(e).__name__, str(e)


def _has_parameter(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _batch_key(batch: pa.Table) -> str | None:
    """A batch's identity across actors (its audio ids), for counting the actors it ended."""
    try:
        ids = batch.column("audio_id").to_pylist()
    except (KeyError, AttributeError):
        return None
    return hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def _note_sticky(job: str, key: str) -> int:
    """Record on this node that batch `key` met a sticky device error; how many times it has in this
    job (this one included). The count lives in a file under the temp directory, which outlives the
    actor; the file is per job name, Ray session and Ray job."""
    try:  # the Ray session (a cluster's start) and job: job ids restart at 01000000 on a new cluster
        import ray

        if ray.is_initialized():
            session = getattr(getattr(ray._private.worker.global_worker, "node", None), "session_name", "")
            job = f"{job}-{session}-{ray.get_runtime_context().get_job_id()}"
    except Exception:  # noqa: BLE001 - no Ray (a check script): the job name alone
        pass
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in job)[:80]
    path = os.path.join(tempfile.gettempdir(), f"asr-sticky-{safe}-{os.getuid()}.log")
    try:
        with open(path, "a+") as f:
            f.write(key + "\n")
            f.flush()
            f.seek(0)
            return sum(1 for line in f if line.strip() == key)
    except OSError:
        return 1


def _ray_node_id() -> str | None:
    try:
        from operators.audio.decode import ray_node_id  # imports soundfile; absent where only torch is
    except ImportError:
        return None
    return ray_node_id()


def _from_pcm16(data: bytes) -> np.ndarray:
    try:
        from operators.audio.decode import from_pcm16
    except ImportError:  # no soundfile / soxr (a GPU check machine): the same conversion
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    return from_pcm16(data)


def _joiner(language: str | None) -> str:
    return "" if (language or "").split("-")[0] in NO_SPACE_LANGUAGES else " "
