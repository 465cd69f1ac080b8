"""A real archive is listed as it is: every decodable format is taken by default, every file left out
is counted by reason (with example keys) in --plan and the summary, and odd keys round-trip."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from operators import config, storage
from operators.config import InputConfig, load_config
from operators.audio.decode import AudioError, decode_audio
from operators.output.report import Summary, format_summary
from operators.io.sources import AudioFilesSource, InputError, WebDatasetSource
from pipelines import demo_corpus
from tests.archive_fixtures import ARCHIVE, FORMS, HIDDEN, NEW_EXTENSION_FORMS, NON_AUDIO, encode

# what archives hold, libsndfile's and FFmpeg's audio and video containers alike
EXPECTED = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".m4v", ".mov",
            ".webm", ".mkv", ".mka", ".3gp", ".3g2", ".amr", ".sph", ".nist", ".aiff", ".aif", ".aifc",
            ".au", ".snd", ".caf", ".w64", ".rf64", ".wma", ".wmv", ".asf", ".ac3")


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    e = demo_corpus.entries()[0]
    return sf.read(demo_corpus.CORPUS_DIR / e["uri"], dtype="float32")


def _archive(root, speech) -> None:
    audio, sr = speech
    files = {key: encode(form, audio, sr) for form, key in ARCHIVE.items()} | NON_AUDIO | HIDDEN
    for key, data in files.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_default_extensions_are_every_decodable_format():
    default = InputConfig().extensions
    assert default == list(config.AUDIO_EXTENSIONS)
    assert set(EXPECTED) <= set(default), sorted(set(EXPECTED) - set(default))
    assert {FORMS[f][0] for f in FORMS} <= set(default)
    assert all(e == e.lower() and e.startswith(".") for e in default) and len(set(default)) == len(default)
    assert not {".txt", ".json", ".jsonl", ".csv", ".tsv", ".tar", ".parquet", ".ts"} & set(default)


TELEPHONE_BAND = {"wav_ulaw_8k", "wav_alaw_8k", "wav_gsm_8k", "sph", "3gp"}  # stored at 8 kHz
# waveform likeness of the decoded audio to the source (best normalised correlation within 0.1 s:
# AAC and WMA keep their encoder delay): PCM-like forms are the source itself, lossy codecs close to it,
# AMR-NB (a parametric speech codec) only roughly
LIKENESS = {"wav_gsm_8k": 0.95, "mp4": 0.95, "m4a": 0.95, "opus": 0.95, "ogg": 0.95, "webm": 0.95,
            "mp3": 0.95, "wma": 0.95, "3gp": 0.7}


def _likeness(x: np.ndarray, y: np.ndarray, max_lag: int = 1600) -> float:
    n = min(len(x), len(y))
    x, y = x[:n].astype(np.float64), y[:n].astype(np.float64)
    size = 1 << (2 * n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    lags = np.concatenate([xc[:max_lag + 1], xc[-max_lag:]])
    return float(lags.max() / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_archive_form_decodes(form, speech):
    import soxr

    audio, sr = speech
    out = decode_audio(encode(form, audio, sr))
    assert abs(len(out) / 16000 - len(audio) / sr) < 0.1, form  # codec padding at most
    assert np.abs(out).max() > 0.2, form  # the voice is there (5.1 and the two-sided call: downmixed)
    ref = soxr.resample(soxr.resample(audio, sr, 8000), 8000, sr) if form in TELEPHONE_BAND else audio
    assert _likeness(out, ref) >= LIKENESS.get(form, 0.999), form


def test_video_frames_are_never_decoded(speech, monkeypatch):
    """An MP4 with an H.264 video stream (and a WebM with VP8): only the audio stream is decoded."""
    import av

    audio, sr = speech
    decoded_streams = []
    real_open = av.open

    class Spy:
        def __init__(self, container):
            self._c = container

        def __getattr__(self, name):
            return getattr(self._c, name)

        def __enter__(self):
            self._c.__enter__()
            return self

        def __exit__(self, *exc):
            return self._c.__exit__(*exc)

        def decode(self, *streams, **kw):
            decoded_streams.extend(s.type for s in streams)
            for frame in self._c.decode(*streams, **kw):
                assert isinstance(frame, av.AudioFrame), type(frame)
                yield frame

    monkeypatch.setattr(av, "open", lambda *a, **kw: Spy(real_open(*a, **kw)))
    for form in ("mp4", "webm"):
        data = encode(form, audio, sr)
        with real_open(io.BytesIO(data)) as c:
            assert [s.type for s in c.streams] == ["video", "audio"], form
        assert len(decode_audio(data)) > 2 * 16000
    assert decoded_streams == ["audio", "audio"]


def test_audio_extension_that_no_decoder_reads_is_an_error():
    with pytest.raises(AudioError) as e:
        decode_audio(b"this is a text file named .mp4 " * 20)
    assert e.value.kind == "undecodable"


def test_archive_listing_takes_every_recording_and_counts_the_rest(tmp_path, speech):
    _archive(tmp_path, speech)
    src = AudioFilesSource(InputConfig(uri=f"{tmp_path}/"))
    units = src.list_units()
    assert sorted(units["audio_id"].to_pylist()) == sorted(ARCHIVE.values())
    assert {ARCHIVE[f] for f in NEW_EXTENSION_FORMS} <= set(units["audio_id"].to_pylist())
    report = src.listing_report()
    assert report == {
        "input_files_seen": len(ARCHIVE) + len(NON_AUDIO) + len(HIDDEN),
        "input_files_left_out": len(NON_AUDIO) + len(HIDDEN),
        "input_left_out_by": {
            "hidden": {"files": 3, "examples": [".DS_Store", "_SUCCESS", "meetings/._Zoom meeting.mp4"]},
            ".jpg": {"files": 1, "examples": ["notes/cover [art].jpg"]},
            ".txt": {"files": 1, "examples": ["notes/meeting notes, Q3.txt"]},
            "no_extension": {"files": 1, "examples": ["README"]},
        }}
    json.dumps(report)  # goes into _summary.json as it is


def test_left_out_is_bounded(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i}.x{i}").write_bytes(b"")
        (tmp_path / f"doc {i}.txt").write_bytes(b"")
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "call 3.5 (final)").write_bytes(b"")
    left = storage.LeftOut()
    assert storage.list_files(str(tmp_path), extensions=(".wav",), left_out=left) == [f"{tmp_path}/a.wav"]
    got = left.as_dict()
    assert left.total == 121 and sum(v["files"] for v in got.values()) == 121
    assert len(got) <= storage.LeftOut.MAX_REASONS + 1 and storage.OTHER_EXTENSIONS in got
    assert got[".txt"]["files"] == 60 and got["no_extension"]["examples"] == ["call 3.5 (final)"]
    assert all(len(v["examples"]) <= storage.LeftOut.EXAMPLES for v in got.values())


def test_nothing_listed_says_what_was_left_out(tmp_path):
    for name in ("notes.txt", "scan.pdf", "_SUCCESS"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError, match=r"no audio files .*left out: 3 files \(.*\.pdf 1: scan\.pdf"):
        AudioFilesSource(InputConfig(uri=str(tmp_path))).list_units()


def test_fetch_keys_with_glob_characters(tmp_path):
    """fsspec's batched cat globs its paths: 'call [8k].wav' must still be read literally."""
    names = ["call [8k].wav", "a*b?.wav", "plain.wav", "50% #1 a+b=c, d.wav", "ü 日本語.wav"]
    for i, n in enumerate(names):
        (tmp_path / n).write_bytes(bytes([i]) * 10)
    got = storage.fetch_many([str(tmp_path / n) for n in names] + [str(tmp_path / "missing [x].wav")])
    assert got[:-1] == [bytes([i]) * 10 for i in range(len(names))]
    assert isinstance(got[-1], Exception)
    assert storage.fetch_many([str(tmp_path / "call [8k].wav")]) == [bytes([0]) * 10]


def test_tar_shards_take_the_new_forms(tmp_path, speech):
    audio, sr = speech
    members = {"k1.sph": encode("sph", audio, sr), "k1.txt": b"one", "k2.mp4": encode("mp4", audio, sr)}
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    t = WebDatasetSource(InputConfig(uri=str(path))).expand(str(path))
    assert t["audio_id"].to_pylist() == ["shard/k1", "shard/k2"]
    assert t["reference"].to_pylist() == ["one", None]


def test_plan_and_summary_show_what_was_left_out(tmp_path, speech):
    from pipelines.transcribe import describe, prepare

    _archive(tmp_path / "in", speech)
    cfg = load_config(None, ["asr.backend=simulated"], **{"input.uri": f"{tmp_path}/in/",
                                                          "output.uri": str(tmp_path / "out")})
    info, source, units = prepare(cfg, check=False)
    plan = describe(cfg, info, source, units)["input"]
    assert plan["listed"] == len(ARCHIVE) and plan["files_seen"] == len(ARCHIVE) + 6
    assert plan["files_left_out"] == 6
    assert plan["left_out_by"]["hidden"]["files"] == 3 and plan["left_out_by"][".txt"]["files"] == 1
    summary = Summary().as_dict(1.0, **info)
    assert summary["input_files_seen"] == len(ARCHIVE) + 6 and summary["input_files_left_out"] == 6
    assert summary["input_left_out_by"] == plan["left_out_by"]
    text = format_summary(summary)
    assert "input_files_left_out" in text and "hidden=3 (.DS_Store, _SUCCESS, meetings/._Zoom meeting.mp4)" in text
