"""Typed job configuration.

A job profile is a YAML file in configs/ that maps onto `JobConfig`. Every field is validated at
load; an error names the dotted field and how to fix it (`ConfigError`). Command-line overrides use
the same dotted names: `--set asr.batch_size=8`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from operators.backends import available_backends, backend_class, builtin_backends, is_backend
from operators.tasks import TRANSLATE, capabilities, normalize_keywords, normalize_language, parse_task

SAMPLE_RATE = 16_000
# schemes a manifest row may name by default (with the input's own and local files); see
# InputConfig.allowed_schemes
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
# What an audio glob/prefix lists and a tar shard takes by default (input.extensions): every format the
# decoders open from bytes. The one place this set lives (operators.io.sources re-exports it).
AUDIO_EXTENSIONS = (
    # libsndfile (soundfile)
    ".wav", ".wave", ".bwf", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au",
    ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc",
    # FFmpeg (PyAV) audio
    ".m4a", ".m4b", ".aac", ".ac3", ".eac3", ".dts", ".amr", ".awb", ".3ga", ".mka", ".wma", ".asf",
    ".ape", ".wv", ".tta", ".tak", ".mpc", ".mp2", ".mpa", ".spx", ".ra", ".dss",
    # FFmpeg video containers: their first audio stream is decoded, never the video frames
    ".mp4", ".m4v", ".mov", ".qt", ".webm", ".mkv", ".3gp", ".3g2", ".wmv", ".avi", ".flv", ".ogv",
    ".mpg", ".mpeg", ".mts", ".m2ts", ".mxf", ".rm",
)  # not .ts (TypeScript sources in a mixed bucket), nor headerless .raw/.pcm/.gsm (no decoder can probe them)
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")


class ConfigError(ValueError):
    """A configuration problem, with the field it concerns and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    uri: str | None = Field(
        None, description="Manifest (.jsonl/.csv/.parquet), audio glob or prefix, WebDataset .tar "
        "shards, or HF-layout Parquet with embedded audio. Local path or any fsspec URL (s3://...).")
    format: Literal["auto", "manifest", "audio", "webdataset", "hf_parquet"] = Field(
        "auto", description="How to read `uri`; auto decides from extensions and the Parquet schema.")
    extensions: list[str] = Field(
        list(AUDIO_EXTENSIONS),
        description="Audio extensions listed from a glob/prefix and taken from tar shards (default: "
        "AUDIO_EXTENSIONS, every format the decoders read); other files are counted as left out.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (e.g. endpoint_url, key, secret); never "
        "logged. Without them s3fs reads the standard AWS_* environment.")
    limit: int | None = Field(None, ge=1, description="Take only the first N inputs (sorted).")
    id_column: str | None = Field(
        None, description="Manifest column holding the audio id; default: audio_id or id, else "
        "derived from the audio path.")
    allowed_schemes: list[str] | None = Field(
        None, description="URI schemes a manifest row may point at; any other (http, ftp, data, ...) is "
        "an `input_scheme` error row, never a request. Empty: the input's own scheme, the object stores "
        f"({', '.join(OBJECT_STORE_SCHEMES)}) and local files (file). A list replaces that default, e.g. "
        "[s3, https].")
    max_member_bytes: int = Field(
        1 << 30, ge=1, description="Largest tar member or Parquet audio cell read into memory (after "
        "decompression); a bigger one is an `input_too_large` error row (a decompression bomb).")

    @field_validator("allowed_schemes", mode="before")
    @classmethod
    def _schemes(cls, v: Any) -> list[str] | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = [p for p in v.replace(",", " ").split() if p]
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("give a list of URI schemes, e.g. [s3, file] (leave it empty for the default)")
        out = []
        for s in v:
            name = str(s).strip().lower().removesuffix("://")
            if not _SCHEME.fullmatch(name):
                raise ValueError(f"{s!r} is not a URI scheme; write names like s3, gs, file, https "
                                 "(without ://)")
            out.append(name)
        return out

    def schemes(self) -> set[str]:
        """The schemes manifest rows may use (see allowed_schemes)."""
        if self.allowed_schemes is not None:
            return set(self.allowed_schemes)
        own = self.uri.split("://", 1)[0].lower() if self.uri and "://" in self.uri else "file"
        return {own, "file", *OBJECT_STORE_SCHEMES}


class OutputConfig(_Section):
    uri: str | None = Field(None, description="Directory (local or fsspec URL) for the Parquet output.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options.")
    overwrite: bool = Field(False, description="Redo every input instead of skipping ids already written.")


class DecodeConfig(_Section):
    num_cpus: float = Field(0.5, gt=0, description="CPUs per decode actor (fractional is fine).")
    batch_size: int = Field(8, ge=1, description="Files per decode call.")
    min_actors: int = Field(1, ge=0, description="Decode actors kept alive (each loads the VAD model "
                            "once); 0 runs decode as plain Ray tasks instead of an actor pool.")
    max_actors: int | None = Field(None, ge=1, description="Most decode actors; empty: as many as the "
                                   "cluster's CPUs allow (autoscaled from min_actors).")
    avoid_gpu_nodes: bool = Field(True, description="Where the ASR actors use GPUs and the cluster also has "
                                  "CPU-only nodes, keep decode actors off the GPU nodes (they hold their "
                                  "CPUs for the whole job); false lets them use GPU nodes' spare CPUs.")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="Longer audio becomes an error row.")
    min_duration_s: float = Field(0.0, ge=0, description="Shorter audio becomes an error row.")
    resample_quality: Literal["QQ", "LQ", "MQ", "HQ", "VHQ"] = Field("HQ", description="soxr quality.")
    max_channels: int = Field(64, ge=1, description="More channels than this is an absurd header.")
    max_sample_rate: int = Field(768_000, ge=8000, description="Higher rates are absurd headers.")


class SegmentConfig(_Section):
    vad: Literal["auto", "silero", "silero_full", "energy", "none"] = Field(
        "auto", description="Voice activity: silero (the silero-vad package's model, run only where "
        "window energy leaves the answer open: ~0.5 CPU-s per audio-hour of speech on a CPU; where it "
        "runs: vad_on), silero_full (the model on every window, ~3), energy (frame energy over the file's "
        "noise floor), auto (silero where installed, else energy), none (keep all audio; cut at the "
        "quietest point before max_segment_s).")
    vad_on: Literal["auto", "decode", "actor"] = Field(
        "auto", description="Where voice activity runs: decode (the decode workers' CPUs; only the "
        "kept audio travels to the ASR actors), actor (the ASR actor, on its GPU where it has one: the "
        "decode workers spend no CPU on it, but the whole audio, silence too, travels to the actors), "
        "auto (actor where the ASR actors take GPUs, asr.num_gpus > 0 and asr.model.device not cpu, the "
        "detector is silero or silero_full, and the GPU nodes have under 4 CPUs per GPU: on an H200 silero "
        "on the actor cost the ASR stage 1.31x its time, a decode core is cheaper; else decode).")
    target_segment_s: float | None = Field(None, gt=1, description="Speech regions are joined into "
                                           "segments up to this length; empty: the backend's choice.")
    max_segment_s: float | None = Field(None, gt=1, description="A speech region longer than this is cut "
                                        "at its quietest point; empty: the backend's choice (30 s for most).")
    min_segment_s: float = Field(5.0, ge=0, description="A cut inside a region never leaves a piece "
                                 "shorter than this (except the last).")
    search_window_s: float = Field(8.0, gt=0, description="Look for the quietest point in the last "
                                   "this-many seconds before max_segment_s.")
    frame_ms: float = Field(20.0, gt=0, description="Energy frame length.")
    silence_peak: float = Field(1e-4, ge=0, description="Audio whose peak is below this has no "
                                "speech: it gets no segments and an empty transcript.")
    speech_threshold: float = Field(0.5, gt=0.15, lt=1, description="Speech probability at which a "
                                    "window is speech (it stays speech until 0.15 below).")
    min_speech_s: float = Field(0.25, ge=0, description="Shorter bursts of speech are dropped.")
    min_silence_s: float = Field(1.0, ge=0, description="Shorter pauses stay inside a speech region; "
                                 "longer ones are left out (down to pad_s each side).")
    pad_s: float = Field(0.2, ge=0, description="Audio kept before and after each speech region.")

    @model_validator(mode="after")
    def _window_fits(self) -> "SegmentConfig":
        if self.max_segment_s is not None and self.min_segment_s >= self.max_segment_s:
            raise ValueError("min_segment_s must be smaller than max_segment_s")
        if None not in (self.target_segment_s, self.max_segment_s) and self.target_segment_s > self.max_segment_s:
            raise ValueError("target_segment_s must not exceed max_segment_s")
        return self

    def for_backend(self, target_s: float, max_s: float) -> "SegmentConfig":
        """This config with the backend's segment lengths filled in where the user left them empty."""
        mx = self.max_segment_s or max(max_s, self.target_segment_s or 0)
        return self.model_copy(update={"max_segment_s": mx,
                                       "target_segment_s": self.target_segment_s or min(target_s, mx)})


class ModelConfig(_Section):
    id: str | None = Field(None, description="Local directory or hub id; backend default when empty.")
    revision: str | None = Field(None, description="Pinned hub revision (commit); recorded in output.")
    device: str = Field("auto", description="auto, cpu or cuda.")
    dtype: str = Field("auto", description="Backend precision (whisper: compute_type, e.g. int8, float16).")
    language: str | None = Field("en", description="Default language when a row has none.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options.")


class ASRConfig(_Section):
    backend: str = Field("whisper", description="Model backend: whisper, granite-ar, granite-nar, granite-plus, "
                         "simulated, an entry point of the granite_transcribe.backends group, or a plugin class "
                         "as module:Class.")
    model: ModelConfig = Field(default_factory=ModelConfig, validate_default=True)
    batch_size: int = Field(16, ge=1, description="Segments per model call (sorted by length, "
                            "across files).")
    files_per_batch: int = Field(32, ge=1, description="Files handed to one actor call.")
    num_actors: int = Field(1, ge=1, description="Actor pool size (one per GPU on GPU clusters).")
    max_actors: int | None = Field(None, ge=1, description="Autoscale the pool up to this many.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on GPU clusters).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor.")
    concurrent_batches: int = Field(2, ge=1, description="Batches one ASR actor works on at once (threads): "
                                    "while one holds the model, the others prepare rows and build output.")
    check_model: bool = Field(True, description="Check the checkpoint on the driver before Ray starts "
                              "(config, weight headers, tokenizer); false where only the workers can see it.")
    max_tasks_in_flight_per_actor: int = Field(2, ge=1, description="Batches sent to an actor ahead of "
                                               "time (at least concurrent_batches + 1 are: one waits queued "
                                               "while the others run), so the GPU never waits for the next.")

    @property
    def tasks_in_flight(self) -> int:
        return max(self.max_tasks_in_flight_per_actor, self.concurrent_batches + 1)
    # what to do with the speech; a manifest's task / target_language / keywords columns override
    # these per row. Checked at load against what the backend declares it can do.
    task: str = Field("transcribe", validate_default=True, description=(
        "transcribe (punctuated where the model can), transcribe_raw, translate, transcribe+translate "
        "(or transcribe_raw+translate; a list works too). translate writes the `translation` column."))
    target_language: str | None = Field(None, validate_default=True, description=(
        "Translation target (en, fr, de, es, pt, ja, ...); the source is the row's language, else "
        "asr.model.language."))
    keywords: list[str] = Field(default_factory=list, validate_default=True, description=(
        "Keyword biasing (names, acronyms, jargon): added to the prompt of backends that take it."))

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if not is_backend(v):
            raise ValueError(f"unknown backend {v!r}; choose one of {sorted(available_backends())} or a "
                             "plugin class as module:Class")
        if v not in builtin_backends():  # a plugin: import it now and check what it declares
            backend_class(v)
        return v

    @field_validator("model")
    @classmethod
    def _model_language(cls, v: ModelConfig, info: ValidationInfo) -> ModelConfig:
        caps = _capabilities(info.data.get("backend"))
        if caps is None or caps.languages is None or v.language is None:
            return v
        if normalize_language(v.language) not in caps.languages:
            raise ValueError(f"asr.model.language {v.language!r}: backend {info.data['backend']!r} "
                             f"transcribes {', '.join(sorted(caps.languages))}")
        return v

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v: Any, info: ValidationInfo) -> str:
        task = parse_task(v)
        caps = _capabilities(info.data.get("backend"))
        if caps is not None:
            missing = [p for p in task.split("+") if p not in caps.tasks]
            if missing:
                able = _backends_that(lambda c: missing[0] in c.tasks)
                raise ValueError(f"backend {info.data['backend']!r} cannot do {missing[0]!r} (it does: "
                                 f"{', '.join(sorted(caps.tasks))}); backends that can: "
                                 f"{', '.join(able) or 'none'}")
        return task

    @field_validator("target_language", mode="before")
    @classmethod
    def _target_language(cls, v: Any, info: ValidationInfo) -> str | None:
        target = normalize_language(v)
        caps = _capabilities(info.data.get("backend"))
        task = info.data.get("task")
        if caps is None or task is None:
            return target
        backend = info.data["backend"]
        targets = ", ".join(sorted(caps.targets)) or "none"
        if TRANSLATE in task.split("+"):
            if target is None:
                raise ValueError(f"asr.task {task!r} needs asr.target_language (backend {backend!r} "
                                 f"translates into: {targets})")
            model = info.data.get("model")
            source = normalize_language(model.language) if model is not None else None
            if source is not None and (source, target) not in caps.translation_pairs:
                pairs = ", ".join(f"{s}->{t}" for s, t in sorted(caps.translation_pairs))
                raise ValueError(f"backend {backend!r} cannot translate {source}->{target} (source: "
                                 f"asr.model.language); supported pairs: {pairs or 'none'}")
            if source is None and target not in caps.targets:
                raise ValueError(f"backend {backend!r} does not translate into {target!r} (it "
                                 f"translates into: {targets})")
        elif target is not None and target not in caps.targets:
            raise ValueError(f"backend {backend!r} does not translate into {target!r} (it translates "
                             f"into: {targets})")
        return target

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords(cls, v: Any, info: ValidationInfo) -> list[str]:
        keywords = list(normalize_keywords(v))
        caps = _capabilities(info.data.get("backend"))
        if keywords and caps is not None and not caps.keywords:
            able = _backends_that(lambda c: c.keywords)
            raise ValueError(f"backend {info.data['backend']!r} does not take keywords; backends that "
                             f"do: {', '.join(able) or 'none'}")
        return keywords


def _capabilities(backend: str | None):
    """What a backend class declares (operators.tasks.capabilities), without loading weights;
    None when the backend is unknown or its module cannot be imported here."""
    if not backend:
        return None
    try:
        return capabilities(backend_class(backend))
    except (ImportError, ValueError):
        return None


def _backends_that(test) -> list[str]:
    out = []
    for name in available_backends():
        caps = _capabilities(name)
        if caps is not None and test(caps):
            out.append(name)
    return out


class WriteConfig(_Section):
    num_cpus: float = Field(0.25, gt=0, description="CPUs per write task.")
    max_tasks: int | None = Field(None, ge=1, description="Most write tasks at once; empty: 2 (each writes "
                                  "a whole file of rows_per_file rows, so two keep up with any number of "
                                  "GPUs), or with rows_per_file 0 one per ASR batch in flight. Uncapped, "
                                  "Ray Data's resource allocator held back CPUs for writing that decode "
                                  "could not use (on 2 cores the decode pool never grew past one actor).")
    compression: str = Field("zstd", description="Parquet compression codec.")
    rows_per_file: int = Field(4096, ge=0, description="Rows per Parquet file (a million-file job writes a "
                               "few hundred files). Each file is whole or absent: a killed run redoes at "
                               "most the rows not yet in a finished file. 0: one file per ASR batch.")

    def tasks(self, asr: "ASRConfig") -> int:
        """write.max_tasks resolved: with a file per ASR batch (rows_per_file 0) writes come as often as
        batches, so one writer per batch in flight across the ASR pool."""
        if self.max_tasks:
            return self.max_tasks
        return 2 if self.rows_per_file else (asr.max_actors or asr.num_actors) * asr.concurrent_batches


class SelectConfig(_Section):
    mode: Literal["missing", "all", "weak", "changed"] = Field(
        "missing", description="Which inputs a run transcribes: missing (not yet written at this "
        "revision: resume), all (redo everything, like --overwrite), weak (rows whose transcript in "
        "`previous` is an error, empty, or below weak_below agreement), changed (audio whose size/ETag "
        "differs from what `previous` recorded, plus new audio).")
    previous: str | None = Field(None, description="Another revision's output directory (weak, changed).")
    weak_below: float = Field(0.9, ge=0, le=1, description="weak: agreement threshold.")

    @model_validator(mode="after")
    def _needs_previous(self) -> "SelectConfig":
        if self.mode in ("weak", "changed") and not self.previous:
            raise ValueError(f"mode {self.mode!r} compares with an earlier run: set select.previous to "
                             "that revision's output directory (--previous DIR)")
        return self


class RayConfig(_Section):
    address: str | None = Field(None, description="Cluster address; none: RAY_ADDRESS or a local cluster.")
    progress_bars: bool = Field(True, description="Ray Data progress bars.")


class RetryConfig(_Section):
    attempts: int = Field(30, ge=1, description="Tries per object for transient storage errors (connection "
                          "refused/reset, timeouts, 5xx, 503 SlowDown, 429), the first included.")
    base_delay_s: float = Field(0.5, ge=0, description="Backoff: a retry waits uniform(0, min(max_delay_s, "
                                "base_delay_s * 2**retry)) seconds (full jitter).")
    max_delay_s: float = Field(15.0, ge=0, description="Longest single wait between tries.")
    budget_s: float = Field(120.0, ge=0, description="Stop retrying an object this long after its first try; "
                            "a fetch still failing is a `transient` error row that a plain re-run retries.")

    def policy(self):
        from operators.retry import RetryPolicy

        return RetryPolicy(self.attempts, self.base_delay_s, self.max_delay_s, self.budget_s)


class JobConfig(_Section):
    name: str = Field("transcribe", description="Job name, recorded in the summary.")
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    asr: ASRConfig = Field(default_factory=ASRConfig)
    write: WriteConfig = Field(default_factory=WriteConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with storage credentials hidden (safe to print and log)."""
        data = self.model_dump()
        for section in ("input", "output"):
            data[section]["storage_options"] = _redact(data[section]["storage_options"])
        return data


def _is_secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("secret", "key", "token", "password", "credential"))


def _redact(value: Any) -> Any:
    """Mask credential-like keys at any depth (s3fs nests them in client_kwargs/config_kwargs)."""
    if isinstance(value, dict):
        return {k: ("***" if _is_secret(str(k)) and not isinstance(v, dict) else _redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set asr.batch_size=8")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check the spelling (see configs/ and the README)"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                **fields: Any) -> JobConfig:
    """Load a YAML profile, apply `--set` overrides and keyword fields, validate."""
    data: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pick one of configs/*.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    for key, value in fields.items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None
