"""What kind of failure a backend call raised, without importing torch (or anything else heavy).

- out of memory (`is_out_of_memory`): the call asked for more device memory than was free. The stage
  frees the cache and runs the batch in halves; later batches as big are split before they are tried.
- sticky device error (`is_sticky_device_error`): the device context is broken (an illegal memory
  access, a device-side assert, an ECC error, a device gone...). Every later call in this process would
  fail the same way, so the stage ends the actor process and Ray Data starts a fresh one.

Both are recognised by class names along type(e).__mro__ and by message text (torch raises plain
RuntimeErrors for many of these, cuBLAS and the CUDA runtime word them their own way); torch's own
classes are checked only where torch is already imported.
"""

from __future__ import annotations

import sys

# class names (any module) that mean device out-of-memory: torch.OutOfMemoryError (= torch.cuda.
# OutOfMemoryError); the same name is used by jax/xla wrappers and by the stage's own record below
_OOM_CLASSES = frozenset({"OutOfMemoryError"})
# "out of memory" together with one of these words: the caching allocator ("CUDA out of memory. Tried
# to allocate..."), the CUDA runtime or driver ("CUDA error: out of memory", cudaErrorMemoryAllocation),
# ROCm ("HIP out of memory")
_OOM_WORDS = ("cuda", "hip", "gpu", "device", "cudnn", "cublas")
_OOM_TEXT = (
    "cublas_status_alloc_failed",     # cuBLAS workspace
    "cudnn_status_alloc_failed",
    "cufft_alloc_failed",
)

# class names that mean the device context is broken: torch.AcceleratorError (torch >= 2.8, raised by
# C10_CUDA_CHECK for CUDA runtime errors)
_STICKY_CLASSES = frozenset({"AcceleratorError"})
_STICKY_TEXT = (
    "illegal memory access",           # cudaErrorIllegalAddress
    "device-side assert",              # cudaErrorAssert
    "unspecified launch failure",      # cudaErrorLaunchFailure
    "misaligned address",              # cudaErrorMisalignedAddress
    "an illegal instruction",          # cudaErrorIllegalInstruction
    "illegal address",
    "invalid program counter",         # cudaErrorInvalidPc
    "hardware stack error",            # cudaErrorHardwareStackError
    "launch timed out",                # cudaErrorLaunchTimeout (watchdog)
    "uncorrectable ecc",               # cudaErrorECCUncorrectable
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "device(s) is/are busy or unavailable",  # cudaErrorDevicesUnavailable
    "devices unavailable",
    "nvml_success == r internal assert failed",  # the driver lost the device mid-run
    "gpu has fallen off the bus",
)


def _chain(e: BaseException):
    """e, then its causes and contexts (a backend may wrap the torch error in its own)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _class_names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _torch_class(name: str):
    torch = sys.modules.get("torch")
    cls = getattr(torch, name, None) if torch is not None else None
    return cls if isinstance(cls, type) else None


def _text(e: BaseException) -> str:
    try:
        return str(e).lower()
    except Exception:  # noqa: BLE001 - a broken __str__ is not a device error
        return ""


def _is_oom_one(e: BaseException) -> bool:
    torch_oom = _torch_class("OutOfMemoryError")
    if torch_oom is not None and isinstance(e, torch_oom):
        return True
    if _class_names(e) & _OOM_CLASSES:
        return True
    text = _text(e)
    if "out of memory" in text and any(w in text for w in _OOM_WORDS):
        return True
    return any(t in text for t in _OOM_TEXT)


def is_out_of_memory(e: BaseException) -> bool:
    """Device out-of-memory: torch.OutOfMemoryError (torch.cuda.OutOfMemoryError), or a RuntimeError
    saying "CUDA out of memory" / "CUDA error: out of memory" / CUBLAS_STATUS_ALLOC_FAILED..., on `e`
    or on an exception it wraps. Python's own MemoryError (host memory) is not."""
    return any(_is_oom_one(x) for x in _chain(e))


def is_sticky_device_error(e: BaseException) -> bool:
    """A broken device context (never an out-of-memory error): torch.AcceleratorError, or a message of
    the CUDA runtime, cuBLAS or the driver that leaves every later call in the process failing."""
    if is_out_of_memory(e):
        return False
    accel = _torch_class("AcceleratorError")
    for x in _chain(e):
        if (accel is not None and isinstance(x, accel)) or _class_names(x) & _STICKY_CLASSES:
            return True
        text = _text(x)
        if any(t in text for t in _STICKY_TEXT):
            return True
    return False


class OutOfMemoryError(RuntimeError):
    """What the stage keeps for a single clip that ran out of device memory: the message only (the
    original exception and its traceback, which hold the failed call's tensors, are dropped)."""


def drop_tracebacks(e: BaseException) -> None:
    """Clear the tracebacks of `e` and of what it wraps, so no frame (and no tensor in one) survives."""
    for x in _chain(e):
        x.__traceback__ = None


def describe(e: BaseException, limit: int = 400) -> str:
    """'Type: message' on one line, at most `limit` characters of message."""
    return f"{type(e).__name__}: {' '.join(_text_raw(e).split())[:limit]}"


def _text_raw(e: BaseException) -> str:
    try:
        return str(e)
    except Exception:  # noqa: BLE001
        return ""
