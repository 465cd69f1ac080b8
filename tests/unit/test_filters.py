"""Export filters: each rule removes what it names and nothing else."""

from __future__ import annotations

import pytest

from operators.labeling.filters import FilterRules, compression_ratio, drop_reason, max_ngram_count

GOOD = {"status": "ok", "text": "the weather today is warm and sunny", "duration_s": 3.0,
        "agreement": 0.95, "language": "en", "segments": [{"start_s": 0.0, "end_s": 3.0,
                                                           "text": "the weather today is warm and sunny"}]}


def _with(**kw):
    return {**GOOD, **kw}


def test_a_good_row_passes_every_rule():
    rules = FilterRules(min_duration_s=1, max_duration_s=30, min_chars_per_s=2, max_chars_per_s=25,
                        min_agreement=0.9, languages=["en"])
    assert drop_reason(GOOD, rules) is None


@pytest.mark.parametrize("row,rules,reason", [
    (_with(status="error", text=None), FilterRules(), "error"),
    (_with(text="  "), FilterRules(), "empty"),
    (_with(duration_s=0.5), FilterRules(min_duration_s=1), "duration"),
    (_with(duration_s=40.0), FilterRules(max_duration_s=30), "duration"),
    (_with(duration_s=30.0), FilterRules(min_chars_per_s=2), "chars_per_second"),   # 35 chars in 30 s
    (_with(duration_s=0.5), FilterRules(max_chars_per_s=25), "chars_per_second"),   # 70 chars/s
    (_with(agreement=0.5), FilterRules(min_agreement=0.9), "agreement"),
    (_with(language="fr"), FilterRules(languages=["en", "de"]), "language"),
    (_with(loop_suspected=True), FilterRules(), "loop"),
])
def test_each_rule_names_its_reason(row, rules, reason):
    assert drop_reason(row, rules) == reason


def test_rows_without_agreement_pass_the_agreement_rule():
    assert drop_reason(_with(agreement=None), FilterRules(min_agreement=0.9)) is None


def test_loop_flag_is_dropped_unless_kept():
    assert drop_reason(_with(loop_suspected=False), FilterRules()) is None
    assert drop_reason(_with(loop_suspected=None), FilterRules()) is None      # backends that do not flag
    assert drop_reason(_with(loop_suspected=True), FilterRules(drop_loop_suspected=False)) is None


def test_keep_empty():
    assert drop_reason(_with(text=""), FilterRules(keep_empty=True)) is None


def test_looping_segment_is_repetition_but_a_long_normal_file_is_not():
    loop = "thank you for watching " * 12
    assert compression_ratio(loop) > 2.4 and max_ngram_count(loop) > 4
    row = _with(text="hello there " + loop, duration_s=20.0,
                segments=[{"start_s": 0, "end_s": 2, "text": "hello there"},
                          {"start_s": 2, "end_s": 20, "text": loop}])
    assert drop_reason(row, FilterRules()) == "repetition"
    # forty distinct sentences in forty segments: the whole text would compress well, no segment does
    sentences = [f"sentence number {i} talks about topic {i * 7} and place {i * 13}" for i in range(40)]
    long_row = _with(text=" ".join(sentences), duration_s=400.0,
                     segments=[{"start_s": 10 * i, "end_s": 10 * i + 10, "text": s} for i, s in enumerate(sentences)])
    assert compression_ratio(long_row["text"]) > 2.4
    assert drop_reason(long_row, FilterRules()) is None
