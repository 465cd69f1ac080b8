"""The backend registry: built-in backends by module name (imported only when one is asked for, so a
missing optional dependency fails only then, naming the extra to install), and user backends as
plugins: `asr.backend: mypkg.module:Class`, or a name registered under the `granite_transcribe.backends`
entry point group (pyproject: `[project.entry-points."granite_transcribe.backends"]
mybackend = "mypkg.module:Class"`). A plugin class is checked like the built-ins: it must implement the
protocol of operators.asr.base (name, max_clip_s, identity(cfg), transcribe) and declare only task parts,
languages and translation pairs the stage knows; config validation then asks its capabilities like any
backend's. Nothing here imports a backend or a plugin until it is asked for; config.py imports this
module, which imports only operators.tasks. No Ray in here.
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache

from operators.tasks import KINDS, TRANSLATE, capabilities

GROUP = "granite_transcribe.backends"
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# name -> (module, class); the modules are imported on first use (backend_class)
_BACKENDS = {
    "whisper": ("operators.asr.whisper", "WhisperBackend"),
    "granite-ar": ("operators.asr.granite_ar", "GraniteARBackend"),
    "granite-nar": ("operators.asr.granite_nar", "GraniteNarBackend"),
    "granite-plus": ("operators.asr.granite_plus", "GraniteSpeechPlusBackend"),
    "simulated": ("operators.asr.simulated", "SimulatedBackend"),
}


def available_backends() -> list[str]:
    """Built-in backends and those installed under the `granite_transcribe.backends` entry point group."""
    return list(_BACKENDS) + [n for n in entry_point_names() if n not in _BACKENDS]


def builtin_backends() -> list[str]:
    return list(_BACKENDS)


def is_backend(name: str) -> bool:
    """A built-in or entry-point name, or a `module:Class` reference (checked when it is imported)."""
    return name in available_backends() or is_reference(name)


def backend_class(name: str):
    if name in _BACKENDS:
        module, cls = _BACKENDS[name]
        return getattr(importlib.import_module(module), cls)
    return plugin_class(name, available_backends())


def is_reference(name: str) -> bool:
    return bool(_REFERENCE.match(name or ""))


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    from importlib.metadata import entry_points

    try:
        return {ep.name: ep for ep in entry_points(group=GROUP)}
    except Exception:  # noqa: BLE001 - a broken distribution must not break the built-ins
        return {}


def entry_point_names() -> list[str]:
    return sorted(_entry_points())


def plugin_class(name: str, known: list[str]):
    """The class behind an entry point name or a `module:Class` reference, checked; ValueError names
    what is wrong and the fix."""
    eps = _entry_points()
    if name in eps:
        where = f"entry point {name!r} ({eps[name].value})"
        try:
            cls = eps[name].load()
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"backend {where} does not load: {type(e).__name__}: {e}") from None
    elif is_reference(name):
        where = f"plugin {name!r}"
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"backend {where}: cannot import {module!r} ({e}); install the package that "
                             "provides it or fix the module path") from None
        cls = obj
        for part in attr.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                raise ValueError(f"backend {where}: {module!r} has no {attr!r}; check the class name")
    else:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(known)}, a name registered under "
                         f"the {GROUP!r} entry point group, or a plugin class as module:Class")
    check_plugin(cls, where)
    return cls


def check_plugin(cls, where: str) -> None:
    """The built-in backends' contract, checked on the class (no weights loaded)."""
    if not isinstance(cls, type):
        raise ValueError(f"backend {where} is not a class")
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("a `name` string attribute")
    if not isinstance(getattr(cls, "max_clip_s", None), (int, float)):
        problems.append("a `max_clip_s` number (longest clip it accepts, seconds)")
    if not callable(getattr(cls, "transcribe", None)):
        problems.append("a `transcribe(audios, languages[, tasks])` method")
    if not callable(getattr(cls, "identity", None)):
        problems.append("an `identity(cfg) -> (model, revision)` static or class method")
    if problems:
        raise ValueError(f"backend {where} does not implement the backend protocol (operators/asr/base.py): "
                         f"it needs {'; '.join(problems)}")
    caps = capabilities(cls)
    unknown = sorted(set(caps.tasks) - set(KINDS) - {TRANSLATE})
    if unknown:
        raise ValueError(f"backend {where} declares unknown task parts {unknown}; task parts are "
                         f"{', '.join(KINDS + (TRANSLATE,))}")
    if TRANSLATE in caps.tasks and not caps.translation_pairs:
        raise ValueError(f"backend {where} declares 'translate' but no translation_pairs")
