"""operators.asr.words: the tolerant Plus tag parser (property tests over seeded random tag soup, round trips
of well-formed output, each kind of damage flagged), stitching across segments, the timestamp sanity
check and speaker turns. No model, no Ray."""

from __future__ import annotations

import random
import re

import pytest

from operators.asr.words import attach, parse, speaker_label, speaker_turns, timestamp_problem

VOCAB = ["hello", "world", "good", "morning", "yes", "no", "the", "quick", "fox", "café", "o'clock", "x"]
TAG = re.compile(r"\[\s*(T|Speaker)\b", re.IGNORECASE)


def _truth(rng: random.Random, n: int, silences: bool = True) -> list[tuple[str, int]]:
    """Words (or `_` silences) with increasing end times in centiseconds; gaps below 9 s."""
    t, out = 0, []
    for _ in range(n):
        t += rng.randint(0, 120) if rng.random() < 0.9 else rng.randint(120, 890)
        out.append(("_" if silences and rng.random() < 0.15 else rng.choice(VOCAB), t))
    return out


def _render(words: list[tuple[str, int]], rng: random.Random) -> str:
    """The card's timestamp format: `word [T:N]`, N modulo 1000, spacing varied as a model might."""
    return " ".join(f"{w}{rng.choice(['', ' '])}[T:{t % 1000}]" for w, t in words)


SOUP = ["hello", "world", "_", " ", "  ", "[T:45]", "[T:999]", "[T:0]", "[T:1000]", "[T:", "[T:4x]", "[T:]",
        "[ T : 12 ]", "[Speaker 1]:", "[Speaker 2]:", "[Speaker 7]", "[Speaker]:", "[Speaker two]:", "[",
        "]", "]:", ":", "T", "Speaker", "12", "[x]", "\n", "é", "[T:12 ", "[[T:3]]"]


def test_random_tag_soup_never_raises_and_yields_sane_words():
    rng = random.Random(11)
    flagged = 0
    for case in range(3000):
        raw = "".join(rng.choice(SOUP) for _ in range(rng.randint(0, 40)))
        duration = rng.choice([None, 0.0, 3.0, 12.5, 30.0])
        p = parse(raw, duration)
        flagged += p.suspect
        assert p.text == " ".join(w.word for w in p.words)
        assert not TAG.search(p.text), (raw, p.text)
        assert all(w.word and w.word != "_" and not re.search(r"\s", w.word) for w in p.words)
        prev = 0.0
        for w in p.words:
            if w.end_s is None:
                assert w.start_s is None
                continue
            assert 0.0 <= w.start_s <= w.end_s, (raw, w)
            assert w.start_s >= prev - 1e-9, (raw, p.words)
            if duration is not None:
                assert w.end_s <= duration + 1e-9, (raw, duration, w)
            prev = w.end_s
    assert 0 < flagged < 3000  # the soup holds both clean and damaged strings


def test_round_trips_are_not_vacuous():
    """Most generated outputs pass 10 s: the dial wraps, often several times."""
    wraps = [max(t for _, t in _truth(random.Random(seed), random.Random(seed).randint(1, 60))) // 1000
             for seed in range(40)]
    assert sum(w >= 1 for w in wraps) >= 20 and max(wraps) >= 2


@pytest.mark.parametrize("seed", range(40))
def test_well_formed_timestamps_round_trip_with_wraps(seed):
    rng = random.Random(seed)
    truth = _truth(rng, rng.randint(1, 60))
    p = parse(_render(truth, rng))
    assert p.problems == [] and not p.suspect and p.has_times
    assert [w.word for w in p.words] == [w for w, _ in truth if w != "_"]
    assert [w.end_s for w in p.words] == pytest.approx([t / 100 for w, t in truth if w != "_"])
    ends = [t / 100 for _, t in truth]
    # each word starts where the tag before it (word or silence) ended
    k = 0
    for i, (w, t) in enumerate(truth):
        if w == "_":
            continue
        assert p.words[k].start_s == pytest.approx(ends[i - 1] if i else 0.0)
        k += 1


DAMAGE = {
    "missing": ("words without a time tag", lambda ws, i: ws[:i] + [(ws[i][0], None)] + ws[i + 1:]),
    "orphan": ("time tag without a word", lambda ws, i: ws[:i + 1] + [("", ws[i][1])] + ws[i + 1:]),
    "malformed": ("malformed tag", lambda ws, i: ws[:i] + [(ws[i][0], "4x")] + ws[i + 1:]),
    "decreasing": ("decreasing time", lambda ws, i: ws[:i + 1] + [("again", max(0, ws[i][1] - 30))] + ws[i + 1:]),
}


def _render_damaged(words) -> str:
    parts = []
    for w, t in words:
        tag = "" if t is None else f"[T:{t % 1000 if isinstance(t, int) else t}]"
        parts.append(f"{w} {tag}".strip())
    return " ".join(parts)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_each_kind_of_damage_is_repaired_and_flagged(kind):
    problem, damage = DAMAGE[kind]
    for seed in range(30):
        rng = random.Random(seed)
        truth = [(w, t) for w, t in _truth(rng, 12, silences=False)]
        if kind == "decreasing":  # a backward step the dial cannot explain: less than a second
            truth = [(w, 500 + 20 * k) for k, (w, _) in enumerate(truth)]
        i = rng.randrange(1, len(truth) - 1)
        p = parse(_render_damaged(damage(truth, i)), 30.0)
        assert p.suspect and any(x.startswith(problem) for x in p.problems), (kind, p.problems)
        ends = [w.end_s for w in p.words if w.end_s is not None]
        assert ends == sorted(ends)
        assert len(p.words) >= len(truth) - 1


def test_speaker_tag_inside_a_word_keeps_the_word_and_switches_after_it():
    p = parse("[Speaker 1]: good mor[Speaker 2]:ning to you")
    assert [w.word for w in p.words] == ["good", "morning", "to", "you"]
    assert [w.speaker for w in p.words] == [1, 1, 2, 2]
    assert p.problems == ["speaker tag inside a word"]


@pytest.mark.parametrize("seed", range(20))
def test_speaker_turns_round_trip(seed):
    rng = random.Random(seed)
    turns, seen = [], []
    for _ in range(rng.randint(1, 8)):
        n = rng.randint(1, len(seen) + 1)
        if n not in seen:
            seen.append(n)
        turns.append((n, [rng.choice(VOCAB) for _ in range(rng.randint(1, 6))]))
    raw = " ".join(f"[Speaker {n}]: {' '.join(ws)}" for n, ws in turns)
    p = parse(raw)
    assert p.problems == [] and p.has_speakers and p.speakers == seen
    assert [(w.word, w.speaker) for w in p.words] == [(w, n) for n, ws in turns for w in ws]


def test_speakers_out_of_first_appearance_order_are_flagged():
    assert "speakers not numbered by first appearance" in parse("[Speaker 2]: hi [Speaker 1]: yo").problems


def test_time_past_the_clip_end_is_clamped_and_flagged():
    p = parse("a [T:150] b [T:900]", duration_s=3.0)
    assert p.words[-1].end_s == 3.0 and "time past the clip's end" in p.problems


def test_no_input_gives_empty_result():
    for raw in (None, "", "   "):
        p = parse(raw)
        assert p.text == "" and p.words == [] and not p.suspect


# ------------------------------------------------------------------ stitching across segments


class _Res:
    def __init__(self, raw, duration):
        p = parse(raw, duration)
        self.raw_text, self.tags_suspect = raw, p.suspect
        self.words = p.word_dicts()


def test_attach_puts_words_in_file_time_and_labels_speakers_per_segment():
    rec = {"segments": [{"start_s": 0.0, "end_s": 4.0}, {"start_s": 12.5, "end_s": 20.0}]}
    attach(rec, [_Res("hi [T:50] there [T:120]", 4.0), _Res("_ [T:200] bye [T:310]", 7.5)])
    assert [(w["word"], w["start_s"], w["end_s"]) for w in rec["words"]] == [
        ("hi", 0.0, 0.5), ("there", 0.5, 1.2), ("bye", 14.5, 15.6)]
    assert rec["raw_text"] == ["hi [T:50] there [T:120]", "_ [T:200] bye [T:310]"]
    assert rec["tags_suspect"] is False

    rec = {"segments": [{"start_s": 0.0, "end_s": 4.0}, {"start_s": 4.0, "end_s": 9.0}]}
    attach(rec, [_Res("[Speaker 1]: a b [Speaker 2]: c", 4.0), _Res("[Speaker 1]: d [Speaker 2]: e", 5.0)])
    labels = [w["speaker"] for w in rec["words"]]
    assert labels == [speaker_label(0, 1)] * 2 + [speaker_label(0, 2), speaker_label(1, 1), speaker_label(1, 2)]
    assert len(set(labels)) == 4  # segment 2's "Speaker 1" is not segment 1's
    assert rec["speakers"] == [[speaker_label(0, 1), speaker_label(0, 2)], [speaker_label(1, 1), speaker_label(1, 2)]]


def test_attach_leaves_other_backends_rows_alone():
    rec = {"segments": [{"start_s": 0.0, "end_s": 1.0}]}

    class Plain:
        text = "x"

    attach(rec, [Plain()])
    assert set(rec) == {"segments"}


# ------------------------------------------------------------------ sanity rule and turns


def _row(words, segments=((0.0, 10.0),)):
    return {"duration_s": segments[-1][1], "segments": [{"start_s": a, "end_s": b} for a, b in segments],
            "words": [{"word": w, "start_s": s, "end_s": e, "speaker": None} for w, s, e in words]}


def test_timestamp_problem():
    assert timestamp_problem(_row([("a", 0.0, 0.4), ("b", 0.4, 0.9)])) is None
    assert timestamp_problem(_row([("a", 0.0, 0.9), ("b", 0.4, 0.5)])) == "not monotonic"
    assert timestamp_problem(_row([("a", 0.0, 0.4), ("b", 9.0, 11.0)])) == "outside its segment"
    assert timestamp_problem(_row([("a", 5.5, 6.0)], segments=((0.0, 5.0), (7.0, 9.0)))) == "outside its segment"
    dense = [(str(i), i * 0.05, i * 0.05 + 0.05) for i in range(100)]
    assert timestamp_problem(_row(dense)) == "implausible word rate"
    assert timestamp_problem({"words": None}) is None


def test_speaker_turns_from_untimed_words_share_the_segment_by_characters():
    row = {"segments": [{"start_s": 2.0, "end_s": 6.0}],
           "words": [{"word": "aaa", "start_s": None, "end_s": None, "speaker": "seg1-spk1"},
                     {"word": "bbbbbbb", "start_s": None, "end_s": None, "speaker": "seg1-spk2"}]}
    turns = speaker_turns(row)
    assert [t[0] for t in turns] == ["seg1-spk1", "seg1-spk2"]
    assert turns[0][1] == 2.0 and turns[-1][2] == pytest.approx(6.0) and turns[0][2] == pytest.approx(2.0 + 4.0 * 4 / 12)  # 'aaa ' of 'aaa bbbbbbb '


def test_words_map_through_kept_speech_ranges_to_file_time():
    """Voice activity dropped 3-5 s of a file: the model heard 1-3 s then 5-7 s joined. A word after
    the join is placed after the gap; a time on the join ends the first range / starts the second."""
    from operators.asr.words import KeptTime

    sr = 16_000
    to_file = KeptTime([0], [1 * sr, 5 * sr], [3 * sr, 7 * sr], sr)
    assert to_file(0, 1.5, end=True) == 2.5 and to_file(0, 2.5, end=True) == 5.5
    assert to_file(0, 2.0, end=True) == 3.0 and to_file(0, 2.0) == 5.0
    rec = {"segments": [{"start_s": 1.0, "end_s": 7.0}]}
    attach(rec, [_Res("one [T:150] two [T:200] three [T:250]", 4.0)], to_file)
    assert [(w["word"], w["start_s"], w["end_s"]) for w in rec["words"]] == [
        ("one", 1.0, 2.5), ("two", 2.5, 3.0), ("three", 5.0, 5.5)]
    plain = KeptTime([8000, 64000], None, None, sr)   # no voice activity: segment start + clip time
    assert plain(1, 0.25) == 4.25
