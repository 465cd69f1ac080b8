"""Model backends behind one protocol (operators.asr.base.ASRBackend); one module each, with the ASR
stage (stage), coverage (coverage) and word times (words). The registry itself lives in
operators.backends (config validation needs it without importing a backend); its functions are
re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from operators.backends import available_backends, backend_class, builtin_backends, is_backend  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from operators.asr.base import ASRBackend
    from operators.config import ModelConfig


def load_backend(name: str, model: "ModelConfig") -> "ASRBackend":
    """Build and load a backend (weights loaded here, once)."""
    return backend_class(name)(model)


def check_model(name: str, model: "ModelConfig") -> str:
    """Check the backend's checkpoint on the driver before any Ray work (operators.asr.checks): one
    ModelCheckError line on failure; what was found otherwise. A backend without `check` passes."""
    from operators.asr.checks import ModelCheckError

    try:
        cls = backend_class(name)
    except ImportError as e:
        raise ModelCheckError(str(e)) from None
    check = getattr(cls, "check", None)
    return check(model) if check else f"{name}: no checkpoint check"


def segment_lengths(name: str) -> tuple[float, float]:
    """(target, maximum) segment seconds the backend declares (`segment_target_s`, `segment_max_s`):
    speech regions are joined up to the target; only a region over the maximum is cut inside."""
    cls = backend_class(name)
    return float(getattr(cls, "segment_target_s", 30.0)), float(getattr(cls, "segment_max_s", 30.0))


def resolve_identity(name: str, model: "ModelConfig") -> tuple[str, str]:
    """(model id, revision) the backend will write, without loading weights (for resume)."""
    return backend_class(name).identity(model)
