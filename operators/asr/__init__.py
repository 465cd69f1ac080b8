"""Model backends behind one protocol (operators.asr.base.ASRBackend); one module each.

Backends are imported lazily so a missing optional dependency fails only when that backend is built,
with a message naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from operators.asr.base import ASRBackend
    from operators.config import ModelConfig

# name -> (module, class)
_BACKENDS = {
    "whisper": ("operators.asr.whisper", "WhisperBackend"),
    "granite-ar": ("operators.asr.granite_ar", "GraniteARBackend"),
    "granite-nar": ("operators.asr.granite_nar", "GraniteNarBackend"),
    "simulated": ("operators.asr.simulated", "SimulatedBackend"),
}


def available_backends() -> list[str]:
    return list(_BACKENDS)


def backend_class(name: str):
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {available_backends()}")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


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


def resolve_identity(name: str, model: "ModelConfig") -> tuple[str, str]:
    """(model id, revision) the backend will write, without loading weights (for resume)."""
    return backend_class(name).identity(model)
