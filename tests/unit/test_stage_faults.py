"""ASRStage under failing model calls, with in-memory test backends (no Ray, no model): device
out-of-memory (halving, the cap on padded audio, nothing of the failed call kept), sticky device errors
(the actor ends itself), a backend failing every clip alike (the job ends in one line), and staged
backends (only `run` holds the model lock and counts as busy)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import weakref

import numpy as np
import pyarrow as pa
import pytest
import torch

from operators.asr import errors
from operators.asr.base import TaskSpec, Transcript
from operators.asr.errors import is_out_of_memory, is_sticky_device_error
from operators.asr.stage import ASRStage, BackendLoadError
from operators.config import JobConfig
from operators.schema import ASR_OUT_SCHEMA, DECODED_SCHEMA, ERROR, OK

SR = 16_000


def _row(audio_id: str, n: int, segments: int = 1) -> dict:
    """A decoded row of `n` samples cut into `segments` equal segments; the samples are constant so a
    test backend can only tell clips apart by length."""
    cuts = [round(k * n / segments) for k in range(segments + 1)]
    return {"audio_id": audio_id, "source_uri": f"mem://{audio_id}.wav", "reference": None, "language": None,
            "duration_s": n / SR, "pcm16": np.full(n, 3000, "<i2").tobytes(),
            "seg_start": cuts[:-1], "seg_end": cuts[1:], "status": OK, "error": None}


def _table(lengths: list[int]) -> pa.Table:
    return pa.Table.from_pylist([_row(f"f{i}", n) for i, n in enumerate(lengths)], schema=DECODED_SCHEMA)


def _stage(backend, batch_size: int = 16, **asr) -> ASRStage:
    cfg = JobConfig.model_validate({"asr": {"backend": "simulated", "batch_size": batch_size, **asr}})
    return ASRStage(cfg, backend=backend)


class _Base:
    name, model_id, revision, max_clip_s = "test", "test-model", "1", 30.0

    def __init__(self):
        self.calls: list[int] = []   # clips per call

    def transcribe(self, audios, languages):
        self.calls.append(len(audios))
        return [Transcript(text=f"len{len(a)}") for a in audios]


class _Tensor:
    """Stands in for a device tensor the failed call held (a weakref says whether it was freed)."""


class OomBackend(_Base):
    """Raises torch.cuda.OutOfMemoryError whenever a call's padded audio (clips x longest) is over
    `budget` samples, holding a 'tensor' in the raising frame as a real model would."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget, self.ooms, self.released = budget, 0, 0
        self.held: list[weakref.ref] = []
        self.alive_at_release: list[int] = []

    def transcribe(self, audios, languages):
        cost = len(audios) * max(len(a) for a in audios)
        if cost > self.budget:
            self.calls.append(len(audios))
            activations = _Tensor()  # noqa: F841 - referenced by the traceback's frame
            self.held.append(weakref.ref(activations))
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {cost * 4} bytes")
        return super().transcribe(audios, languages)

    def release_memory(self):
        # what is still alive when the stage asks for memory back: nothing of the failed call may be
        self.released += 1
        self.alive_at_release.append(sum(r() is not None for r in self.held))


def _texts(out: pa.Table) -> list[str]:
    return out["text"].to_pylist()


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_halves_the_batch_caps_later_calls_and_keeps_nothing_of_the_failed_call():
    lengths = [(k % 32 + 1) * 1600 for k in range(7, 39)]           # 32 files, 0.1..3.2 s, shuffled
    budget = 16 * 16 * 1600                                         # 16 clips of 1.6 s fit, no more
    backend = OomBackend(budget)
    stage = _stage(backend, batch_size=16)
    out = stage(_table(lengths))
    assert out.schema.equals(ASR_OUT_SCHEMA)
    assert out["status"].to_pylist() == [OK] * 32, out["error"].to_pylist()
    assert _texts(out) == [f"len{n}" for n in lengths]              # each row its own clip, in order
    first = dict(ooms=backend.ooms, calls=len(backend.calls))
    assert 1 <= first["ooms"] <= 2
    assert first["calls"] <= 10, backend.calls                      # old code: 32 single-clip calls
    assert backend.released == backend.ooms                         # release_memory after each
    assert backend.alive_at_release == [0] * backend.ooms           # the failed call's 'tensors' freed
    assert stage.cost_cap is not None and stage.cost_cap <= budget
    perf = out.to_pylist()
    assert sum(r["perf_asr_ooms"] for r in perf) == pytest.approx(backend.ooms)
    splits = sum(r["perf_asr_splits"] for r in perf)
    assert splits >= backend.ooms and splits == pytest.approx(round(splits))
    assert {r["perf_asr_cost_cap"] for r in perf} == {stage.cost_cap}

    # a second table of the same shape: split before it is tried, never out of memory again
    out2 = stage(_table(lengths))
    assert _texts(out2) == [f"len{n}" for n in lengths]
    assert backend.ooms == first["ooms"]
    assert len(backend.calls) - first["calls"] <= 8, backend.calls[first["calls"]:]
    assert all(c > 1 for c in backend.calls[first["calls"]:])      # not batch 1 either
    assert sum(r["perf_asr_ooms"] for r in out2.to_pylist()) == 0
    assert sum(r["perf_asr_splits"] for r in out2.to_pylist()) >= 1


def test_a_single_clip_out_of_memory_is_that_files_error_only():
    backend = OomBackend(budget=5 * SR)
    stage = _stage(backend, batch_size=4)
    out = stage(_table([SR, 2 * SR, 6 * SR, SR])).to_pylist()
    assert [r["status"] for r in out] == [OK, OK, ERROR, OK]
    assert out[2]["error"].startswith("asr: OutOfMemoryError: CUDA out of memory")
    assert [r["text"] for r in out] == [f"len{SR}", f"len{2 * SR}", None, f"len{SR}"]
    assert backend.alive_at_release == [0] * backend.ooms


def test_summary_shows_out_of_memory_counts_and_the_cap():
    from operators.output.report import Summary, block_stats

    backend = OomBackend(budget=16 * 16 * 1600)
    stage = _stage(backend, batch_size=16)
    out = stage(_table([(k % 32 + 1) * 1600 for k in range(32)]))
    from operators.schema import PERF_COLUMNS

    summary = Summary()
    summary.add(block_stats(out.drop_columns(list(PERF_COLUMNS)), "p.parquet", out.select(list(PERF_COLUMNS))))
    d = summary.as_dict(1.0)
    assert d["asr_oom_errors"] == backend.ooms >= 1
    assert d["asr_oom_splits"] >= 1
    assert d["asr_frame_cap_s"] == pytest.approx(stage.cost_cap / SR)
    quiet = Summary()
    quiet.add(block_stats(out.drop_columns(list(PERF_COLUMNS)), "p.parquet", None))
    assert quiet.as_dict(1.0)["asr_frame_cap_s"] is None and quiet.as_dict(1.0)["asr_oom_splits"] == 0


# ---------------------------------------------------------------- sticky device errors


class StickyBackend(_Base):
    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error

    def transcribe(self, audios, languages):
        self.calls.append(len(audios))
        raise self.error


class _Died(Exception):
    pass


STICKY = [torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
          if hasattr(torch, "AcceleratorError") else
          RuntimeError("CUDA error: an illegal memory access was encountered"),
          RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`"),
          RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`")]


@pytest.mark.parametrize("error", STICKY, ids=lambda e: type(e).__name__ + ":" + str(e)[11:30])
def test_a_sticky_device_error_ends_the_actor_instead_of_making_error_rows(error, monkeypatch):
    backend = StickyBackend(error)
    stage = _stage(backend, batch_size=8)
    reasons = []

    def die(reason):
        reasons.append(reason)
        raise _Died(reason)

    monkeypatch.setattr(stage, "_die", die, raising=False)  # old code: no _die, rows became errors
    with pytest.raises(_Died):
        stage(_table([SR, 2 * SR, 3 * SR]))
    assert backend.calls == [3]                  # no clip-by-clip retries on a broken device
    assert len(reasons) == 1 and type(error).__name__ in reasons[0]


def test_die_exits_and_a_batch_that_keeps_killing_actors_ends_the_job(monkeypatch, tmp_path):
    import operators.asr.stage as stage_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise _Died(code)

    monkeypatch.setattr(stage_module.os, "_exit", fake_exit)
    batch = _table([SR, 2 * SR])
    for attempt in range(stage_module.STICKY_RETRIES):  # a fresh actor each time, the same batch
        stage = _stage(StickyBackend(STICKY[0]), batch_size=8)
        with pytest.raises(_Died):
            stage(batch)
    assert exits == [stage_module.STICKY_EXIT_CODE] * stage_module.STICKY_RETRIES
    stage = _stage(StickyBackend(STICKY[0]), batch_size=8)
    with pytest.raises(BackendLoadError, match="same batch in 3 actors"):
        stage(batch)
    stage = _stage(StickyBackend(STICKY[0]), batch_size=8)
    with pytest.raises(_Died):                             # another batch: the actor is replaced again
        stage(_table([SR]))


# ---------------------------------------------------------------- systemic failures


class FailingBackend(_Base):
    def __init__(self, fail):
        super().__init__()
        self.fail = fail

    def transcribe(self, audios, languages):
        self.calls.append(len(audios))
        for a in audios:
            message = self.fail(len(a))
            if message:
                raise ValueError(message)
        return [Transcript(text=f"len{len(a)}") for a in audios]


def test_every_clip_failing_alike_ends_the_job_in_one_line():
    from pipelines.transcribe import actor_failure

    backend = FailingBackend(lambda n: "kernel missing")
    stage = _stage(backend, batch_size=8)
    with pytest.raises(BackendLoadError) as info:
        stage(_table([SR, 2 * SR, 3 * SR]))
    line = actor_failure(info.value)
    assert line == str(info.value) and "\n" not in line
    assert "every clip of a batch of 3" in line and "ValueError: kernel missing" in line
    # as the driver sees it: Ray's text of the actor's traceback (no exception object to walk)
    wrapped = RuntimeError(
        "ray::MapWorker(MapBatches(ASRStage)).submit() (pid=1, ip=127.0.0.1)\n"
        '  File "operators/asr/stage.py", line 195, in _run\n'
        '    raise BackendLoadError(f"the {self.backend.name} backend failed on every clip of a batch of "\n'
        f"operators.asr.stage.BackendLoadError: {line}\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    assert actor_failure(wrapped) == line


def test_bad_clips_stay_error_rows():
    # one bad clip, or every clip bad but each in its own words: the clips' fault, not the backend's
    backend = FailingBackend(lambda n: "too long" if n == 3 * SR else None)
    out = _stage(backend, batch_size=8)(_table([SR, 3 * SR, 2 * SR])).to_pylist()
    assert [r["status"] for r in out] == [OK, ERROR, OK]
    assert out[1]["error"] == "asr: ValueError: too long"
    backend = FailingBackend(lambda n: f"clip of {n} samples is bad")
    out = _stage(backend, batch_size=8)(_table([SR, 3 * SR])).to_pylist()
    assert [r["status"] for r in out] == [ERROR, ERROR]
    # a lone clip failing is never systemic
    out = _stage(FailingBackend(lambda n: "kernel missing"), batch_size=8)(_table([SR])).to_pylist()
    assert out[0]["error"] == "asr: ValueError: kernel missing"


# ---------------------------------------------------------------- staged backends


class StagedBackend(_Base):
    """prepare / run / finish, with hooks a test sets to observe what runs under the model lock."""

    def __init__(self, prepare_s=0.0, run_s=0.0, finish_s=0.0):
        super().__init__()
        self.prepare_s, self.run_s, self.finish_s = prepare_s, run_s, finish_s
        self.hooks: dict = {}
        self.tasks_seen = []

    def prepare(self, audios, languages, tasks=None):
        self.tasks_seen.append(tasks)
        time.sleep(self.prepare_s)
        key = len(audios[0])
        self.hooks.get(("prepare", key), lambda: None)()
        return [len(a) for a in audios]

    def run(self, prepared):
        time.sleep(self.run_s)
        self.hooks.get(("run", prepared[0]), lambda: None)()
        self.calls.append(len(prepared))
        return prepared

    def finish(self, ran):
        time.sleep(self.finish_s)
        self.hooks.get(("finish", ran[0]), lambda: None)()
        return [Transcript(text=f"len{n}") for n in ran]

    def transcribe(self, audios, languages, tasks=None):
        return self.finish(self.run(self.prepare(audios, languages, tasks)))


def test_staged_prepare_and_finish_run_while_another_call_holds_the_model():
    """Call A's run waits until call B has prepared (B's prepare must not need the lock A holds);
    A's finish waits until B's run has begun (A's finish must not hold the lock B needs)."""
    backend = StagedBackend()
    stage = _stage(backend)
    ev = {k: threading.Event() for k in ("a_running", "b_prepared", "b_running", "a_finished")}
    timeouts = []

    def wait(name):
        if not ev[name].wait(5):
            timeouts.append(name)

    a, b = np.zeros(SR, np.float32), np.zeros(2 * SR, np.float32)
    backend.hooks = {
        ("run", SR): lambda: (ev["a_running"].set(), wait("b_prepared")),
        ("finish", SR): lambda: (wait("b_running"), ev["a_finished"].set()),
        ("prepare", 2 * SR): lambda: ev["b_prepared"].set(),
        ("run", 2 * SR): lambda: (ev["b_running"].set(), wait("a_finished")),
    }
    results = {}
    spec = [TaskSpec()]
    ta = threading.Thread(target=lambda: results.__setitem__("a", stage._call([a], [None], spec)))
    tb = threading.Thread(target=lambda: results.__setitem__("b", stage._call([b], [None], spec)))
    ta.start()
    assert ev["a_running"].wait(5)
    tb.start()
    ta.join(20)
    tb.join(20)
    assert not timeouts, timeouts
    assert [t.text for t in results["a"]] == [f"len{SR}"] and [t.text for t in results["b"]] == [f"len{2 * SR}"]
    assert backend.tasks_seen == [spec, spec]  # prepare takes tasks: it gets them


def test_staged_busy_time_is_the_run_only():
    backend = StagedBackend(prepare_s=0.2, run_s=0.05, finish_s=0.2)
    stage = _stage(backend)
    t0 = time.perf_counter()
    out = stage(_table([SR, 2 * SR, SR]))
    wall = time.perf_counter() - t0
    assert backend.calls == [3]
    assert _texts(out) == [f"len{SR}", f"len{2 * SR}", f"len{SR}"]
    busy = sum(out["perf_asr_busy_s"].to_pylist())
    assert 0.045 <= busy < 0.15, busy          # old code, all under the lock: >= 0.45
    assert wall >= 0.45
    first, last = out["perf_call_first"][0].as_py(), out["perf_call_last"][0].as_py()
    assert 0.045 <= last - first < 0.15


def test_staged_prepare_without_tasks_keeps_the_two_argument_call():
    class NoTasks(StagedBackend):
        def prepare(self, audios, languages):
            return super().prepare(audios, languages)

    backend = NoTasks()
    out = _stage(backend)(_table([SR, 2 * SR]))
    assert out["status"].to_pylist() == [OK, OK] and backend.tasks_seen == [None]


def test_an_out_of_memory_in_a_staged_run_is_halved_too():
    class OomStaged(StagedBackend):
        def run(self, prepared):
            if len(prepared) * max(prepared) > 4 * SR:
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
            return super().run(prepared)

    backend = OomStaged()
    stage = _stage(backend, batch_size=8)
    out = stage(_table([SR] * 8))
    assert out["status"].to_pylist() == [OK] * 8 and backend.calls == [4, 4]
    assert stage.cost_cap == 4 * SR


# ---------------------------------------------------------------- errors.py


def _wrapped(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("the backend's own wrapper") from e
    except RuntimeError as outer:
        return outer


OOMS = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                "capacity of 79.1 GiB of which 1.2 GiB is free."),
    torch.OutOfMemoryError("out of memory"),
    RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"),
    _wrapped(torch.cuda.OutOfMemoryError("CUDA out of memory.")),
    errors.OutOfMemoryError("CUDA out of memory."),
]
STICKIES = [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("CUDA error: misaligned address"),
    RuntimeError("CUDA error: an illegal instruction was encountered"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb)`"),
    RuntimeError("CUDA error: uncorrectable ECC error encountered"),
    RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable"),
    _wrapped(RuntimeError("CUDA error: an illegal memory access was encountered")),
]
if hasattr(torch, "AcceleratorError"):
    STICKIES.append(torch.AcceleratorError("CUDA error: invalid configuration argument"))
NEITHER = [ValueError("kernel missing"), MemoryError(), RuntimeError("shape mismatch: [2, 3] vs [3, 2]"),
           KeyError("out of memory"), RuntimeError("Expected all tensors to be on the same device")]


@pytest.mark.parametrize("e", OOMS, ids=repr)
def test_out_of_memory_forms(e):
    assert is_out_of_memory(e) and not is_sticky_device_error(e)


@pytest.mark.parametrize("e", STICKIES, ids=repr)
def test_sticky_device_error_forms(e):
    assert is_sticky_device_error(e) and not is_out_of_memory(e)


@pytest.mark.parametrize("e", NEITHER, ids=repr)
def test_ordinary_errors_are_neither(e):
    assert not is_out_of_memory(e) and not is_sticky_device_error(e)


def test_no_heavy_imports():
    """The stage and errors.py import neither torch nor ray, soundfile or soxr (a GPU check machine
    has torch only; the stage is driven there without Ray)."""
    code = ("import sys, operators.asr.errors, operators.asr.stage; "
            "print(sorted(m for m in ('torch', 'ray', 'soundfile', 'soxr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
