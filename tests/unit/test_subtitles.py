"""Subtitle / RTTM / NeMo-words rendering from v4 rows, the `tags` and `timestamps` filter rules, and a
backend plugin found through a real entry point (a dist-info directory on sys.path). No Ray."""

from __future__ import annotations

import sys

import pytest

from operators.labeling.filters import REASONS, FilterRules, drop_reason
from operators.labeling.subtitles import cues, nemo_words, rttm, srt, vtt
from operators.asr.words import attach, parse


class _Res:
    def __init__(self, raw, duration):
        p = parse(raw, duration)
        self.raw_text, self.tags_suspect = raw, p.suspect
        self.words = p.word_dicts()


def _row(segments, audio_id="a"):
    """segments: (start_s, end_s, raw model output)."""
    rec = {"audio_id": audio_id, "status": "ok", "duration_s": segments[-1][1], "language": "en",
           "segments": [{"start_s": a, "end_s": b, "text": None} for a, b, _ in segments]}
    results = [_Res(raw, b - a) for a, b, raw in segments]
    for seg, r in zip(rec["segments"], results):
        seg["text"] = " ".join(w["word"] for w in r.words)
    rec["text"] = " ".join(s["text"] for s in rec["segments"])
    attach(rec, results)
    return rec


def test_cues_break_at_pauses_length_and_speakers():
    words = " ".join(f"w{i} [T:{10 * (i + 1)}]" for i in range(20))       # dense: 0.1 s a word
    row = _row([(0.0, 9.0, words + " _ [T:600] late [T:650]")])
    cs = cues(row)
    assert all(len(text) <= 42 for _, _, text, _ in cs)
    assert " ".join(t for _, _, t, _ in cs) == row["text"]                 # every word, in order
    assert cs[-1][:3] == (6.0, 6.5, "late")                               # the pause starts a cue
    assert all(a <= b for a, b, _, _ in cs) and [c[0] for c in cs] == sorted(c[0] for c in cs)


def test_srt_and_vtt_clock_formats():
    row = _row([(3600.0, 3610.0, "hi [T:150] there [T:275]")])
    assert srt(row) == "1\n01:00:00,000 --> 01:00:02,750\nhi there\n"
    assert vtt(row) == "WEBVTT\n\n01:00:00.000 --> 01:00:02.750\nhi there\n"


def test_rttm_turns_and_nemo_words():
    row = _row([(0.0, 4.0, "[Speaker 1]: yes [Speaker 2]: no no"), (4.0, 6.0, "[Speaker 1]: fine")], "call 7")
    lines = [ln.split() for ln in rttm(row).splitlines()]
    assert [(ln[1], ln[7]) for ln in lines] == [("call_7", "seg1-spk1"), ("call_7", "seg1-spk2"),
                                               ("call_7", "seg2-spk1")]
    assert float(lines[2][3]) == 4.0 and float(lines[2][4]) == 2.0
    words = nemo_words(row)["words"]
    assert [w["speaker"] for w in words] == ["seg1-spk1", "seg1-spk2", "seg1-spk2", "seg2-spk1"]
    assert nemo_words({"words": None}) == {}


def test_tags_and_timestamps_rules():
    assert REASONS[-2:] == ("tags", "timestamps")
    rules = FilterRules(max_compression_ratio=None, max_ngram_repeats=None)
    good = _row([(0.0, 5.0, "one [T:40] two [T:90] three [T:150]")])
    assert drop_reason(good, rules) is None
    suspect = _row([(0.0, 5.0, "one [T:40] two [T:30] three [T:150]")])
    assert suspect["tags_suspect"] and drop_reason(suspect, rules) == "tags"
    assert drop_reason(suspect, FilterRules(drop_tags_suspect=False, max_compression_ratio=None,
                                            max_ngram_repeats=None)) is None   # repaired: still monotonic
    outside = dict(good, words=[dict(w) for w in good["words"]])
    outside["words"][-1]["end_s"] = 7.0
    assert drop_reason(outside, rules) == "timestamps"
    assert drop_reason(outside, FilterRules(check_timestamps=False, max_compression_ratio=None,
                                            max_ngram_repeats=None)) is None
    fast = _row([(0.0, 1.0, " ".join(f"w{i} [T:{5 * (i + 1)}]" for i in range(15)))])
    assert drop_reason(fast, rules) == "timestamps"
    assert drop_reason(fast, FilterRules(max_words_per_s=20, max_compression_ratio=None,
                                         max_ngram_repeats=None)) is None


def test_backend_plugin_through_an_entry_point(tmp_path, monkeypatch):
    from operators import backends as plugins
    from operators.asr import available_backends, backend_class
    from operators.config import load_config

    (tmp_path / "echo_plugin.py").write_text(
        "from operators.asr.base import Transcript\n"
        "class Echo:\n"
        "    name, max_clip_s = 'echo', 30.0\n"
        "    def __init__(self, cfg): self.model_id, self.revision = self.identity(cfg)\n"
        "    @staticmethod\n"
        "    def identity(cfg): return ('echo', '1')\n"
        "    def transcribe(self, audios, languages): return [Transcript(text='x') for _ in audios]\n")
    info = tmp_path / "echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\necho = echo_plugin:Echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins._entry_points.cache_clear()
    try:
        assert "echo" in available_backends()
        assert backend_class("echo").__name__ == "Echo"
        assert load_config(None, ["asr.backend=echo"]).asr.backend == "echo"
    finally:
        monkeypatch.undo()
        sys.modules.pop("echo_plugin", None)
        plugins._entry_points.cache_clear()
    assert "echo" not in available_backends()


def test_plugin_with_no_class_behind_the_entry_point_is_a_config_error(tmp_path, monkeypatch):
    from operators import backends as plugins
    from operators.config import ConfigError, load_config

    info = tmp_path / "gone-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gone\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\ngone = no_such_module_xyz:Cls\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins._entry_points.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"asr\.backend.*entry point 'gone'.*does not load"):
            load_config(None, ["asr.backend=gone"])
    finally:
        monkeypatch.undo()
        plugins._entry_points.cache_clear()
