"""Granite Speech 4.1 2B (autoregressive) through transformers' GraniteSpeechForConditionalGeneration.

Transcription (punctuated or raw), speech translation both ways between English and fr/de/es/pt/ja
(plus English into it/zh), keyword biasing, with the model card's prompts sent through the tokenizer's
chat template: one user turn, content `<|audio|>` + instruction, generation prompt added.

Inputs are built here, not by GraniteSpeechProcessor (its feature extractor needs torchaudio, which
does not import next to CPU torch): log-mel features from operators.asr.features (variant "ar", the
same math as GraniteSpeechFeatureExtractor), and the processor's token expansion: the one `<|audio|>`
of the templated prompt becomes `audio_embed_size(n)` = ceil(((n // 160 + 1) // 2) / window) *
(window // downsample) audio tokens (3 * ceil(frames / 15) for the released model, ~10 per second).

Batch invariance: transformers' own batch path zero-pads the audio and its encoder has no mask, so a
clip's transcript depends on what it is batched with. Here the encoder + projector run on the whole
batch with padding masked out (operators.asr.conformer: the masked conformer granite-nar uses; each
clip gets the audio tokens it gets alone), and the language model is batched with left padding, an
attention mask and positions from the mask, so greedy output is the same whatever the batch
(token-identical on CPU float32, see the tests). `batched_encoder: false` runs the encoder per clip.

Generation is greedy and deterministic and, by default, gives what the model card's recipe gives
clip for clip: chat-template prompt, `<|audio|>` expanded, greedy, max_new_tokens 200 for a clip of up
to 30 s, decoded with skip_special_tokens. Loops are never rewritten by default: a row holding a run of
one repeated n-gram (period <= `repeat_max_period` tokens, >= `repeat_min_repeats` copies spanning >=
`repeat_min_span` tokens) is flagged (`Transcript.loop_suspected`, the output's `loop_suspected`
column; exports drop such rows unless told otherwise). Two opt-in options trade words for GPU time:
`stop_on_loop` ends a looping row as soon as its tail repeats and keeps one copy (a batch no longer
waits for a looping row to exhaust its budget, but a row that really repeats, or would have left the
loop by itself, loses words), and `scale_budget_by_duration` gives short clips fewer tokens (a dense
short clip can be cut).
A clip that cannot be processed (too short, too long, a task pair the model lacks) comes back as an
exception in its slot; the other clips of the call are unaffected.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from operators.asr.base import (DEFAULT_TASK, TRANSCRIBE, TRANSCRIBE_RAW, TRANSLATE, TaskSpec, Transcript,
                                capabilities, check_task, model_identity, normalize_language)
from operators.config import ModelConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ibm-granite/granite-speech-4.1-2b"
AUDIO_TOKEN = "<|audio|>"
SAMPLE_RATE = 16_000
HOP = 160

LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "pt": "Portuguese",
                  "ja": "Japanese", "it": "Italian", "zh": "Mandarin"}
ASR_LANGUAGES = frozenset({"en", "fr", "de", "es", "pt", "ja"})
# the model card: X -> English for the ASR languages, English -> each of them (and Italian, Mandarin)
TRANSLATION_PAIRS = frozenset({(src, "en") for src in ASR_LANGUAGES - {"en"}}
                              | {("en", tgt) for tgt in ("fr", "de", "es", "pt", "ja", "it", "zh")})

# the model card's instructions
TRANSCRIBE_PROMPT = "transcribe the speech with proper punctuation and capitalization."
TRANSCRIBE_RAW_PROMPT = "can you transcribe the speech into a written format?"
KEYWORDS_TRANSCRIBE_PROMPT = "transcribe the speech to text."

OPTIONS = {
    "max_new_tokens_per_30s": 200,      # the model card's budget (max_new_tokens=200 for a <= 30 s clip)
    "translate_tokens_per_30s": 300,    # translation budget (targets like ja/de run longer)
    "scale_budget_by_duration": False,  # opt-in: a shorter clip gets proportionally fewer tokens
    "min_new_tokens": 32,               # ... floor of that scaled budget
    "max_new_tokens": 1024,             # ceiling of any per-row budget
    "stop_on_loop": False,              # opt-in: end a row whose tail repeats and keep one copy
    "repeat_max_period": 16,            # loop detection (the loop_suspected flag, and stop_on_loop):
    "repeat_min_repeats": 4,            # ... a run of at least this many copies of one n-gram
    "repeat_min_span": 24,              # ... of at most repeat_max_period tokens, spanning this many
    "no_repeat_ngram_size": 0,          # transformers' hard n-gram ban (0: off)
    "batched_encoder": True,            # encoder + projector on the whole batch, padding masked out
    "attn_implementation": None,        # transformers' choice (sdpa) unless set
}


# config.json model_type -> the backend that reads it (a checkpoint given to the wrong one is named)
MODEL_TYPES = {"granite_speech": "granite-ar", "granite_speech_plus": "granite-plus"}


def instruction(kind: str, target_language: str | None = None, keywords: Sequence[str] = ()) -> str:
    """The user instruction after `<|audio|>` for one task part (the model card's wording)."""
    if kind == TRANSLATE:
        name = LANGUAGE_NAMES.get(target_language or "")
        if name is None:
            raise ValueError(f"no translation prompt for target language {target_language!r}; "
                             f"known: {sorted(LANGUAGE_NAMES)}")
        text = (f"translate the speech to {name}." if keywords else
                f"translate the speech to {name} with proper punctuation and capitalization.")
    elif kind == TRANSCRIBE_RAW:
        text = TRANSCRIBE_RAW_PROMPT
    elif kind == TRANSCRIBE:
        text = KEYWORDS_TRANSCRIBE_PROMPT if keywords else TRANSCRIBE_PROMPT
    else:
        raise ValueError(f"unknown task part {kind!r}")
    if keywords:
        text = f"{text} Keywords: {', '.join(keywords)}"
    return text


def audio_embed_size(n_samples: int, window_size: int = 15, downsample_rate: int = 5) -> int:
    """Audio tokens for a clip of n samples (GraniteSpeechFeatureExtractor._get_num_audio_features)."""
    encoder_frames = (n_samples // HOP + 1) // 2
    return math.ceil(encoder_frames / window_size) * (window_size // downsample_rate)


def _imports():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError("the granite-ar backend needs torch and transformers: pip install "
                          "'granite-transcribe[granite]'") from e
    return torch, transformers


def _device_dtype(cfg: ModelConfig, torch) -> tuple[str, Any]:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif cfg.dtype in names:
        dtype = names[cfg.dtype]
    else:
        raise ValueError(f"asr.model.dtype {cfg.dtype!r}: granite-ar takes auto, {', '.join(names)}")
    return device, dtype


def _loaded_names(model, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, keys renamed as transformers renames them when it loads this model
    (older checkpoints keep `language_model.*`, `encoder.*`, `projector.*` at the top)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
        meta = model.state_dict()
        return {rename_source_key(k, renamings, converters, model.base_model_prefix, meta)[0]: tuple(v)
                for k, v in shapes.items()}
    except (ImportError, AttributeError, TypeError) as e:  # transformers moved its loading internals
        log.warning("granite-ar check: cannot rename keys the way transformers does (%s); keys checked as stored", e)
        return dict(shapes)


def _repeating_tail(tokens: Sequence[int], max_period: int, min_repeats: int, min_span: int) -> int | None:
    """The period p of a loop at the end of `tokens` (the last max(min_repeats * p, min_span) tokens
    repeat with period p), smallest first; None if there is none."""
    n = len(tokens)
    for p in range(1, max_period + 1):
        span = max(min_repeats * p, min_span)
        if span > n:
            break
        tail = tokens[n - span:]
        if all(tail[k] == tail[k - p] for k in range(p, span)):
            return p
    return None


def has_loop(tokens: Sequence[int], max_period: int, min_repeats: int, min_span: int) -> bool:
    """Whether `tokens` hold, anywhere, a run repeating with period p <= max_period that covers at least
    max(min_repeats * p, min_span) tokens (the same rule as _repeating_tail, not only at the end)."""
    n = len(tokens)
    for p in range(1, max_period + 1):
        need = max(min_repeats * p, min_span)
        if need > n:
            break
        run = 0  # consecutive k with tokens[k] == tokens[k - p]: the run covers run + p tokens
        for k in range(p, n):
            run = run + 1 if tokens[k] == tokens[k - p] else 0
            if run + p >= need:
                return True
    return False


def _trim_loop(tokens: list[int], period: int) -> list[int]:
    """Cut a repeating tail of period `period` down to one copy."""
    start = len(tokens) - period
    while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
        start -= 1
    return tokens[:start + period]


class GraniteARBackend:
    name = "granite-ar"
    max_clip_s = 30.0
    tasks = frozenset({TRANSCRIBE, TRANSCRIBE_RAW, TRANSLATE})
    languages = ASR_LANGUAGES
    translation_pairs = TRANSLATION_PAIRS
    keywords = True
    # what a subclass for a sibling checkpoint (granite-plus) changes
    default_model = DEFAULT_MODEL
    model_class = "GraniteSpeechForConditionalGeneration"   # transformers class names
    config_class = "GraniteSpeechConfig"
    model_type = "granite_speech"                           # config.json's model_type
    default_options = OPTIONS

    def __init__(self, cfg: ModelConfig):
        torch, transformers = _imports()
        self.torch = torch
        self.model_id, self.revision = self.identity(cfg)
        path = cfg.id or self.default_model
        opts = dict(cfg.options)
        unknown = sorted(set(opts) - set(self.default_options))
        if unknown:
            raise ValueError(f"asr.model.options: unknown {self.name} options {unknown}; known: "
                             f"{', '.join(self.default_options)}")
        self.options = {**self.default_options, **opts}
        self.device, self.dtype = _device_dtype(cfg, torch)
        kwargs: dict[str, Any] = {}
        if cfg.revision and not Path(path).exists():
            kwargs["revision"] = cfg.revision
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
        if self.options["attn_implementation"]:
            kwargs["attn_implementation"] = self.options["attn_implementation"]
        model = getattr(transformers, self.model_class).from_pretrained(
            path, dtype=self.dtype, **kwargs)
        self.model = model.to(self.device).eval()
        config = self.model.config
        self.audio_token = getattr(self.tokenizer, "audio_token", None) or AUDIO_TOKEN
        self.audio_token_id = config.audio_token_id
        tok_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        if tok_id != self.audio_token_id:
            raise ValueError(f"{path}: the tokenizer's {self.audio_token} is id {tok_id} but the model "
                             f"expects {self.audio_token_id}")
        self.window_size = config.window_size
        self.downsample_rate = config.downsample_rate
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids))
        if self.pad_id == self.audio_token_id:
            raise ValueError("the pad token must differ from the audio token")
        self.default_language = normalize_language(cfg.language) or "en"
        self._caps = capabilities(type(self))
        self._prompts: dict[tuple, list[int]] = {}

    @classmethod
    def identity(cls, cfg: ModelConfig) -> tuple[str, str]:
        return model_identity(cfg.id, cfg.revision, cls.default_model)

    @classmethod
    def check(cls, cfg: ModelConfig) -> str:
        """On the driver, before Ray: options, config.json, the safetensors headers against the model
        built on the meta device (keys renamed the way transformers loads them), the tokenizer and its
        audio token. No tensor is read. Raises ModelCheckError."""
        from operators.asr import checks

        torch, transformers = _imports()
        unknown = sorted(set(cfg.options) - set(cls.default_options))
        if unknown:
            raise checks.ModelCheckError(f"asr.model.options: unknown {cls.name} options {unknown}; known: "
                                         f"{', '.join(cls.default_options)}")
        try:
            _device_dtype(cfg, torch)
        except ValueError as e:
            raise checks.ModelCheckError(str(e)) from None
        model_id = cfg.id or cls.default_model
        model_dir, from_hub = checks.locate(model_id, cfg.revision, cls.name)
        model_type = checks.read_json(model_dir / "config.json").get("model_type")
        if model_type and model_type != cls.model_type and model_type in MODEL_TYPES:
            raise checks.ModelCheckError(f"{model_dir}: config.json is a {model_type!r} checkpoint, not "
                                         f"{cls.model_type!r}; set asr.backend to {MODEL_TYPES[model_type]}")
        try:
            config = getattr(transformers, cls.config_class).from_pretrained(str(model_dir))
        except Exception as e:  # noqa: BLE001
            raise checks.ModelCheckError(f"{model_dir}/config.json is not a Granite Speech config "
                                         f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
        shapes = checks.shapes_for(model_dir, from_hub, model_id, cfg.revision)
        with torch.device("meta"):
            model = getattr(transformers, cls.model_class)(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = _loaded_names(model, shapes)
        tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.text_config.tie_word_embeddings else set()
        missing = sorted(set(expected) - set(found) - tied)
        wrong = sorted(f"{k} {found[k]} != {expected[k]}" for k in set(expected) & set(found)
                       if found[k] != expected[k])
        if missing or wrong:
            raise checks.ModelCheckError(f"{model_dir}: checkpoint does not match {cls.model_class}: "
                                         f"{checks.describe_key_problems(missing, [], wrong)}; is "
                                         f"asr.model.id a {cls.name} checkpoint?")
        tokenizer = checks.load_tokenizer_or_fail(model_dir)
        audio = getattr(tokenizer, "audio_token", None) or AUDIO_TOKEN
        if tokenizer.convert_tokens_to_ids(audio) != config.audio_token_id:
            raise checks.ModelCheckError(f"{model_dir}: the tokenizer's {audio} is not the model's audio token "
                                         f"id {config.audio_token_id}; use the tokenizer of this checkpoint")
        return f"{model_dir}: {len(found)} tensors match {cls.model_class}"

    # ---------------------------------------------------------------- prompts

    def prompt_text(self, kind: str, spec: TaskSpec = DEFAULT_TASK) -> str:
        """The templated prompt (one `<|audio|>`), as the model card builds it."""
        content = self.audio_token + instruction(kind, spec.target_language, spec.keywords)
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def prompt_ids(self, kind: str, spec: TaskSpec, n_audio_tokens: int) -> list[int]:
        """Token ids with the audio token expanded to `n_audio_tokens` copies, as the processor does
        (it repeats the token in the text, then tokenizes; the special token never merges)."""
        key = (kind, spec.target_language if kind == TRANSLATE else None, spec.keywords)
        ids = self._prompts.get(key)
        if ids is None:
            text = self.prompt_text(kind, spec)
            ids = list(self.tokenizer(text)["input_ids"])
            if ids.count(self.audio_token_id) != 1:
                raise ValueError(f"prompt {text!r} must hold exactly one audio token")
            self._prompts[key] = ids
        at = ids.index(self.audio_token_id)
        return ids[:at] + [self.audio_token_id] * n_audio_tokens + ids[at + 1:]

    def budget(self, kind: str, n_samples: int) -> int:
        """New tokens a row may take: the card's per-30 s budget for any clip up to 30 s (scaled down by
        duration only with scale_budget_by_duration)."""
        o = self.options
        per_30s = o["translate_tokens_per_30s" if kind == TRANSLATE else "max_new_tokens_per_30s"]
        exact = per_30s * n_samples / (30 * SAMPLE_RATE)
        if o["scale_budget_by_duration"]:
            n = max(o["min_new_tokens"], math.ceil(exact))
        else:
            n = max(per_30s, math.ceil(exact))
        return int(min(o["max_new_tokens"], n))

    # ---------------------------------------------------------------- model

    def encode(self, audio: np.ndarray):
        """Encoder + projector on one clip alone: (audio tokens, LM hidden) on the device."""
        from operators.asr.features import log_mel

        torch = self.torch
        feats = log_mel(torch.as_tensor(np.asarray(audio, np.float32)).to(self.device), "ar")
        with torch.inference_mode():
            out = self.model.get_audio_features(feats[None].to(self.dtype), return_dict=True)
        return out.pooler_output[0]

    def encode_batch(self, audios: Sequence[np.ndarray]) -> list:
        """Encoder + projector for many clips in one batch, padding masked out (operators.asr.conformer):
        each clip's audio tokens are those `encode` gives it alone."""
        from operators.asr import conformer
        from operators.asr.features import device_clips, log_mel

        torch = self.torch
        feats = [log_mel(a, "ar") for a in device_clips(audios, self.device)]
        frames = [f.shape[0] for f in feats]   # host ints: no device sync per clip below
        lengths = torch.tensor(frames, device=self.device)
        batch = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.dtype)
        model = self.model.model
        with torch.inference_mode():
            hidden = conformer.ctc_encoder(model.encoder, batch, lengths)
            projected = model.projector(hidden)
        window, rate = self.window_size, self.downsample_rate
        return [projected[i, :math.ceil(n / window) * (window // rate)] for i, n in enumerate(frames)]

    def generate(self, prompts: list[list[int]], audio: list,
                 budgets: list[int]) -> list[tuple[list[int], str]]:
        """Batched greedy generation: prompt ids (audio tokens expanded), each row's audio embeddings and
        token budget -> (new tokens, why it stopped: eos | max_new_tokens | repetition) per row;
        `repetition` only with stop_on_loop."""
        torch = self.torch
        from transformers import GenerationMixin, StoppingCriteriaList

        rows = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        n_audio = max(a.shape[0] for a in audio)
        feats = audio[0].new_zeros((rows, n_audio, audio[0].shape[-1]))
        feats_mask = torch.zeros((rows, n_audio), dtype=torch.bool, device=self.device)
        for r, a in enumerate(audio):
            feats[r, :a.shape[0]] = a
            feats_mask[r, :a.shape[0]] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        o = self.options
        guard = _RowGuard(budgets, o["repeat_max_period"] if o["stop_on_loop"] else 0, o["repeat_min_repeats"],
                          o["repeat_min_span"], self.device)
        kwargs: dict[str, Any] = {}
        if o["no_repeat_ngram_size"]:
            kwargs["no_repeat_ngram_size"] = int(o["no_repeat_ngram_size"])
        with torch.inference_mode():
            embeds = self.model.model.get_merged_audio_embeddings(ids, feats, feats_mask)
            if getattr(self.model, "_hf_peft_config_loaded", False):
                self.model.enable_adapters()  # the speech LoRA (the model's own generate would turn
                # it off, seeing no input_features)
            out = GenerationMixin.generate(
                self.model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max(budgets),
                do_sample=False, num_beams=1, pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                stopping_criteria=StoppingCriteriaList([guard]), use_cache=True, **kwargs)
        results = []
        stop_ids = self.eos_ids | {self.pad_id}
        for r, seq in enumerate(out.tolist()):
            end = next((k for k, t in enumerate(seq) if t in stop_ids), None)
            tokens = seq[:end] if end is not None else seq
            period = _repeating_tail(tokens, o["repeat_max_period"], o["repeat_min_repeats"],
                                     o["repeat_min_span"]) if o["stop_on_loop"] and o["repeat_max_period"] else None
            if period is not None:
                results.append((_trim_loop(tokens, period), "repetition"))
            elif end is None or len(tokens) >= budgets[r]:
                results.append((tokens[:budgets[r]], "max_new_tokens"))
            else:
                results.append((tokens, "eos"))
        return results

    # ---------------------------------------------------------------- protocol

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None],
                   tasks: Sequence[TaskSpec | None] | None = None) -> list[Transcript]:
        if not audios:
            return []
        tasks = list(tasks) if tasks is not None else [None] * len(audios)
        results: list[Any] = [None] * len(audios)
        jobs: list[tuple[int, str]] = []  # (clip, task part), one generation row each
        embeds: dict[int, Any] = {}
        specs: list[TaskSpec] = []
        for i, (audio, lang, spec) in enumerate(zip(audios, languages, tasks)):
            spec = spec or DEFAULT_TASK
            specs.append(spec)
            try:
                check_task(self.name, self._caps, spec, normalize_language(lang) or self.default_language)
                n = len(audio)
                if n > self.max_clip_s * SAMPLE_RATE + HOP:
                    raise ValueError(f"clip of {n / SAMPLE_RATE:.1f} s exceeds {self.name}'s "
                                     f"{self.max_clip_s:g} s limit; lower segment.max_segment_s")
                if audio_embed_size(n, self.window_size, self.downsample_rate) == 0:
                    raise ValueError(f"clip of {n} samples is too short for the encoder")
            except Exception as e:  # noqa: BLE001 - this clip only
                results[i] = e
                continue
            embeds[i] = None
            jobs += [(i, kind) for kind in spec.parts]
        if embeds:  # one masked batch for the encoder + projector (per clip with batched_encoder: false)
            ready = list(embeds)
            if self.options["batched_encoder"]:
                for i, e in zip(ready, self.encode_batch([audios[i] for i in ready])):
                    embeds[i] = e
            else:
                for i in ready:
                    embeds[i] = self.encode(audios[i])
        if jobs:
            generated = self.generate(
                [self.prompt_ids(kind, specs[i], embeds[i].shape[0]) for i, kind in jobs],
                [embeds[i] for i, _ in jobs], [self.budget(kind, len(audios[i])) for i, kind in jobs])
            by_clip: dict[int, dict[str, tuple[list[int], str]]] = {}
            for (i, kind), res in zip(jobs, generated):
                by_clip.setdefault(i, {})[kind] = res
            for i, parts in by_clip.items():
                results[i] = self.make_transcript(parts, len(audios[i]))
        return results

    def make_transcript(self, parts: dict[str, tuple[list[int], str]], n_samples: int) -> Transcript:
        """One clip's Transcript from its generations: task part -> (new tokens, why it stopped)."""
        o = self.options
        text, translation, stops, counts, looped = "", None, {}, {}, False
        for kind, (tokens, stop) in parts.items():
            decoded = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            stops[kind], counts[kind] = stop, len(tokens)
            looped = looped or stop == "repetition" or (o["repeat_max_period"] > 0 and has_loop(
                tokens, o["repeat_max_period"], o["repeat_min_repeats"], o["repeat_min_span"]))
            if kind == TRANSLATE:
                translation = decoded
            else:
                text = decoded
        return Transcript(text=text, translation=translation, loop_suspected=looped,
                          extras={"stop": stops, "tokens": counts})


class _RowGuard:
    """Stopping criterion, one decision per row: its own token budget, or a repeating tail."""

    def __init__(self, budgets: list[int], max_period: int, min_repeats: int, min_span: int, device):
        import torch

        self.budgets = torch.tensor(budgets, device=device)
        self.max_period, self.min_repeats, self.min_span = max_period, min_repeats, min_span
        self.start: int | None = None

    def __call__(self, input_ids, scores, **kwargs):
        if self.start is None:  # first call: one new token so far
            self.start = input_ids.shape[1] - 1
        gen = input_ids[:, self.start:]
        n = gen.shape[1]
        done = n >= self.budgets
        for p in range(1, self.max_period + 1):
            span = max(self.min_repeats * p, self.min_span)
            if span > n:
                break
            tail = gen[:, n - span:]
            done = done | (tail[:, p:] == tail[:, :-p]).all(dim=1)
        return done


# ---------------------------------------------------------------- random checkpoints (tests, benchmarks)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call me tomorrow at the office. Good morning everyone!",
    "Bonjour à tous, merci beaucoup. Guten Morgen, wie geht es Ihnen? Buenos días, ¿cómo estás?",
    "Bom dia, obrigado. Buongiorno a tutti. 今日はいい天気ですね。ありがとうございます。你好，谢谢。",
    "transcribe the speech with proper punctuation and capitalization. translate the speech to English.",
    "0123456789 , . ? ! : ; - ' \" ( )",
]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "<|start_of_role|>{{ message['role'] }}<|end_of_role|>{{ message['content'] }}<|end_of_text|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{%- endif %}"
)

SIZES = {
    # a few layers at hidden 32: seconds on a laptop CPU. Wider-than-default init and an untied LM head
    # make the random model's greedy output depend on the audio instead of repeating one token.
    "tiny": dict(
        init=0.1, tie=False, vocab=None,
        encoder=dict(num_layers=2, hidden_dim=32, num_heads=2, dim_head=16, feedforward_mult=2, output_dim=16,
                     context_size=200, max_pos_emb=512, conv_kernel_size=15),
        projector=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       cross_attention_frequency=1),
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128)),
    # about the released 2B (2.1 B parameters here): 16-layer 1024-wide conformer, 2-layer Q-Former, a
    # 40-layer 2048-wide Granite LM (GQA 16/4) over a 100k vocabulary (dimensions approximate)
    "full": dict(
        init=0.02, tie=True, vocab=100352,
        encoder=dict(num_layers=16, hidden_dim=1024, num_heads=8, dim_head=128, feedforward_mult=4,
                     output_dim=348, context_size=200, max_pos_emb=512, conv_kernel_size=15),
        projector=dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096,
                       cross_attention_frequency=1),
        text=dict(hidden_size=2048, num_hidden_layers=40, num_attention_heads=16, num_key_value_heads=4,
                  intermediate_size=4096)),
}


def build_tokenizer(vocab_size: int = 512, corpus: Sequence[str] | None = None):
    """A small byte-level BPE tokenizer with Granite's role tokens, `<|audio|>` and a chat template
    (trained on `corpus`, default the AR prompts and a few languages)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", AUDIO_TOKEN]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(corpus or _CORPUS) * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|end_of_text|>",
                                   eos_token="<|end_of_text|>", pad_token="<|end_of_text|>",
                                   additional_special_tokens=specials[1:])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def random_checkpoint(path: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a randomly initialised Granite Speech checkpoint (config, safetensors, tokenizer with chat
    template) that `GraniteARBackend` loads like the hub one. For tests and benchmarks only."""
    torch, transformers = _imports()
    dims = SIZES[size]
    tokenizer = build_tokenizer()
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    config = transformers.GraniteSpeechConfig(**config_fields(
        dims, tokenizer, audio_id, vocab=dims["vocab"] or len(tokenizer), max_positions=4096))
    torch.manual_seed(seed)
    model = transformers.GraniteSpeechForConditionalGeneration(config).eval()
    return save_checkpoint(model, tokenizer, path, dtype)


def config_fields(dims: dict, tokenizer, audio_id: int, vocab: int, max_positions: int,
                  encoder_hidden: int | None = None, **encoder_extra) -> dict:
    """The keyword arguments of a random Granite Speech config of size `dims` (SIZES): encoder,
    Q-Former projector (reading `encoder_hidden` features) and Granite text model."""
    return dict(
        encoder_config=dict(input_dim=160, dropout=0.0, **encoder_extra, **dims["encoder"]),
        projector_config=dict(model_type="blip_2_qformer",
                              encoder_hidden_size=encoder_hidden or dims["encoder"]["hidden_dim"],
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **dims["projector"]),
        text_config=dict(model_type="granite", vocab_size=vocab, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=dims["tie"],
                         initializer_range=dims["init"], **dims["text"]),
        audio_token_index=audio_id, has_lora_adapter=False, downsample_rate=5, window_size=15,
        initializer_range=dims["init"], tie_word_embeddings=dims["tie"],
    )


def save_checkpoint(model, tokenizer, path: str | Path, dtype: str = "float32") -> Path:
    """Save a built model and its tokenizer as a hub-layout checkpoint, generation ids from the tokenizer."""
    import torch

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    path = Path(path)
    model.to(getattr(torch, dtype)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
