"""The task vocabulary, shared by config validation and the backends: task parts and names, language
codes, keywords, what a backend class declares it can do (`capabilities`), and the check of a task
against it. No model code and nothing from operators.asr here: config.py imports this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

# task parts; a job or row asks for a transcription kind, a translation, or both
TRANSCRIBE = "transcribe"            # punctuated, capitalised transcript where the model can
TRANSCRIBE_RAW = "transcribe_raw"    # the model's plain transcript (no punctuation prompt)
TRANSLATE = "translate"              # speech translation into `target_language`
SPEAKERS = "speakers"                # speaker-attributed transcript (granite-plus: `[Speaker N]:` turns)
TIMESTAMPS = "timestamps"            # word-level end times (granite-plus: `word [T:N]`)
KINDS = (TRANSCRIBE, TRANSCRIBE_RAW, SPEAKERS, TIMESTAMPS)  # transcription kinds: one per task
TASKS = ("transcribe", "transcribe_raw", "translate", "transcribe+translate", "transcribe_raw+translate",
         "speakers", "timestamps")

LANGUAGE_ALIASES = {
    "english": "en", "eng": "en", "french": "fr", "fra": "fr", "fre": "fr", "german": "de", "deu": "de",
    "ger": "de", "spanish": "es", "spa": "es", "portuguese": "pt", "por": "pt", "japanese": "ja",
    "jpn": "ja", "italian": "it", "ita": "it", "chinese": "zh", "mandarin": "zh", "zho": "zh",
}


def normalize_language(value: str | None) -> str | None:
    """'en-US', 'EN', 'English' -> 'en'; None and '' -> None."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    text = LANGUAGE_ALIASES.get(text, text)
    return text.replace("_", "-").split("-")[0]


def parse_task(value: Any) -> str:
    """A task name, a '+'-joined name or a list of parts -> the canonical name in TASKS.

    'translate+transcribe', ['translate', 'transcribe'] -> 'transcribe+translate'. Raises ValueError."""
    if isinstance(value, str):
        parts = [p.strip().lower() for p in value.replace(",", "+").split("+")]
    elif isinstance(value, (list, tuple)):
        parts = [str(p).strip().lower() for p in value]
    else:
        raise ValueError(f"task must be a string or a list, got {value!r}")
    parts = [p for p in parts if p]
    kinds = [p for p in parts if p in KINDS]
    unknown = [p for p in parts if p not in KINDS + (TRANSLATE,)]
    if unknown or not parts or len(kinds) > 1 or len(set(parts)) != len(parts):
        raise ValueError(f"unknown task {value!r}; choose one of {list(TASKS)} (or a list of "
                         "one of transcribe/transcribe_raw/speakers/timestamps and translate)")
    return "+".join(kinds + ([TRANSLATE] if TRANSLATE in parts else []))


_CONTROL_TOKEN = re.compile(r"<\|[^|<>]*\|>")  # <|audio|>, <|end_of_text|>, ...: never from user text


def normalize_keywords(value: Any) -> tuple[str, ...]:
    """A list or a comma-separated string -> stripped, de-duplicated keywords (order kept); control
    tokens such as `<|audio|>` are removed so a keyword cannot change the prompt's structure."""
    if value is None:
        return ()
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"keywords must be strings, got {item!r}")
        kw = " ".join(_CONTROL_TOKEN.sub(" ", item).split())
        if kw and kw not in out:
            out.append(kw)
    return tuple(out)


@dataclass(frozen=True)
class TaskSpec:
    """What to do with one clip: `task` is one of TASKS."""

    task: str = TRANSCRIBE
    target_language: str | None = None
    keywords: tuple[str, ...] = ()

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.task.split("+"))

    @property
    def transcription(self) -> str | None:
        """The transcription kind asked for (transcribe or transcribe_raw), or None."""
        return next((p for p in self.parts if p != TRANSLATE), None)

    @property
    def translates(self) -> bool:
        return TRANSLATE in self.parts


DEFAULT_TASK = TaskSpec()


@dataclass
class Capabilities:
    tasks: frozenset
    languages: frozenset | None
    translation_pairs: frozenset
    keywords: bool

    @property
    def targets(self) -> frozenset:
        return frozenset(t for _, t in self.translation_pairs)


def capabilities(backend_cls: type) -> Capabilities:
    """What a backend class declares it can do (defaults: plain transcription, any language)."""
    langs = getattr(backend_cls, "languages", None)
    return Capabilities(
        tasks=frozenset(getattr(backend_cls, "tasks", None) or {TRANSCRIBE}),
        languages=frozenset(langs) if langs is not None else None,
        translation_pairs=frozenset(getattr(backend_cls, "translation_pairs", None) or ()),
        keywords=bool(getattr(backend_cls, "keywords", False)),
    )


class TaskError(ValueError):
    """A task a backend cannot do; `field` names the config field or manifest column at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_task(backend_name: str, caps: Capabilities, spec: TaskSpec, source_language: str | None) -> None:
    """Raise TaskError unless the backend can do `spec` on speech in `source_language`."""
    missing = [p for p in spec.parts if p not in caps.tasks]
    if missing:
        raise TaskError("task", f"backend {backend_name!r} cannot do {missing[0]!r} (it does: "
                        f"{', '.join(sorted(caps.tasks))})")
    if spec.keywords and not caps.keywords:
        raise TaskError("keywords", f"backend {backend_name!r} does not take keywords")
    if spec.translates:
        target = spec.target_language
        if not target:
            raise TaskError("target_language", f"task {spec.task!r} needs a target language (one of "
                            f"{', '.join(sorted(caps.targets))})")
        source = normalize_language(source_language)
        if (source, target) not in caps.translation_pairs:
            pairs = ", ".join(f"{s}->{t}" for s, t in sorted(caps.translation_pairs))
            raise TaskError("target_language", f"backend {backend_name!r} cannot translate {source}->{target}"
                            f" (source language {source!r} from the row or asr.model.language); "
                            f"supported pairs: {pairs}")
