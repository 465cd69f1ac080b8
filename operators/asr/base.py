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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

# the task vocabulary lives in operators.tasks (config validation needs it without the backends);
# re-exported here so that `operators.asr.base` stays the one import a backend or plugin needs
from operators.tasks import (  # noqa: F401
    DEFAULT_TASK, KINDS, LANGUAGE_ALIASES, SPEAKERS, TASKS, TIMESTAMPS, TRANSCRIBE, TRANSCRIBE_RAW, TRANSLATE,
    Capabilities, TaskError, TaskSpec, capabilities, check_task, normalize_keywords, normalize_language,
    parse_task)


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
    tags_suspect: bool | None = None  # granite-plus: the tags needed repairs (operators.asr.words.parse)


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
