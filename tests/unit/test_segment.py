"""operators.audio.segment: cuts only at pauses, segments tile the audio, stitch joins texts."""

from __future__ import annotations

import numpy as np
import pytest

import audio_fixtures as af
from operators.config import SegmentConfig
from operators.audio.segment import plan_segments, stitch

SR = 16_000


def _assert_tiles(starts, ends, n):
    assert len(starts) == len(ends) >= 1
    assert starts[0] == 0
    assert ends[-1] == n
    for i in range(len(starts) - 1):
        assert ends[i] == starts[i + 1]
    assert all(e > s for s, e in zip(starts, ends))
    assert all(isinstance(v, int) for v in starts + ends)


@pytest.mark.parametrize("seconds", [0.5, 10.0, 30.0])
def test_short_audio_is_one_segment(seconds):
    audio = af.tone(seconds)
    assert plan_segments(audio) == ([0], [len(audio)])


def test_exactly_max_is_one_segment():
    cfg = SegmentConfig(max_segment_s=10.0, min_segment_s=2.0)
    audio = af.tone(10.0)
    assert plan_segments(audio, cfg) == ([0], [10 * SR])


# bursts of 4..6.5 s, pauses of 0.5 s: ~95 s in total; any 8 s search window holds a whole pause
BURSTS = [5.0, 6.5, 4.0, 6.0, 4.5, 5.5, 6.2, 4.2, 5.8, 4.8, 5.9, 4.1, 5.2, 6.3, 4.6, 5.1, 4.0]


@pytest.fixture(scope="module")
def paused():
    audio, silences = af.pause_clip(BURSTS, pause_s=0.5)
    return audio, silences


def test_paused_clip_is_about_95s(paused):
    audio, silences = paused
    assert 94.0 <= len(audio) / SR <= 96.0
    assert len(silences) == len(BURSTS) - 1


@pytest.mark.parametrize("max_s,min_s,window_s", [(30.0, 5.0, 8.0), (20.0, 5.0, 8.0), (12.0, 3.0, 8.0)])
def test_cuts_fall_inside_pauses(paused, max_s, min_s, window_s):
    audio, silences = paused
    cfg = SegmentConfig(max_segment_s=max_s, min_segment_s=min_s, search_window_s=window_s)
    starts, ends = plan_segments(audio, cfg)
    n = len(audio)
    _assert_tiles(starts, ends, n)
    assert len(starts) >= int(np.ceil(n / (max_s * SR)))
    for s, e in zip(starts, ends):
        assert e - s <= max_s * SR
    for s, e in zip(starts[:-1], ends[:-1]):  # every segment but the last respects the minimum
        assert e - s >= min_s * SR
    for cut in ends[:-1]:
        inside = [(a, b) for a, b in silences if a <= cut < b]
        assert inside, f"cut at {cut / SR:.3f} s is not inside any pause"


def test_cut_prefers_the_latest_pause_in_the_window(paused):
    """Among equally quiet pauses in the search window, the latest one wins (segments stay long)."""
    audio, silences = paused
    cfg = SegmentConfig(max_segment_s=30.0, min_segment_s=5.0, search_window_s=8.0)
    starts, ends = plan_segments(audio, cfg)
    first_cut = ends[0]
    candidates = [(a, b) for a, b in silences if 22 * SR <= a and b <= 30 * SR]
    assert candidates
    a, b = candidates[-1]
    assert a <= first_cut < b


def test_continuous_tone_is_still_cut_at_max():
    audio = af.tone(95.0, freq=200.0)
    cfg = SegmentConfig()
    starts, ends = plan_segments(audio, cfg)
    _assert_tiles(starts, ends, len(audio))
    assert len(starts) >= 4
    assert max(e - s for s, e in zip(starts, ends)) <= 30 * SR
    # no pause anywhere: cuts land near the limit, not early
    for s, e in zip(starts[:-1], ends[:-1]):
        assert e - s >= 22 * SR


def test_noise_without_pause_still_respects_limits():
    audio = (0.3 * np.random.default_rng(3).standard_normal(70 * SR)).astype(np.float32)
    starts, ends = plan_segments(audio, SegmentConfig(max_segment_s=25.0, min_segment_s=5.0))
    _assert_tiles(starts, ends, len(audio))
    assert all(e - s <= 25 * SR for s, e in zip(starts, ends))
    assert all(e - s >= 5 * SR for s, e in zip(starts[:-1], ends[:-1]))


def test_just_over_max():
    cfg = SegmentConfig(max_segment_s=10.0, min_segment_s=2.0, search_window_s=4.0)
    audio = af.tone(10.0 + 1 / SR * 5)
    starts, ends = plan_segments(audio, cfg)
    _assert_tiles(starts, ends, len(audio))
    assert len(starts) == 2
    assert ends[0] <= 10 * SR and ends[0] >= 6 * SR


@pytest.mark.parametrize("audio", [np.zeros(60 * SR, np.float32), np.zeros(0, np.float32),
                                   np.full(40 * SR, 5e-5, np.float32)],
                         ids=["zeros", "empty", "below-silence-peak"])
def test_silent_audio_has_no_segments(audio):
    assert plan_segments(audio) == ([], [])


def test_silence_peak_is_configurable():
    audio = np.full(SR, 5e-5, np.float32)
    assert plan_segments(audio, SegmentConfig(silence_peak=1e-5)) == ([0], [SR])


def test_stitch_joins_texts_and_gives_seconds():
    text, segs = stitch([" hello there ", "", "general kenobi"], [0, 16000, 24000], [16000, 24000, 40000])
    assert text == "hello there general kenobi"
    assert segs == [
        {"start_s": 0.0, "end_s": 1.0, "text": "hello there"},
        {"start_s": 1.0, "end_s": 1.5, "text": ""},
        {"start_s": 1.5, "end_s": 2.5, "text": "general kenobi"},
    ]


def test_stitch_rounds_to_milliseconds():
    _, segs = stitch(["a"], [1], [16_001])
    assert segs == [{"start_s": 0.0, "end_s": 1.0, "text": "a"}]
    _, segs = stitch(["a"], [24], [16_008])
    assert segs[0]["start_s"] == 0.002 and segs[0]["end_s"] == 1.0


def test_stitch_no_space_joiner():
    text, segs = stitch(["こんにちは", "  ", "世界"], [0, 100, 200], [100, 200, 300], joiner="")
    assert text == "こんにちは世界"
    assert [s["text"] for s in segs] == ["こんにちは", "", "世界"]


def test_stitch_empty():
    assert stitch([], [], []) == ("", [])
