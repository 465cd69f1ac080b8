"""granite-ar backend on a tiny random Granite Speech checkpoint (built in code, saved, loaded through
the public loader): prompts, audio-token expansion, agreement with transformers' own single-clip path,
batch invariance, loop flagging (and the opt-in loop stop) and per-clip errors. Random weights: the text is garbage, the
structure and the token ids are what is checked."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from operators.asr import load_backend  # noqa: E402
from operators.asr.base import TaskSpec, Transcript  # noqa: E402
from operators.asr.features import log_mel  # noqa: E402
from operators.asr.granite_ar import (AUDIO_TOKEN, LANGUAGE_NAMES, TRANSLATION_PAIRS, GraniteARBackend,  # noqa: E402
                                      _repeating_tail, _RowGuard, _trim_loop, has_loop, audio_embed_size, instruction,
                                      random_checkpoint)
from operators.config import ModelConfig  # noqa: E402

SR = 16_000
LENGTHS_S = (0.5, 1.2, 2.0, 2.7, 3.3, 4.1, 5.0, 6.4)


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.2 * np.sin(2 * np.pi * (150 + 40 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead (and noise on a shared box)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("granite-ar-tiny"))


@pytest.fixture(scope="module")
def backend(ckpt) -> GraniteARBackend:
    b = load_backend("granite-ar", ModelConfig(id=str(ckpt), device="cpu"))
    assert isinstance(b, GraniteARBackend)
    return b


@pytest.fixture(scope="module")
def unguarded(ckpt) -> GraniteARBackend:
    """Same weights, loop detection off entirely: generation runs to EOS or the budget."""
    return load_backend("granite-ar", ModelConfig(id=str(ckpt), device="cpu",
                                                  options={"repeat_max_period": 0}))


@pytest.fixture(scope="module")
def clips():
    return [_clip(s, i) for i, s in enumerate(LENGTHS_S)]


# ------------------------------------------------------------------ prompts


def test_instructions_follow_the_model_card():
    assert instruction("transcribe") == "transcribe the speech with proper punctuation and capitalization."
    assert instruction("transcribe_raw") == "can you transcribe the speech into a written format?"
    assert instruction("transcribe", keywords=("kw1", "kw2")) == "transcribe the speech to text. Keywords: kw1, kw2"
    assert instruction("transcribe_raw", keywords=("NASA",)) == \
        "can you transcribe the speech into a written format? Keywords: NASA"
    for code, name in LANGUAGE_NAMES.items():
        assert instruction("translate", code) == \
            f"translate the speech to {name} with proper punctuation and capitalization."
        assert instruction("translate", code, ("kw1", "kw2")) == f"translate the speech to {name}. Keywords: kw1, kw2"
    with pytest.raises(ValueError, match="target language"):
        instruction("translate", "ko")


def test_translation_pairs_are_english_centred():
    assert {s for s, t in TRANSLATION_PAIRS if t == "en"} == {"fr", "de", "es", "pt", "ja"}
    assert {t for s, t in TRANSLATION_PAIRS if s == "en"} == {"fr", "de", "es", "pt", "ja", "it", "zh"}
    assert all("en" in pair for pair in TRANSLATION_PAIRS)


@pytest.mark.parametrize("kind,target,keywords", [
    ("transcribe", None, ()), ("transcribe_raw", None, ()), ("transcribe", None, ("Granite", "Ray Data")),
    *[("translate", t, ()) for t in sorted(LANGUAGE_NAMES)], ("translate", "de", ("kw1",)),
])
def test_prompt_goes_through_the_chat_template(backend, kind, target, keywords):
    spec = TaskSpec("translate" if kind == "translate" else kind, target, keywords)
    text = backend.prompt_text(kind, spec)
    expected = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": AUDIO_TOKEN + instruction(kind, target, keywords)}], tokenize=False,
        add_generation_prompt=True)
    assert text == expected
    assert text.count(AUDIO_TOKEN) == 1
    assert text.startswith("<|start_of_role|>user<|end_of_role|><|audio|>")
    assert text.endswith("<|start_of_role|>assistant<|end_of_role|>")
    if keywords:
        assert "Keywords: " + ", ".join(keywords) in text


@pytest.mark.parametrize("n", [320, 479, 480, 4_799, 4_800, 16_000, 16_159, 16_160, 48_001, 480_000])
def test_audio_token_count_matches_the_feature_extractor(n):
    from transformers.models.granite_speech.feature_extraction_granite_speech import \
        GraniteSpeechFeatureExtractor

    # the extractor's own method (its constructor needs torchaudio; the method needs only these)
    fake = SimpleNamespace(melspec_kwargs={"hop_length": 160}, projector_window_size=15,
                           projector_downsample_rate=5)
    assert audio_embed_size(n) == GraniteSpeechFeatureExtractor._get_num_audio_features(fake, [n])[0]
    assert audio_embed_size(n) == 3 * math.ceil(((n // 160 + 1) // 2) / 15)
    # the encoder sees exactly the frames the count assumes
    assert log_mel(np.zeros(n, np.float32), "ar").shape[0] == (n // 160 + 1) // 2


def test_audio_token_expansion_mirrors_the_processor(backend):
    """The processor repeats `<|audio|>` in the prompt text, then tokenizes; prompt_ids expands the id."""
    for kind, spec in [("transcribe", TaskSpec()), ("translate", TaskSpec("translate", "ja", ("東京",)))]:
        for k in (3, 30, 93):
            text = backend.prompt_text(kind, spec).replace(AUDIO_TOKEN, AUDIO_TOKEN * k)
            ids = backend.prompt_ids(kind, spec, k)
            assert ids == backend.tokenizer(text)["input_ids"]
            assert ids.count(backend.audio_token_id) == k


# ------------------------------------------------------------------ model paths


def test_single_clip_matches_transformers_native_path(unguarded, clips):
    """One clip, no padding anywhere: our inputs (features, expanded prompt, merged embeddings) give
    the tokens transformers' own generate gives from input_ids + input_features."""
    b = unguarded
    for clip in (clips[1], clips[6]):
        n_tok = audio_embed_size(len(clip))
        prompt = b.prompt_ids("transcribe", TaskSpec(), n_tok)
        budget = b.budget("transcribe", len(clip))
        feats = log_mel(torch.as_tensor(clip), "ar")[None]
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            native = b.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=feats,
                                      input_features_mask=torch.ones((1, n_tok), dtype=torch.bool),
                                      max_new_tokens=budget, do_sample=False, num_beams=1,
                                      pad_token_id=b.pad_id)[0, len(prompt):].tolist()
        [(ours, stop)] = b.generate([prompt], [b.encode(clip)], [budget])
        assert native[:len(ours)] == ours
        assert len(ours) >= 5
        if stop == "eos":
            assert native[len(ours)] in b.eos_ids
        else:
            assert stop == "max_new_tokens" and len(ours) == budget


def test_batched_generation_is_token_identical_to_one_by_one(unguarded, clips):
    b = unguarded
    prompts = [b.prompt_ids("transcribe", TaskSpec(), audio_embed_size(len(c))) for c in clips]
    embeds = [b.encode(c) for c in clips]
    budgets = [b.budget("transcribe", len(c)) for c in clips]
    batched = b.generate(prompts, embeds, budgets)
    alone = [b.generate([p], [e], [n])[0] for p, e, n in zip(prompts, embeds, budgets)]
    assert batched == alone
    # not vacuous: different prompts lengths and outputs, more than a handful of tokens each
    assert len({len(p) for p in prompts}) == len(prompts)
    assert len({tuple(t) for t, _ in batched}) == len(clips)
    assert all(len(t) >= 5 for t, _ in batched)


def test_batched_transcribe_equals_one_by_one_with_mixed_tasks(backend, clips):
    tasks = [TaskSpec(), TaskSpec("translate", "ja"), TaskSpec("transcribe+translate", "fr", ("Granite",)),
             TaskSpec("transcribe_raw"), None, TaskSpec("translate", "en"), TaskSpec("transcribe", None, ("kw",)),
             TaskSpec("transcribe_raw+translate", "de")]
    langs = ["en", "en", "en", None, "en", "ja", "en", "en"]
    batched = backend.transcribe(clips, langs, tasks)
    alone = [backend.transcribe([c], [lang], [t])[0] for c, lang, t in zip(clips, langs, tasks)]
    assert all(isinstance(r, Transcript) for r in batched)
    assert [(r.text, r.translation, r.extras) for r in batched] == [(r.text, r.translation, r.extras) for r in alone]
    for r, t in zip(batched, tasks):
        t = t or TaskSpec()
        assert (r.translation is not None) == t.translates
        if t.transcription is None:
            assert r.text == ""
    # the two-argument call still works (plain transcription)
    plain = backend.transcribe(clips[:2], ["en", "en"])
    assert [p.text for p in plain] == [backend.transcribe([c], ["en"], [TaskSpec()])[0].text for c in clips[:2]]


def test_per_clip_errors_leave_the_others_alone(backend, clips):
    tasks = [TaskSpec(), TaskSpec(), TaskSpec("translate", "de"), TaskSpec(), TaskSpec("translate", "ko")]
    audios = [clips[2], np.zeros(100, np.float32), clips[3], np.zeros(int(31 * SR), np.float32), clips[4]]
    langs = ["en", "en", "fr", "en", "en"]  # fr -> de is not a pair the model has
    out = backend.transcribe(audios, langs, tasks)
    assert isinstance(out[0], Transcript)
    assert isinstance(out[1], ValueError) and "too short" in str(out[1])
    assert isinstance(out[2], ValueError) and "fr->de" in str(out[2])
    assert isinstance(out[3], ValueError) and "30 s" in str(out[3])
    assert isinstance(out[4], ValueError) and "ko" in str(out[4])
    assert out[0].text == backend.transcribe([clips[2]], ["en"])[0].text


# ------------------------------------------------------------------ repetition guard


def test_repeating_tail_and_trim():
    assert _repeating_tail([5] * 24, 16, 4, 24) == 1
    assert _repeating_tail([5] * 23, 16, 4, 24) is None
    loop = [9, 8] + [1, 2, 3] * 8
    assert _repeating_tail(loop, 16, 4, 24) == 3
    assert _trim_loop(loop, 3) == [9, 8, 1, 2, 3]
    assert _repeating_tail(list(range(40)), 16, 4, 24) is None
    # a long period needs min_repeats copies: 4 x 10 tokens
    ten = list(range(100, 110))
    assert _repeating_tail(ten * 3, 16, 4, 24) is None and _repeating_tail(ten * 4, 16, 4, 24) == 10
    guard = _RowGuard([100, 100, 5], 16, 4, 24, "cpu")
    ids = torch.tensor([[7] * 10 + [1, 2, 3] * 8, [7] * 10 + list(range(24)), [7] * 34])
    guard.start = 10
    assert guard(ids, None).tolist() == [True, False, True]


def _scripted_lm_head(backend, monkeypatch, rows):
    """Replace the LM head's output with scripted greedy choices: rows[r](step) is row r's next token."""
    step = {"n": 0}
    vocab = backend.model.config.text_config.vocab_size

    def lm_head(hidden):
        k = step["n"]
        step["n"] += 1
        logits = torch.zeros(hidden.shape[:-1] + (vocab,), dtype=hidden.dtype)
        for r, choose in enumerate(rows):
            logits[r, ..., choose(k)] = 1.0
        return logits

    monkeypatch.setattr(backend.model.lm_head, "forward", lm_head)
    return step


@pytest.fixture(scope="module")
def stopper(ckpt) -> GraniteARBackend:
    return load_backend("granite-ar", ModelConfig(id=str(ckpt), device="cpu", options={"stop_on_loop": True}))


def test_a_row_the_model_ends_is_never_rewritten(backend, clips, monkeypatch):
    """Row 0 repeats one token 27 times then ends; row 1 loops a 3-gram until its budget. By default
    both come back exactly as generated, flagged loop_suspected; nothing is trimmed."""
    eos = min(backend.eos_ids)
    step = _scripted_lm_head(backend, monkeypatch, [lambda k: 77 if k < 27 else eos, lambda k: 50 + k % 3])
    a, c = clips[5], clips[6]
    prompts = [backend.prompt_ids("transcribe", TaskSpec(), audio_embed_size(len(x))) for x in (a, c)]
    out = backend.generate(prompts, [backend.encode(a), backend.encode(c)], [64, 64])
    assert out[0] == ([77] * 27, "eos")
    assert out[1] == ([50 + k % 3 for k in range(64)], "max_new_tokens")
    step["n"] = 0
    results = backend.transcribe([a, c], ["en", "en"])
    assert [r.loop_suspected for r in results] == [True, True]
    assert results[0].text == backend.tokenizer.decode([77] * 27, skip_special_tokens=True).strip()


def test_stop_on_loop_is_opt_in_and_cuts_loops(stopper, clips, monkeypatch):
    """With stop_on_loop, row 0's endless 3-gram is cut to one copy while row 1 runs to its own EOS."""
    eos = min(stopper.eos_ids)
    step = _scripted_lm_head(stopper, monkeypatch, [lambda k: 50 + k % 3, lambda k: 100 + k if k < 30 else eos])
    a, c = clips[5], clips[6]
    prompts = [stopper.prompt_ids("transcribe", TaskSpec(), audio_embed_size(len(x))) for x in (a, c)]
    out = stopper.generate(prompts, [stopper.encode(a), stopper.encode(c)], [64, 64])
    assert out[0] == ([50, 51, 52], "repetition")
    assert out[1] == (list(range(100, 130)), "eos")
    assert step["n"] == 31  # the batch ran until row 1's EOS, not to the 64-token budget


def test_has_loop_finds_runs_anywhere():
    assert has_loop([9] + [5] * 27 + [3, 4], 16, 4, 24)
    assert not has_loop([9] + [5] * 22 + [3, 4], 16, 4, 24)
    assert has_loop([1, 2] + [7, 8, 9] * 8 + [4], 16, 4, 24)
    assert not has_loop(list(range(60)), 16, 4, 24)
    assert not has_loop(list(range(100, 110)) * 3, 16, 4, 24) and has_loop(list(range(100, 110)) * 4, 16, 4, 24)


def test_default_transcripts_equal_the_model_card_recipe(backend, clips):
    """Clip for clip, the job's default output is what the card's recipe gives: the chat-template
    prompt with `<|audio|>` expanded, transformers' own generate (greedy, max_new_tokens=200) on the
    clip alone, decoded with skip_special_tokens."""
    results = backend.transcribe(clips, ["en"] * len(clips))
    for clip, ours in zip(clips, results):
        n_tok = audio_embed_size(len(clip))
        prompt = backend.prompt_ids("transcribe", TaskSpec(), n_tok)
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            new = backend.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids),
                input_features=log_mel(torch.as_tensor(clip), "ar")[None],
                input_features_mask=torch.ones((1, n_tok), dtype=torch.bool), max_new_tokens=200,
                do_sample=False, num_beams=1, pad_token_id=backend.pad_id)[0, len(prompt):]
        assert ours.text == backend.tokenizer.decode(new, skip_special_tokens=True).strip()
    # not vacuous: rows the model ends itself after more tokens than a duration-scaled budget allows
    scaled = [max(32, -(-200 * len(c) // (30 * SR))) for c in clips]
    assert any(r.extras["stop"]["transcribe"] == "eos" and r.extras["tokens"]["transcribe"] > n
               for r, n in zip(results, scaled))


def test_budget_is_the_cards_unless_scaled(backend, ckpt):
    assert backend.budget("transcribe", 30 * SR) == 200
    assert backend.budget("transcribe", SR // 2) == 200
    assert backend.budget("translate", 15 * SR) == 300
    scaled = load_backend("granite-ar", ModelConfig(id=str(ckpt), device="cpu",
                                                    options={"scale_budget_by_duration": True}))
    assert scaled.budget("transcribe", 30 * SR) == 200
    assert scaled.budget("transcribe", 15 * SR) == 100
    assert scaled.budget("translate", 30 * SR) == 300
    assert scaled.budget("transcribe", SR // 2) == 32  # floor for short clips


def test_identity_without_loading(ckpt):
    model_id, revision = GraniteARBackend.identity(ModelConfig(id=str(ckpt)))
    assert model_id == str(ckpt) and revision.startswith("local-")
    assert GraniteARBackend.identity(ModelConfig(id=None, revision="abc")) == \
        ("ibm-granite/granite-speech-4.1-2b", "abc")


def test_unknown_option_is_named(ckpt):
    with pytest.raises(ValueError, match="max_tokens"):
        GraniteARBackend(ModelConfig(id=str(ckpt), options={"max_tokens": 3}))


def test_batched_encoder_matches_transformers_per_clip(backend, ckpt, clips):
    """The masked batched encoder + projector gives each clip the audio tokens transformers' own
    get_audio_features gives it alone, and the transcripts are the same as the per-clip path's."""
    batched = backend.encode_batch(clips)
    for clip, ours in zip(clips, batched):
        alone = backend.encode(clip)
        assert ours.shape == alone.shape == (audio_embed_size(len(clip)), alone.shape[-1])
        torch.testing.assert_close(ours, alone, rtol=1e-4, atol=1e-5)
    per_clip = load_backend("granite-ar", ModelConfig(id=str(ckpt), device="cpu",
                                                      options={"batched_encoder": False}))
    langs = ["en"] * len(clips)
    assert [t.text for t in backend.transcribe(clips, langs)] == [t.text for t in per_clip.transcribe(clips, langs)]
    # not vacuous: the clips differ in length, so the batch really is padded
    assert len({len(c) for c in clips}) == len(clips)
