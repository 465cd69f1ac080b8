"""granite-plus backend on a tiny random Granite Speech Plus checkpoint (built in code: an encoder whose
layer 1 feeds the projector too, a tokenizer trained on tagged text and an LM head leaning to tag
pieces, so the random model writes tag soup): the docs' prompts and system turn, budgets, the masked
batched encoder against transformers' own, batch invariance, the card's recipe clip for clip, scripted
tag sequences through the real model and tokenizer, task and config errors, plugins."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from operators.asr import backend_class, check_model, load_backend  # noqa: E402
from operators.asr.base import TaskSpec  # noqa: E402
from operators.asr.features import log_mel  # noqa: E402
from operators.asr.granite_ar import audio_embed_size  # noqa: E402
from operators.asr.granite_plus import GraniteSpeechPlusBackend, random_checkpoint  # noqa: E402
from operators.config import ConfigError, ModelConfig, load_config  # noqa: E402
from operators.asr.words import parse  # noqa: E402

SR = 16_000
LENGTHS_S = (0.7, 1.9, 3.1, 4.4, 12.0)
SMALL = {"transcribe_tokens_per_60s": 60, "speakers_tokens_per_60s": 60, "timestamps_tokens_per_60s": 90}


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("granite-plus-tiny"))


@pytest.fixture(scope="module")
def backend(ckpt) -> GraniteSpeechPlusBackend:
    """Small budgets: the random model rarely ends by itself."""
    b = load_backend("granite-plus", ModelConfig(id=str(ckpt), device="cpu", options=SMALL))
    assert isinstance(b, GraniteSpeechPlusBackend)
    return b


@pytest.fixture(scope="module")
def clips():
    return [_clip(s, i) for i, s in enumerate(LENGTHS_S)]


# ------------------------------------------------------------------ prompts and budgets

DOCS_SYSTEM = ("Knowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\nYou are Granite, developed "
               "by IBM. You are a helpful AI assistant")
DOCS_USER = {
    "transcribe": "<|audio|> can you transcribe the speech into a written format?",
    "speakers": "<|audio|> Speaker attribution: Transcribe and denote who is speaking by adding [Speaker 1]: and "
                "[Speaker 2]: tags before speaker turns.",
    "timestamps": "<|audio|> Timestamps: Transcribe the speech. After each word, add a timestamp tag showing the "
                  "end time in centiseconds, e.g. hello [T:45] world [T:82]",
}


@pytest.mark.parametrize("task", sorted(DOCS_USER))
def test_prompts_are_the_docs_with_the_system_turn(backend, task):
    expected = backend.tokenizer.apply_chat_template(
        [{"role": "system", "content": DOCS_SYSTEM}, {"role": "user", "content": DOCS_USER[task]}],
        tokenize=False, add_generation_prompt=True)
    assert backend.prompt_text(task) == expected
    ids = backend.prompt_ids(task, TaskSpec(task), 7)
    assert ids.count(backend.audio_token_id) == 7


def test_budgets_follow_the_docs_and_scale_with_length(ckpt):
    b = GraniteSpeechPlusBackend(ModelConfig(id=str(ckpt), device="cpu"))
    assert b.budget("transcribe", 30 * SR) == 2000 and b.budget("speakers", 2 * SR) == 2000
    assert b.budget("timestamps", 30 * SR) == 10000
    assert b.budget("timestamps", 90 * SR) == 15000   # longer than the docs' 60-s clip: more
    scaled = GraniteSpeechPlusBackend(ModelConfig(id=str(ckpt), device="cpu",
                                                  options={"scale_budget_by_duration": True}))
    assert scaled.budget("timestamps", 30 * SR) == 5000   # still ~40x dense timestamped speech
    assert scaled.budget("transcribe", SR // 2) == 64


def test_unknown_option_names_the_backend(ckpt):
    with pytest.raises(ValueError, match="granite-plus options.*max_new_tokens_per_30s"):
        GraniteSpeechPlusBackend(ModelConfig(id=str(ckpt), options={"max_new_tokens_per_30s": 3}))


# ------------------------------------------------------------------ model paths


def test_batched_encoder_reads_cat_hidden_layers_like_transformers(backend, clips):
    assert backend.model.config.encoder_config.cat_hidden_layers == [1]
    batched = backend.encode_batch(clips)
    for clip, ours in zip(clips, batched):
        with torch.inference_mode():
            alone = backend.model.get_audio_features(log_mel(torch.as_tensor(clip), "ar")[None],
                                                     return_dict=True).pooler_output[0]
        assert ours.shape == alone.shape == (audio_embed_size(len(clip)), alone.shape[-1])
        torch.testing.assert_close(ours, alone, rtol=1e-4, atol=1e-5)


def test_batched_equals_one_by_one_with_mixed_tasks(backend, clips):
    tasks = [TaskSpec(t) for t in ("timestamps", "speakers", "transcribe", "timestamps", "speakers")]
    langs = ["en"] * len(clips)
    batched = backend.transcribe(clips, langs, tasks=tasks)
    alone = [backend.transcribe([c], [l], tasks=[t])[0] for c, l, t in zip(clips, langs, tasks)]
    for a, b in zip(batched, alone):
        assert (a.raw_text, a.text, a.words, a.tags_suspect) == (b.raw_text, b.text, b.words, b.tags_suspect)
    assert len({r.raw_text for r in batched}) == len(clips)  # not vacuous: different outputs


def test_real_output_is_parsed_without_exceptions(backend, clips):
    """The random model writes tag soup; every row comes back parsed: text without tags, words whose
    times are monotonic inside the clip, damage flagged."""
    for task in ("timestamps", "speakers", "transcribe"):
        for clip, r in zip(clips, backend.transcribe(clips, ["en"] * len(clips), tasks=[TaskSpec(task)] * len(clips))):
            assert isinstance(r.raw_text, str) and r.raw_text.strip()
            assert "[T:" not in r.text and "[Speaker" not in r.text
            assert r.text == parse(r.raw_text, len(clip) / SR).text or task == "transcribe"
            ends = [w["end_s"] for w in r.words or [] if w["end_s"] is not None]
            assert ends == sorted(ends) and all(e <= len(clip) / SR + 1e-6 for e in ends)
            assert r.tags_suspect is True  # garbage from random weights, cut at the budget
            assert (r.words is None) == (task == "transcribe")


def test_default_output_equals_the_docs_recipe(ckpt, clips):
    """Clip for clip, the default (the docs' budget, 2000 tokens for ASR) gives what the docs' recipe
    gives: system + user chat turns, `<|audio|>` expanded, transformers' generate greedy on the clip
    alone, decoded with skip_special_tokens."""
    b = GraniteSpeechPlusBackend(ModelConfig(id=str(ckpt), device="cpu"))
    two = [clips[0], clips[2]]
    ours = b.transcribe(two, ["en", "en"], tasks=[TaskSpec("transcribe")] * 2)
    for clip, r in zip(two, ours):
        n_tok = audio_embed_size(len(clip))
        ids = torch.tensor([b.prompt_ids("transcribe", TaskSpec(), n_tok)])
        with torch.inference_mode():
            new = b.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   input_features=log_mel(torch.as_tensor(clip), "ar")[None],
                                   input_features_mask=torch.ones((1, n_tok), dtype=torch.bool),
                                   max_new_tokens=2000, do_sample=False, num_beams=1,
                                   pad_token_id=b.pad_id)[0, ids.shape[1]:]
        assert r.raw_text == b.tokenizer.decode(new, skip_special_tokens=True)
        assert r.extras["tokens"]["transcribe"] > 100  # far more than a plain-ASR budget would allow


def _script(backend, monkeypatch, rows):
    """Greedy choices scripted through the real LM head: rows[r] is row r's token list (then EOS)."""
    step = {"n": 0}
    vocab = backend.model.config.text_config.vocab_size
    eos = min(backend.eos_ids)

    def lm_head(hidden):
        k = step["n"]
        step["n"] += 1
        logits = torch.zeros(hidden.shape[:-1] + (vocab,), dtype=hidden.dtype)
        for r, toks in enumerate(rows):
            logits[r, ..., toks[k] if k < len(toks) else eos] = 1.0
        return logits

    monkeypatch.setattr(backend.model.lm_head, "forward", lm_head)


def test_scripted_tags_through_the_model_and_tokenizer(ckpt, clips, monkeypatch):
    """Tag sequences as token ids out of the real generate + decode: a well-formed timestamped output
    (the dial wraps at 10 s) is unwrapped and trusted; damaged ones are repaired and flagged."""
    b = GraniteSpeechPlusBackend(ModelConfig(id=str(ckpt), device="cpu", options={"timestamps_tokens_per_60s": 400}))
    texts = ["hello [T:45] world [T:982] _ [T:3] good [T:55]",          # wraps after 9.82 s
             "hel[Speaker 2]:lo [T:4x] world [T:82] [T:90] again [T:70]",
             "[Speaker 1]: yes we can [Speaker 2]: no [Speaker 1]: okay"]
    rows = [b.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    _script(b, monkeypatch, rows)
    tasks = [TaskSpec("timestamps"), TaskSpec("timestamps"), TaskSpec("speakers")]
    out = b.transcribe([clips[4], clips[3], clips[2]], ["en"] * 3, tasks=tasks)
    good, bad, spk = out
    assert good.raw_text == b.tokenizer.decode(rows[0], skip_special_tokens=True)
    assert good.tags_suspect is False and good.text == "hello world good"
    assert [(w["word"], w["start_s"], w["end_s"]) for w in good.words] == [
        ("hello", 0.0, 0.45), ("world", 0.45, 9.82), ("good", 10.03, 10.55)]
    assert bad.tags_suspect is True and "[" not in bad.text
    assert {"speaker tag inside a word", "time tag without a word", "decreasing time"} <= \
        set(bad.extras["problems"]) and any(p.startswith("malformed tag") for p in bad.extras["problems"])
    assert spk.tags_suspect is False and [w["speaker"] for w in spk.words] == [1, 1, 1, 2, 1]


def test_tasks_it_cannot_do_are_per_clip_errors(backend, clips):
    out = backend.transcribe(clips[:3], ["en"] * 3, tasks=[TaskSpec("translate", "de"), TaskSpec("timestamps"),
                                                           TaskSpec("transcribe", None, ("Granite",))])
    assert isinstance(out[0], Exception) and "translate" in str(out[0])
    assert isinstance(out[2], Exception) and "keywords" in str(out[2])
    assert out[1].words is not None


def test_check_on_the_driver(ckpt):
    from operators.asr.checks import ModelCheckError

    assert "GraniteSpeechPlusForConditionalGeneration" in check_model("granite-plus", ModelConfig(id=str(ckpt)))
    with pytest.raises(ModelCheckError, match="granite_speech_plus.*asr.backend to granite-plus"):
        check_model("granite-ar", ModelConfig(id=str(ckpt)))


def test_config_checks_tasks_against_the_backend():
    cfg = load_config(None, ["asr.backend=granite-plus", "asr.task=timestamps"])
    assert cfg.asr.task == "timestamps"
    with pytest.raises(ConfigError, match=r"asr\.task.*granite-ar.*timestamps.*granite-plus"):
        load_config(None, ["asr.backend=granite-ar", "asr.task=timestamps"])
    with pytest.raises(ConfigError, match=r"asr\.task"):
        load_config(None, ["asr.backend=granite-plus", "asr.task=translate", "asr.target_language=de"])


# ------------------------------------------------------------------ plugins


class GoodPlugin:
    """A user's backend: the protocol, declared tasks, nothing else."""

    name = "echo-plugin"
    max_clip_s = 30.0
    tasks = frozenset({"transcribe", "timestamps"})

    def __init__(self, cfg):
        self.model_id, self.revision = self.identity(cfg)

    @staticmethod
    def identity(cfg):
        return "echo", "1"

    def transcribe(self, audios, languages, tasks=None):
        from operators.asr.base import Transcript

        return [Transcript(text=f"{len(a)} samples") for a in audios]


class NoIdentity:
    name = "broken"
    max_clip_s = 30.0

    def transcribe(self, audios, languages):
        return []


class OddTasks(GoodPlugin):
    tasks = frozenset({"dance"})


def test_plugin_backend_is_a_config_line():
    cfg = load_config(None, [f"asr.backend={__name__}:GoodPlugin", "asr.task=timestamps"])
    assert backend_class(cfg.asr.backend) is GoodPlugin
    b = load_backend(cfg.asr.backend, cfg.asr.model)
    assert b.transcribe([np.zeros(160, np.float32)], ["en"])[0].text == "160 samples"
    with pytest.raises(ConfigError, match=r"asr\.task.*cannot do 'speakers'"):
        load_config(None, [f"asr.backend={__name__}:GoodPlugin", "asr.task=speakers"])


@pytest.mark.parametrize("ref, message", [
    (f"{__name__}:NoIdentity", "identity"),
    (f"{__name__}:OddTasks", "unknown task parts"),
    (f"{__name__}:Missing", "has no 'Missing'"),
    ("no_such_pkg.mod:Cls", "cannot import 'no_such_pkg.mod'"),
    ("not-a-backend", "unknown backend"),
])
def test_bad_plugins_name_the_field_and_the_fix(ref, message):
    with pytest.raises(ConfigError, match=r"asr\.backend") as info:
        load_config(None, [f"asr.backend={ref}"])
    assert message in str(info.value)
