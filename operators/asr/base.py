"""The one protocol every model backend implements. No Ray in here or in any backend.

Tasks: every backend transcribes. A backend that can do more declares it with class attributes, read
without loading weights (the config validator and the stage use `capabilities(cls)`):

    tasks             frozenset of task parts it can run: "transcribe", "transcribe_raw", "translate"
    languages         source languages it transcribes (None: any)
    translation_pairs frozenset of (source, target) language pairs it translates
    keywords          True if it accepts a keyword list (prompt biasing)

Such a backend's `transcribe` takes a third argument, `tasks`: one `TaskSpec` (or None, meaning plain
transcription) per clip. Backends without it keep the two-argument call; the stage only passes `tasks`
to a backend whose `transcribe` has that parameter.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

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


def accepts_tasks(backend: Any) -> bool:
    """Whether a backend's `transcribe` takes the per-clip `tasks` argument."""
    try:
        return "tasks" in inspect.signature(backend.transcribe).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class Transcript:
    """One result per input clip, in input order."""

    text: str
    ctc_text: str | None = None      # NAR backends: the encoder's own hypothesis
    agreement: float | None = None   # NAR backends: agreement between ctc_text and text
    extras: dict = field(default_factory=dict)
    translation: str | None = None   # backends that translate: the clip's translation
    loop_suspected: bool | None = None  # backends that detect it: the output holds a repeating run
    raw_text: str | None = None      # tagged output (granite-plus): as generated, tags and all
    words: list | None = None        # granite-plus speakers/timestamps: [{word, start_s, end_s, speaker}],
    #                                  clip-relative seconds, speaker numbers as the model wrote them
    tags_suspect: bool | None = None  # granite-plus: the tags needed repairs (operators.words.parse)


@runtime_checkable
class ASRBackend(Protocol):
    """Loaded once per actor (device, dtype from config); `transcribe` is called many times."""

    name: str          # backend name, e.g. "whisper"
    model_id: str      # what goes into the output's `model` column
    revision: str      # what goes into `model_revision`
    max_clip_s: float  # longest clip the backend accepts (segmentation keeps clips below it)

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Transcript]:
        """16 kHz mono float32 clips -> one Transcript per clip, same order.

        Backends that declare tasks also take `tasks: Sequence[TaskSpec | None] | None = None`. An entry
        of the returned list may be an Exception instance for a clip that failed on its own (the stage
        turns it into that file's error row); raising fails the whole call (the stage then retries
        clip by clip)."""
        ...


class StagedBackend(Protocol):
    """A backend that splits `transcribe` into host work before, device work, and host work after, so
    that only device work holds the accelerator (the stage's model lock) and is counted as busy:

        prepare(audios, languages, tasks=None) -> prepared   host: validate, sort, stage inputs
                                                              (pinned buffers, copies on a side stream)
        run(prepared) -> ran                                  device: the model; returns host data
                                                              (token ids), nothing that needs decoding
        finish(ran) -> list[Transcript | Exception]           host: tokenizer decode, scores

    `transcribe(a, l)` must equal `finish(run(prepare(a, l)))`. `prepare` and `finish` may run in any
    thread at the same time as another call's `run`; `run` calls are serialised by the stage. A
    backend without these three methods is called through `transcribe`, all of it under the lock.

    Optional: `release_memory()` frees cached device memory after an out-of-memory error (the stage
    calls it after leaving the except block, before it retries the batch in halves)."""

    def prepare(self, audios: Sequence[np.ndarray], languages: Sequence[str | None], tasks=None) -> Any: ...

    def run(self, prepared: Any) -> Any: ...

    def finish(self, ran: Any) -> list: ...


def is_staged(backend: Any) -> bool:
    """Whether a backend implements StagedBackend (all of prepare, run, finish)."""
    return all(callable(getattr(backend, m, None)) for m in ("prepare", "run", "finish"))


def local_revision(path: Path) -> str:
    """A stable revision for a local checkpoint directory: a hash of its file names and sizes and of
    its small JSON files (configs), so a changed checkpoint gets a new output version."""
    h = hashlib.sha1()
    for p in sorted(q for q in path.iterdir() if q.is_file()):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        if p.suffix == ".json" and p.stat().st_size < 1 << 22:
            h.update(p.read_bytes())
    return "local-" + h.hexdigest()[:12]


def model_identity(model_id: str | None, revision: str | None, default_id: str,
                   default_revision: str = "unpinned") -> tuple[str, str]:
    """(model, revision) a backend writes, without loading weights: the configured id (a local
    directory gets a content hash as revision unless one is pinned), else the backend's default."""
    if not model_id:
        return default_id, revision or default_revision
    if Path(model_id).is_dir():
        return model_id, revision or local_revision(Path(model_id))
    return model_id, revision or "unpinned"
