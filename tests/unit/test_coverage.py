"""operators.asr.coverage: dropped-speech detection and its bounded recovery, as pure functions (no Ray,
no model), and the whisper backend's timestamp parsing."""

from __future__ import annotations

import numpy as np
import pytest

from operators.asr import coverage as cv
from operators.asr.base import Transcript

SR = 16_000


def flat(spans):
    return [float(v) for t in spans for v in t[:2]]


def test_speech_spans_strip_pads_at_range_ends_only():
    # two kept ranges of 10 s and 6 s (file samples), joined: kept offsets [0, 10 s) and [10 s, 16 s)
    ss, se = [5 * SR, 30 * SR], [15 * SR, 36 * SR]
    pad = int(0.2 * SR)
    # a segment over both: pad off at each range's own ends
    spans = cv.speech_spans(0, 16 * SR, ss, se, pad)
    assert flat(spans) == pytest.approx([0.2, 9.8, 10.2, 15.8])
    # a segment starting inside the first range (a cut): no pad at the cut
    spans = cv.speech_spans(4 * SR, 16 * SR, ss, se, pad)
    assert flat(spans[:1]) == pytest.approx([0.0, 5.8])
    # no kept ranges (segment.vad none): the whole segment
    assert cv.speech_spans(0, 8 * SR, None, None, pad) == [(0.0, 8.0)]


def test_timed_coverage_full_tail_and_middle_gaps():
    speech = [(0.2, 29.8)]
    full = [[0.0, 6.0, "a"], [6.0, 13.5, "b"], [13.5, 21.0, "c"], [21.0, 29.5, "d"]]
    c = cv.timed_coverage(speech, full)
    assert c.coverage == pytest.approx(1.0) and c.gaps == [] and c.signal == "times"
    # the model stopped at 18 s: 11.8 s of speech uncovered (less the slack)
    stopped = [[0.0, 6.0, "a"], [6.0, 18.0, "b"]]
    c = cv.timed_coverage(speech, stopped)
    assert c.coverage == pytest.approx(1 - (29.8 - 18.5) / 29.6)
    assert flat(c.gaps) == pytest.approx([18.5, 29.8])
    # a sentence skipped in the middle (timestamps jump 10 -> 14.5): a 3.5 s gap
    skipped = [[0.0, 10.0, "a"], [14.5, 29.6, "c"]]
    c = cv.timed_coverage(speech, skipped)
    assert flat(c.gaps) == pytest.approx([10.5, 14.0])
    # a short hole (pause + slack) is no loss
    assert cv.timed_coverage(speech, [[0.0, 10.0, "a"], [11.8, 29.6, "b"]]).coverage == 1.0
    # an unclosed phrase covers nothing; a point (a word's end time) covers its slack
    assert cv.timed_coverage(speech, [[0.0, None, "words words"]]).coverage == 0.0
    points = [[t, t, "w"] for t in np.arange(0.5, 29.8, 0.6)]
    assert cv.timed_coverage(speech, points).coverage == 1.0


def test_uncovered_joins_across_pauses_of_the_speech():
    # speech in three pieces with pauses between; nothing covers the last two: one hole of 2 x 1 s
    speech = [(0.0, 10.0), (10.4, 11.4), (11.8, 12.8)]
    gaps = cv.uncovered(speech, [[0.0, 9.6, "x"]])
    assert flat(gaps) == pytest.approx([10.4, 12.8])
    # each piece alone is under MIN_GAP_S, but joined they are a loss
    assert cv.timed_coverage(speech, [[0.0, 9.6, "x"]]).coverage < 1.0


def test_rate_coverage_against_the_files_own_rate():
    words = [60.0, 62.0, 58.0, 20.0]          # the last segment lost most of its sentences
    secs = [25.0, 25.0, 25.0, 25.0]
    ref = cv.file_rate(words, secs)
    assert ref == pytest.approx(2.36)
    covs = [cv.rate_coverage(w, s, ref) for w, s in zip(words, secs)]
    assert all(c.coverage == 1.0 for c in covs[:3])
    assert covs[3].coverage == pytest.approx(20 / 25 / (cv.RATE_TOLERANCE * ref))
    assert covs[3].coverage < cv.FLAG_BELOW
    # one segment: nothing to compare with, unless it has speech and no words
    assert cv.file_rate([40.0], [20.0]) is None
    assert cv.rate_coverage(40.0, 20.0, None).coverage is None
    assert cv.rate_coverage(0.0, 20.0, None).coverage == 0.0
    assert cv.count_words("東京は晴れです", spaced=False) == pytest.approx(3.5)


def test_segment_and_file_coverage_pick_the_signal_per_backend():
    speech = [[(0.2, 29.8)], [(0.2, 9.8)]]
    timed = [Transcript("a b", extras={"spans": [[0.0, 29.6, "a b"]]}),
             Transcript("c", extras={"spans": [[0.0, 4.0, "c"]]})]
    covs = cv.segment_coverages(timed, speech)
    assert [c.signal for c in covs] == ["times", "times"]
    assert covs[0].coverage == 1.0 and covs[1].coverage < 0.6
    f = cv.file_coverage(covs)
    assert f == pytest.approx((29.6 * 1.0 + 9.6 * covs[1].coverage) / 39.2)
    # word times (granite-plus) count as spans
    plus = Transcript("x y", words=[{"word": "x", "start_s": None, "end_s": 1.0},
                                    {"word": "y", "start_s": None, "end_s": 9.5}])
    assert cv.transcript_spans(plus) == [[1.0, 1.0, "x"], [9.5, 9.5, "y"]]
    # no times (a CTC/NAR backend without alignment, simulated): the rate
    plain = [Transcript("w " * 70), Transcript("w " * 68), Transcript("w " * 20)]
    covs = cv.segment_coverages(plain, [[(0.0, 30.0)]] * 3)
    assert [c.signal for c in covs] == ["rate"] * 3 and covs[2].coverage < 0.6
    assert cv.file_coverage([cv.SegmentCoverage(None, "rate", 5.0, [])]) is None


def test_join_overlap_drops_words_heard_twice():
    assert cv.join_overlap("They left at noon. The summer holidays.", "holidays. She practices") == "She practices"
    assert cv.join_overlap("the summer holidays", "Summer Holidays, she said") == "she said"
    assert cv.join_overlap("one two", "three four") == "three four"
    assert cv.join_overlap("", "three") == "three"


def test_tail_start_and_complete_text():
    speech = [(0.2, 29.8)]
    stopped = Transcript("one two three", extras={"spans": [[0.0, 8.0, "one two"], [8.0, None, "three"]],
                                                  "complete_s": 8.0})
    assert cv.tail_start(stopped, speech) == 8.0
    assert cv.complete_text(stopped) == "one two"
    done = Transcript("all", extras={"spans": [[0.0, 29.0, "all"]], "complete_s": 29.0})
    assert cv.tail_start(done, speech) is None
    assert cv.tail_start(Transcript("no times"), speech) is None
    assert cv.complete_text(Transcript(" plain ")) == "plain"


def test_split_points_fall_in_the_deepest_pauses():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(30 * SR)).astype(np.float32)
    for p in (7.0, 10.3, 19.6, 24.0):                    # pauses of 0.5 s
        audio[int(p * SR): int((p + 0.5) * SR)] *= 0.001
    cuts = cv.split_points(audio, SR)
    assert len(cuts) == 2
    assert 10.3 * SR <= cuts[0] <= 10.8 * SR and 19.6 * SR <= cuts[1] <= 20.1 * SR
    assert cv.split_points(audio[: 3 * SR], SR) == []
    two = cv.split_points(audio[: 14 * SR], SR)         # 14 s -> two pieces, cut in a pause
    assert len(two) == 1 and (7.0 * SR <= two[0] <= 7.5 * SR or 10.3 * SR <= two[0] <= 10.8 * SR)


def test_better_only_when_it_covers_more():
    a = cv.SegmentCoverage(0.6, "times", 30.0, [])
    assert cv.better(a, cv.SegmentCoverage(0.9, "times", 30.0, []))
    assert not cv.better(a, cv.SegmentCoverage(0.6, "times", 30.0, []))
    assert not cv.better(a, cv.SegmentCoverage(None, "rate", 30.0, []))


def test_whisper_timestamp_spans():
    from operators.asr.whisper import timestamp_spans

    tb, eot = 1000, 500

    def decode(ids):
        return " ".join(f"w{i}" for i in ids)

    ts = lambda s: tb + int(round(s / 0.02))  # noqa: E731
    # two closed phrases, then an unclosed one cut by the token budget
    ids = [ts(0.0), 1, 2, ts(2.4), ts(2.4), 3, ts(5.0), ts(5.2), 4, 5]
    text, spans, complete = timestamp_spans(ids, eot, tb, decode)
    assert text == "w1 w2 w3 w4 w5"
    assert spans == [[0.0, 2.4, "w1 w2"], [2.4, 5.0, "w3"], [5.2, None, "w4 w5"]]
    assert complete == pytest.approx(5.0)
    # ending on a single timestamp, special tokens (eot..timestamps) dropped
    text, spans, complete = timestamp_spans([ts(0.0), 7, ts(3.0), eot + 3], eot, tb, decode)
    assert (text, complete) == ("w7", pytest.approx(3.0)) and spans == [[0.0, 3.0, "w7"]]
    assert timestamp_spans([], eot, tb, decode) == ("", [], 0.0)


def test_a_dense_region_over_the_target_is_cut_at_its_deepest_pause_before_the_target():
    """plan_speech on dense speech: one region (no pause reaches min_silence_s) longer than the target
    (30 s) but under the maximum (60 s, granite-nar's) is cut at its deepest pause in the 8 s before the
    target, not sent whole."""
    from operators.config import SegmentConfig
    from operators.audio.segment import plan_speech
    from operators.audio.vad import WINDOW

    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(50 * SR)).astype(np.float32)
    probs = np.ones(-(-len(audio) // WINDOW), np.float32)       # the detector: speech throughout
    for a, b, depth in [(9.0, 9.5, 1e-3), (23.0, 23.5, 1e-3), (25.0, 25.6, 1e-4), (28.0, 28.4, 1e-3),
                        (40.0, 40.5, 1e-3)]:
        audio[int(a * SR): int(b * SR)] *= depth
    cfg = SegmentConfig().for_backend(30.0, 60.0)
    ss, se, gs, ge = plan_speech(audio, cfg, probs)
    assert [round(g / SR, 1) for g in gs][:1] == [0.0] and len(gs) == 2
    assert 25.0 * SR <= gs[1] <= 25.6 * SR                        # the deepest of the three in 22-30 s
    # before issue 18 the region (50 s < 60 s) went to the model whole
    assert max(e - s for s, e in zip(gs, ge)) <= 30 * SR


def test_no_pause_at_all_is_cut_at_the_quietest_point_before_the_target():
    from operators.config import SegmentConfig
    from operators.audio.segment import plan_speech
    from operators.audio.vad import WINDOW

    rng = np.random.default_rng(2)
    audio = (0.1 * rng.standard_normal(45 * SR)).astype(np.float32)
    audio[int(26.0 * SR): int(26.15 * SR)] *= 0.05   # a word gap: quieter, but no pause the detector heard
    probs = np.ones(-(-len(audio) // WINDOW), np.float32)
    ss, se, gs, ge = plan_speech(audio, SegmentConfig().for_backend(30.0, 30.0), probs)
    assert len(gs) == 2 and 25.9 * SR <= gs[1] <= 26.25 * SR


class _FakeWhisper:
    """Timed results: the first try of a long clip stops at `stop_s`; any other clip is covered."""

    def __init__(self, stop_s: float = 12.0):
        self.stop_s, self.calls = stop_s, []

    def __call__(self, audios):
        self.calls.append([len(a) / SR for a in audios])
        out = []
        for a in audios:
            d = len(a) / SR
            end = min(d, self.stop_s) if len(self.calls) == 1 else d - 0.2
            out.append(Transcript(f"said {d:.0f}", extras={"spans": [[0.0, end, f"said {d:.0f}"]],
                                                           "complete_s": end}))
        return out


def test_recover_continues_a_stopped_segment_once_and_counts_it():
    clips = [np.zeros(28 * SR, np.float32), np.zeros(10 * SR, np.float32)]
    speech = [[(0.2, 27.8)], [(0.2, 9.8)]]
    model = _FakeWhisper(stop_s=12.0)
    first = model(clips)
    res, covs, counts = cv.recover(model, clips, first, speech)
    # segment 0 stopped at 12 s: decoded again from CONTEXT_S before 12 s to its end, once
    tail = 28.0 - (12.0 - cv.CONTEXT_S)
    assert model.calls[1] == [pytest.approx(tail)] and len(model.calls) == 2
    assert counts == {"redecoded_segments": 1, "redecode_audio_s": pytest.approx(tail)}
    assert res[0].text == "said 28 said 21" and res[0].extras["recovered"] == "tail"
    assert flat(res[0].extras["spans"]) == pytest.approx([0.0, 12.0, 12.0 - cv.CONTEXT_S, 27.8])
    assert covs[0].coverage == 1.0 and res[1] is first[1]


def test_a_continuation_drops_the_context_it_heard_again():
    # the first try closed its last phrase mid-sentence at 21.9 s; the continuation starts CONTEXT_S
    # earlier and says the context again, partly heard differently, then the lost sentences
    clips = [np.zeros(30 * SR, np.float32)]
    speech = [[(0.2, 29.8)]]
    first = [Transcript("The meeting has been moved to Tuesday afternoon. Our flight was delayed because",
                        extras={"spans": [[0.0, 21.9, "The meeting has been moved to Tuesday afternoon. "
                                                       "Our flight was delayed because"]], "complete_s": 21.9})]
    done, at = 21.9, 21.9 - cv.CONTEXT_S

    def call(audios):
        assert [len(a) / SR for a in audios] == [pytest.approx(30.0 - at, abs=1e-3)]
        return [Transcript("x", extras={"complete_s": 12.8, "spans": [
            [0.0, 1.0, "Tuesday afternoon."],   # context only: ends before the first try's last point
            [1.0, 8.0, "Our fight was delayed because of the storm."],   # straddles it
            [8.0, 12.8, "He drove the car to the airport yesterday."]]})]

    res, covs, _ = cv.recover(call, clips, first, speech)
    assert res[0].text == ("The meeting has been moved to Tuesday afternoon. Our flight was delayed because "
                           "of the storm. He drove the car to the airport yesterday.")
    assert [s[0] for s in res[0].extras["spans"]] == pytest.approx([0.0, at + 1.0, at + 8.0])
    assert covs[0].coverage == 1.0 and done > at


def test_join_overlap_takes_long_and_slightly_different_repeats():
    before = "the meeting has been moved to tuesday afternoon. our flight was delayed because"
    assert cv.join_overlap(before, "moved to Tuesday afternoon. Our flight was delayed because of the storm") \
        == "of the storm"
    # a word cut at the continuation's start comes out as noise; one word heard differently
    assert cv.join_overlap(before, "zz moved to Tuesday afternoon. Our fight was delayed because of it") == "of it"
    # no run of the end of `before` at the start: nothing dropped
    assert cv.join_overlap(before, "The storm was over by noon") == "The storm was over by noon"


def test_recover_keeps_the_first_result_when_the_second_try_is_no_better():
    clips = [np.zeros(28 * SR, np.float32)]
    speech = [[(0.2, 27.8)]]

    def stuck(audios):  # the continuation hears nothing either
        return [Transcript("", extras={"spans": [], "complete_s": 0.0}) for _ in audios]

    first = [Transcript("said", extras={"spans": [[0.0, 12.0, "said"]], "complete_s": 12.0})]
    res, covs, counts = cv.recover(stuck, clips, first, speech)
    assert res[0] is first[0] and covs[0].coverage < cv.FLAG_BELOW
    assert counts["redecoded_segments"] == 1  # tried (and counted) once; never again


def test_recover_splits_an_untimed_segment_at_its_pauses():
    rng = np.random.default_rng(0)
    loud = (0.1 * rng.standard_normal(30 * SR)).astype(np.float32)
    for p in (9.8, 19.7):
        loud[int(p * SR): int((p + 0.5) * SR)] *= 0.001
    clips = [loud, loud.copy(), loud.copy()]
    speech = [[(0.0, 30.0)]] * 3
    first = [Transcript("w " * 70), Transcript("w " * 72), Transcript("w " * 20)]  # the last lost most
    seen = []

    def call(audios):
        seen.append([round(len(a) / SR, 1) for a in audios])
        return [Transcript("w " * int(len(a) / SR * 2.4)) for a in audios]

    res, covs, counts = cv.recover(call, clips, first, speech)
    assert len(seen) == 1 and len(seen[0]) == 3 and sum(seen[0]) == pytest.approx(30.0, abs=0.1)
    assert counts["redecoded_segments"] == 1 and counts["redecode_audio_s"] == pytest.approx(30.0)
    assert res[2].extras["recovered"] == "split" and covs[2].coverage == 1.0
    assert res[0] is first[0] and res[1] is first[1]


def test_recover_batch_sends_every_file_in_one_call_and_skips_what_it_must_not_merge():
    clips = [np.zeros(28 * SR, np.float32)]
    speech = [[(0.2, 27.8)]]
    stopped = Transcript("said", extras={"spans": [[0.0, 12.0, "said"]], "complete_s": 12.0})
    tagged = Transcript("said", raw_text="said [T:3]", extras={"spans": [[0.0, 12.0, "said"]]})
    got = []

    def call(owners, audios):
        got.append(list(owners))
        return [Transcript("more", extras={"spans": [[0.0, 15.6, "more"]], "complete_s": 15.6})
                for _ in audios]

    files = [cv.FileItem(clips, [stopped], speech), cv.FileItem(clips, [tagged], speech),
             cv.FileItem(clips, [stopped], speech, recover=False), cv.FileItem(clips, [stopped], speech)]
    res, covs, counts = cv.recover_batch(call, files)
    assert got == [[0, 3]]
    assert [c["redecoded_segments"] for c in counts] == [1, 0, 0, 1]
    assert res[0][0].text == "said more" and res[1][0] is tagged and res[2][0] is stopped
    assert covs[2][0].coverage < cv.FLAG_BELOW  # flagged, not recovered


class _StoppingBackend:
    """A backend (no model) with whisper's timed results: on its first call a clip over 20 s stops at
    12 s; every later call covers its clip."""

    name, model_id, revision = "fake-timed", "fake", "0"

    def __init__(self):
        self.calls = []

    def transcribe(self, audios, languages):
        self.calls.append([len(a) / SR for a in audios])
        out = []
        for a in audios:
            d = len(a) / SR
            end = 12.0 if d > 20 and len(self.calls) == 1 else d - 0.2
            out.append(Transcript(f"part{len(self.calls)}", extras={"spans": [[0.0, end, f"part{len(self.calls)}"]],
                                                                    "complete_s": end}))
        return out


def test_stage_measures_coverage_recovers_once_and_counts_it():
    import pyarrow as pa

    from operators.asr.stage import ASRStage
    from operators.config import JobConfig
    from operators.audio.decode import to_pcm16
    from operators.schema import DECODED_SCHEMA, OK

    rng = np.random.default_rng(0)
    rows = []
    for k, seconds in enumerate((28.0, 8.0)):
        audio = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        n = len(audio)
        rows.append({"audio_id": f"f{k}", "source_uri": f"mem://f{k}", "reference": None, "language": "en",
                     "duration_s": seconds + 2, "pcm16": to_pcm16(audio), "seg_start": [0], "seg_end": [n],
                     "speech_start": [SR], "speech_end": [SR + n], "status": OK, "error": None})
    backend = _StoppingBackend()
    stage = ASRStage(JobConfig.model_validate({"asr": {"batch_size": 8}}), backend=backend)
    out = {r["audio_id"]: r for r in stage(pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)).to_pylist()}
    tail = 28.0 - (12.0 - cv.CONTEXT_S)
    assert len(backend.calls) == 2 and backend.calls[1] == [pytest.approx(tail)]
    assert out["f0"]["text"] == "part1 part2" and out["f0"]["coverage"] == 1.0
    assert out["f0"]["segment_coverage"] == [1.0]
    assert out["f0"]["perf_redecoded_segments"] == 1 and out["f0"]["perf_redecode_audio_s"] == pytest.approx(tail)
    assert out["f1"]["text"] == "part1" and out["f1"]["perf_redecoded_segments"] == 0
    # the file times of the segment are unchanged by the second try
    assert out["f0"]["segments"] == [{"start_s": 1.0, "end_s": 29.0, "text": "part1 part2", "translation": None}]


def test_a_left_out_sentence_is_missing_and_a_misheard_one_only_garbled():
    from pipelines.demo_corpus import garbled_sentences, missing_sentences

    sentences = ["the cat sat on the mat", "they painted the kitchen a pale shade of green", "we went home early"]
    dropped = "the cat sat on the mat we went home early"
    misheard = "the cat sat on the mat a painted makichon pail shamed on green we went home early"
    assert missing_sentences(sentences, dropped) == [1] and garbled_sentences(sentences, dropped) == [1]
    assert missing_sentences(sentences, misheard) == [] and garbled_sentences(sentences, misheard) == [1]
    assert missing_sentences(sentences, " ".join(sentences)) == [] == garbled_sentences(sentences, " ".join(sentences))
