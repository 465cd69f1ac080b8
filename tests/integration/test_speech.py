"""Real speech (the committed espeak-ng corpus) through the whole job with the offline Whisper model,
as clips and as long recordings, with voice-activity segmentation (silero where installed).

Measured on this machine (tiny.en int8, CPU, 2 cores): clip WER ~0.10-0.11 (17-18 errors in 163
normalised reference words; tiny.en on isolated 3 s robot-voice clips); the long recordings score far
lower (the joined speech gives the model context). The bound (long <= clips + 0.02) leaves room for
CPU/thread differences only; a broken decode, resample, segmentation or stitching (a dropped or doubled
sentence at a cut) pushes a long file past it.
"""

from __future__ import annotations

import pytest

from operators.output.report import word_errors
from pipelines import demo_corpus
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = [pytest.mark.integration, pytest.mark.speech]

CLIP_WER_BOUND = 0.15


def _overlap(ranges, a, b) -> float:
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in ranges)


def test_espeak_corpus_and_long_recordings(s3, ray_cluster, prefix):
    """One job: the 20 clips, a 4 min FLAC of them with even pauses, a 20 min 44.1 kHz stereo Ogg
    recording with uneven pauses and long silences, and a speech-music-speech recording."""
    items = corpus()
    rows = []
    for e in items:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
    long_bytes, long_text = demo_corpus.build_long_file(240.0)
    put(s3, f"{prefix}/in/long.flac", long_bytes)
    rows.append({"audio_id": "long", "uri": "long.flac", "text": long_text, "language": "en"})
    recordings = {
        "rec20min": demo_corpus.build_recording(1200.0, seed=5),
        "music": demo_corpus.build_recording(100.0, seed=6, music_s=30.0, long_silence_every=1000),
    }
    for name, (data, text, _, _) in recordings.items():
        put(s3, f"{prefix}/in/{name}.ogg", data)
        rows.append({"audio_id": name, "uri": f"{name}.ogg", "text": text, "language": "en"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    result = run(job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out"))
    out = {r["audio_id"]: r for r in read_output(s3, result["output"])}
    assert result["ok"] == len(rows)

    errors = words = 0
    for e in items:
        err, n = word_errors(e["text"], out[e["audio_id"]]["text"])
        errors, words = errors + err, words + n
    clip_wer = errors / words
    refs = {"long": long_text, **{k: v[1] for k, v in recordings.items()}}
    wers = {}
    for k, ref in refs.items():
        err, n = word_errors(ref, out[k]["text"])
        wers[k] = err / n
    print(f"clip WER {clip_wer:.4f} ({errors}/{words}); long WERs "
          + ", ".join(f"{k} {v:.4f} ({len(out[k]['segments'])} segments)" for k, v in wers.items())
          + f"; heard {result['speech_seconds_kept']:.0f} of {result['audio_seconds']:.0f} s, "
          f"model s saved (est.) {result['model_seconds_saved_est']:.1f}")

    assert clip_wer <= CLIP_WER_BOUND
    for k, v in wers.items():  # a long recording is transcribed as well as its sentences as clips
        assert v <= clip_wer + 0.02, (k, v, clip_wer)
    for k in refs:  # segments in time order, inside the file, none over whisper's 30 s window
        segs, dur = out[k]["segments"], out[k]["duration_s"]
        assert segs[0]["start_s"] >= 0 and segs[-1]["end_s"] <= dur + 1e-6
        assert all(a["end_s"] <= b["start_s"] for a, b in zip(segs, segs[1:]))
        assert all(0 < s["end_s"] - s["start_s"] for s in segs)
    # silence (and music) does not reach the model: what it heard is the sentences and their pads
    _, _, speech20, _ = recordings["rec20min"]
    _, _, speech_m, tunes = recordings["music"]
    sentences = sum(b - a for a, b in speech20 + speech_m)
    others = sum(out[e["audio_id"]]["duration_s"] for e in items) + out["long"]["duration_s"]
    # at most: the other files whole, the recordings' sentences and a pad either side of each
    assert result["speech_seconds_kept"] <= others + sentences + 0.5 * (len(speech20) + len(speech_m))
    assert result["speech_seconds_kept"] < 0.75 * result["audio_seconds"]
    assert result["model_seconds_saved_est"] > 0
    (ma, mb), = tunes  # no segment lies inside the music
    assert all(_overlap([(s["start_s"], s["end_s"])], ma + 1, mb - 1) < 0.5 * (s["end_s"] - s["start_s"])
               for s in out["music"]["segments"])
