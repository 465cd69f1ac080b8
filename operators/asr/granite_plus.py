"""Granite Speech 4.1 2B-Plus through transformers' GraniteSpeechPlusForConditionalGeneration: plain
transcripts, speaker-attributed transcripts and word-level timestamps, chosen by prompt.

Everything but the prompts, the budgets and the reading of the output is granite-ar's
(operators.asr.granite_ar.GraniteARBackend): features, audio-token expansion, the masked batched
encoder (operators.asr.conformer also returns the `cat_hidden_layers` states the Plus projector
reads), left-padded batched greedy generation, loop flagging. So batched output is token-identical
to one clip at a time.

The prompts are the transformers docs' (model_doc/granite_speech_plus.md, "Usage"), system turn
included, sent through the tokenizer's chat template:

    transcribe  "<|audio|> can you transcribe the speech into a written format?"
    speakers    "<|audio|> Speaker attribution: Transcribe and denote who is speaking by adding
                 [Speaker 1]: and [Speaker 2]: tags before speaker turns."
    timestamps  "<|audio|> Timestamps: Transcribe the speech. After each word, add a timestamp tag
                 showing the end time in centiseconds, e.g. hello [T:45] world [T:82]"

Budgets: the docs generate with max_new_tokens=2000 (10000 for timestamps) on a 60-s clip: every
timestamped word costs several extra tokens. Those are the defaults here, per 60 s of audio and never
less for a shorter clip, so any clip gets at least what the recipe gives it (a 30-s timestamped
segment 10000 tokens: never cut short). `scale_budget_by_duration: true` gives a clip only its share
(5000 for a 30-s timestamped clip, still far above the ~40 tokens a second of dense speech needs), so a
looping short clip stops sooner.

The output is parsed by operators.asr.words.parse (tolerant, never raises): `Transcript.text` holds the
words without tags, `raw_text` the output as generated (decoded with skip_special_tokens, unstripped),
`words` the words with clip-relative times / speaker numbers, `tags_suspect` whether the tags needed
repairs (or a tagged task gave no tags, or the budget cut the output).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from operators.asr.base import SPEAKERS, TIMESTAMPS, TRANSCRIBE, TaskSpec, Transcript
from operators.asr.granite_ar import (AUDIO_TOKEN, OPTIONS as AR_OPTIONS, SAMPLE_RATE, SIZES, GraniteARBackend,
                                      _imports, build_tokenizer, config_fields, has_loop,
                                      save_checkpoint)
from operators.asr.words import parse

DEFAULT_MODEL = "ibm-granite/granite-speech-4.1-2b-plus"

SYSTEM_PROMPT = ("Knowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\n"
                 "You are Granite, developed by IBM. You are a helpful AI assistant")
PROMPTS = {
    TRANSCRIBE: "<|audio|> can you transcribe the speech into a written format?",
    SPEAKERS: ("<|audio|> Speaker attribution: Transcribe and denote who is speaking by adding [Speaker 1]: "
               "and [Speaker 2]: tags before speaker turns."),
    TIMESTAMPS: ("<|audio|> Timestamps: Transcribe the speech. After each word, add a timestamp tag showing "
                 "the end time in centiseconds, e.g. hello [T:45] world [T:82]"),
}

OPTIONS = {
    **{k: v for k, v in AR_OPTIONS.items()
       if k not in ("max_new_tokens_per_30s", "translate_tokens_per_30s", "max_new_tokens")},
    "transcribe_tokens_per_60s": 2000,   # the docs' max_new_tokens (a 60-s clip)
    "speakers_tokens_per_60s": 2000,
    "timestamps_tokens_per_60s": 10000,  # the docs' timestamp budget
    "min_new_tokens": 64,                # floor of a scaled budget
    "max_new_tokens": 20000,             # ceiling of any per-row budget
    "min_wrap_s": 1.0,                   # parser: a smaller backwards step is an error, not a wrap
}


class GraniteSpeechPlusBackend(GraniteARBackend):
    name = "granite-plus"
    tasks = frozenset({TRANSCRIBE, SPEAKERS, TIMESTAMPS})
    translation_pairs = frozenset()
    keywords = False
    default_model = DEFAULT_MODEL
    model_class = "GraniteSpeechPlusForConditionalGeneration"
    config_class = "GraniteSpeechPlusConfig"
    model_type = "granite_speech_plus"
    default_options = OPTIONS

    def prompt_text(self, kind: str, spec: TaskSpec | None = None) -> str:
        """The templated prompt (system turn + the docs' user prompt, one `<|audio|>`)."""
        if kind not in PROMPTS:
            raise ValueError(f"granite-plus has no prompt for task {kind!r}; it does {sorted(PROMPTS)}")
        content = PROMPTS[kind].replace(AUDIO_TOKEN, self.audio_token)
        return self.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            tokenize=False, add_generation_prompt=True)

    def budget(self, kind: str, n_samples: int) -> int:
        o = self.options
        per_60s = o[f"{kind}_tokens_per_60s"]
        exact = math.ceil(per_60s * n_samples / (60 * SAMPLE_RATE))
        n = max(o["min_new_tokens"], exact) if o["scale_budget_by_duration"] else max(per_60s, exact)
        return int(min(o["max_new_tokens"], n))

    def make_transcript(self, parts: dict[str, tuple[list[int], str]], n_samples: int) -> Transcript:
        [(kind, (tokens, stop))] = parts.items()
        o = self.options
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True)
        parsed = parse(raw, n_samples / SAMPLE_RATE, min_wrap_s=o["min_wrap_s"])
        problems = list(parsed.problems)
        tagged = parsed.has_times or parsed.has_speakers or parsed.problems
        if kind == TRANSCRIBE:
            text = parsed.text if tagged else raw.strip()
            if tagged:
                problems.append("tags in a plain transcript")
            words = None
        else:
            text = parsed.text
            if parsed.words and kind == TIMESTAMPS and not parsed.has_times:
                problems.append("no time tags")
            if parsed.words and kind == SPEAKERS and not parsed.has_speakers:
                problems.append("no speaker tags")
            words = parsed.word_dicts()
        if stop == "max_new_tokens":
            problems.append("cut at the token budget")
        looped = stop == "repetition" or (o["repeat_max_period"] > 0 and has_loop(
            tokens, o["repeat_max_period"], o["repeat_min_repeats"], o["repeat_min_span"]))
        return Transcript(text=text, raw_text=raw, words=words, tags_suspect=bool(problems),
                          loop_suspected=looped,
                          extras={"stop": {kind: stop}, "tokens": {kind: len(tokens)}, "problems": problems})


# ---------------------------------------------------------------- random checkpoints (tests, benchmarks)

TAG_CORPUS = [
    "hello [T:45] world [T:82] _ [T:120] good [T:164] morning [T:199] everyone [T:250]",
    "[Speaker 1]: yes we can [Speaker 2]: no we cannot [Speaker 1]: okay then",
    "the [T:310] quick [T:355] brown [T:402] fox [T:467] _ [T:980] jumps [T:15] over [T:60]",
    "can you transcribe the speech into a written format",
    "0 1 2 3 4 5 6 7 8 9 10 25 50 75 99 100 250 500 750 999 [T:0] [T:9] [Speaker 3]: [Speaker 4]:",
]


def random_checkpoint(path: str | Path, seed: int = 0, dtype: str = "float32",
                      cat_hidden_layers: Sequence[int] = (1,), tag_bias: float = 4.0) -> Path:
    """Write a randomly initialised Granite Speech Plus checkpoint (tiny: a 2-layer encoder whose layer
    `cat_hidden_layers` feed the projector too) with a tokenizer trained on tagged text. The LM head
    rows of the tag pieces (`[`, `T`, `:`, `]`, `]:`, `Speaker`, digits, `_`) are scaled by `tag_bias`,
    so the random model emits tag soup: well-formed tags, broken ones, tags without words, times
    going backwards. Tests and benchmarks only."""
    torch, transformers = _imports()
    dims = SIZES["tiny"]
    tokenizer = build_tokenizer(corpus=TAG_CORPUS)
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    cat = list(cat_hidden_layers) or None
    enc_hidden = dims["encoder"]["hidden_dim"] * ((len(cat) if cat else 0) + 1)
    config = transformers.GraniteSpeechPlusConfig(**config_fields(
        dims, tokenizer, audio_id, vocab=len(tokenizer), max_positions=16384, encoder_hidden=enc_hidden,
        cat_hidden_layers=cat))
    torch.manual_seed(seed)
    model = transformers.GraniteSpeechPlusForConditionalGeneration(config).eval()
    tags = {i for i in tokenizer("[T:45] _ [T:82] [Speaker 1]: [Speaker 2]:")["input_ids"]}
    digits = {i for d in "0123456789" for i in tokenizer(d)["input_ids"]} - tags
    with torch.no_grad():
        model.lm_head.weight[sorted(tags)] *= tag_bias
        model.lm_head.weight[sorted(digits)] *= tag_bias ** 0.5
    return save_checkpoint(model, tokenizer, path, dtype)
