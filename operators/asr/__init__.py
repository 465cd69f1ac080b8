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
    "granite-plus": ("operators.asr.granite_plus", "GraniteSpeechPlusBackend"),
    "simulated": ("operators.asr.simulated", "SimulatedBackend"),
}


def available_backends() -> list[str]:
    """Built-in backends and those installed under the `granite_transcribe.backends` entry point group."""
    from operators.asr.plugins import entry_point_names

    return list(_BACKENDS) + [n for n in entry_point_names() if n not in _BACKENDS]


def builtin_backends() -> list[str]:
    return list(_BACKENDS)


def is_backend(name: str) -> bool:
    """A built-in or entry-point name, or a `module:Class` reference (checked when it is imported)."""
    from operators.asr.plugins import is_reference

    return name in available_backends() or is_reference(name)


def backend_class(name: str):
    if name in _BACKENDS:
        module, cls = _BACKENDS[name]
        return getattr(importlib.import_module(module), cls)
    from operators.asr.plugins import plugin_class

    return plugin_class(name, available_backends())


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
