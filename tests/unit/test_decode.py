"""operators.audio.decode: every codec to 16 kHz mono float32, typed failures, PCM16, decode_batch."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess

import numpy as np
import pytest
import soundfile as sf

import audio_fixtures as af
from operators.config import DecodeConfig, JobConfig
from operators.audio.decode import (AudioError, decode_audio, decode_batch, decode_pcm16, from_pcm16,
                                    pcm16_column, pcm16_samples, to_pcm16)
from operators.schema import DECODED_SCHEMA, ERROR, OK
from operators.audio.segment import plan_segments
from operators.io.sources import source_table

SR = 16_000


def _lossy_tol(fmt: str) -> float:
    return 0.1 if fmt in af.LOSSY else 1e-6


# ------------------------------------------------------------------ codecs


@pytest.mark.parametrize("fmt", af.FORMATS)
@pytest.mark.parametrize("src_rate", [44_100, 48_000, 96_000])
def test_codec_decodes_to_16k_mono_and_keeps_pitch(fmt, src_rate):
    rate = af.native_rate(fmt, src_rate)
    seconds, freq = 3.0, 1000.0
    data = af.encode(af.tone(seconds, rate, freq=freq), rate, fmt)

    audio = decode_audio(data)

    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(len(audio) / SR - seconds) <= _lossy_tol(fmt) + 1.0 / SR
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() <= 1.0 + 0.05  # lossy codecs overshoot a little at most
    # resampling (44.1k/48k/96k -> 16k) keeps the tone where it was
    assert af.dominant_freq(audio) == pytest.approx(freq, abs=2.0)
    # and keeps its level: a 0.5-amplitude sine has RMS 0.5/sqrt(2)
    mid = audio[SR // 2: -SR // 2]
    assert np.sqrt(np.mean(mid.astype(np.float64) ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_lossless_16k_wav_is_sample_exact():
    x = af.tone(1.0, SR)
    audio = decode_audio(af.encode(x, SR, "wav_float"))
    np.testing.assert_array_equal(audio, x)


@pytest.mark.parametrize("fmt", ["flac", "m4a"])
def test_stereo_is_downmixed(fmt):
    sr = 44_100
    left = af.tone(2.0, sr, freq=500.0, amp=0.4)
    right = af.tone(2.0, sr, freq=1500.0, amp=0.2)
    audio = decode_audio(af.encode(np.stack([left, right], axis=1), sr, fmt))
    assert audio.ndim == 1
    spec = np.abs(np.fft.rfft(audio[: 16_000] * np.hanning(16_000)))
    freqs = np.fft.rfftfreq(16_000, 1 / SR)
    peak_500 = spec[np.argmin(np.abs(freqs - 500))]
    peak_1500 = spec[np.argmin(np.abs(freqs - 1500))]
    # mean of the channels: both tones present, at half their amplitude -> ratio 0.4:0.2
    assert peak_500 / peak_1500 == pytest.approx(2.0, rel=0.1)


def test_8ch_96k_wav_downmixes_to_16k_mono():
    audio = decode_audio(af.wav_8ch_96k(seconds=2.0, freq=1000.0))
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert len(audio) == 2 * SR
    assert af.dominant_freq(audio) == pytest.approx(1000.0, abs=2.0)
    # identical channels averaged: amplitude 0.3 stays 0.3
    assert np.abs(audio[SR // 2: -SR // 2]).max() == pytest.approx(0.3, rel=0.02)


def test_opposite_channels_cancel_in_downmix():
    x = af.tone(1.0, SR)
    audio = decode_audio(af.encode(np.stack([x, -x], axis=1), SR, "wav_float"))
    assert np.abs(audio).max() < 1e-6


def test_long_file_streams_across_blocks_exactly():
    """More than one 30 s read block at 44.1 kHz: streamed resampling yields exactly n*16k/44.1k."""
    sr, seconds = 44_100, 65.0
    audio = decode_audio(af.encode(af.tone(seconds, sr, freq=300.0), sr, "flac"))
    assert len(audio) == int(seconds * SR)
    # no glitch at the block joins (30 s and 60 s): the tone stays a clean sine everywhere
    for at in (30 * SR, 60 * SR):
        seg = audio[at - 800: at + 800]
        assert np.abs(seg).max() == pytest.approx(0.5, rel=0.02)
        assert af.dominant_freq(seg) == pytest.approx(300.0, abs=12.0)


def test_wav_with_streaming_length_placeholder_decodes():
    """data chunk size 0xFFFFFFFF (what ffmpeg writes to a pipe): length unknown, decode it all."""
    data = bytearray(af.encode(af.tone(2.0), SR, "wav"))
    off = af._wav_data_offset(bytes(data))
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data[off:off + 4] = struct.pack("<I", 0xFFFFFFFF)
    assert len(decode_audio(bytes(data))) == 2 * SR


# ------------------------------------------------------------------ failures


def _kind(data, cfg=None) -> AudioError:
    with pytest.raises(AudioError) as info:
        decode_audio(data, cfg)
    return info.value


def test_empty():
    assert _kind(af.zero_bytes()).kind == "empty"
    assert _kind(None).kind == "empty"


def test_text_renamed_wav_is_undecodable():
    assert _kind(af.text_as_wav()).kind == "undecodable"


def test_random_bytes_are_undecodable():
    assert _kind(np.random.default_rng(0).bytes(4096)).kind == "undecodable"


def test_truncated_flac():
    assert _kind(af.truncated_flac()).kind == "truncated"


def test_truncated_wav():
    full = af.encode(af.tone(5.0), SR, "wav")
    err = _kind(full[: len(full) // 2])
    assert err.kind == "truncated"
    assert "declares" in err.message


def test_wav_header_claiming_hours_fails_fast_or_reads_what_is_there():
    """RIFF/data sizes of ~0x7FFFFFF0 (18.6 h) on a 5 s file: never an 18 h allocation or a hang;
    either a 'truncated' error or exactly the 5 s the file holds."""
    data = af.wav_claiming_hours(5.0)
    try:
        audio = decode_audio(data)
    except AudioError as e:
        assert e.kind == "truncated", e
    else:
        assert len(audio) == 5 * SR
        np.testing.assert_allclose(audio, af.tone(5.0), atol=1 / 32767)


def test_nan_samples():
    err = _kind(af.float_wav_with_nan(n_nan=10))
    assert err.kind == "invalid_samples"
    assert err.message.startswith("10 ")


def test_inf_samples():
    x = af.tone(1.0)
    x[5] = np.inf
    assert _kind(af.encode(x, SR, "wav_float")).kind == "invalid_samples"


def test_too_long_from_header():
    err = _kind(af.encode(af.tone(5.0), SR, "wav"), DecodeConfig(max_duration_s=2.0))
    assert err.kind == "too_long"


def test_too_long_while_streaming_unknown_length():
    """No usable declared length (0xFFFFFFFF): the limit is enforced while reading."""
    data = bytearray(af.encode(af.tone(5.0), SR, "wav"))
    off = af._wav_data_offset(bytes(data))
    data[off:off + 4] = struct.pack("<I", 0xFFFFFFFF)
    assert _kind(bytes(data), DecodeConfig(max_duration_s=2.0)).kind == "too_long"


def test_too_long_through_pyav():
    err = _kind(af.encode(af.tone(5.0, 44_100), 44_100, "m4a"), DecodeConfig(max_duration_s=2.0))
    assert err.kind == "too_long"


def test_too_short():
    err = _kind(af.encode(af.tone(1.0), SR, "flac"), DecodeConfig(min_duration_s=2.0))
    assert err.kind == "too_short"


def test_min_duration_boundary_is_inclusive():
    assert len(decode_audio(af.encode(af.tone(2.0), SR, "flac"), DecodeConfig(min_duration_s=2.0))) == 2 * SR


def test_bad_header_absurd_channels():
    err = _kind(af.wav_absurd_channels(1000))
    assert err.kind == "bad_header"
    assert "1000 channels" in err.message


def test_bad_header_absurd_rate():
    err = _kind(af.wav_absurd_rate(5_000_000))
    assert err.kind == "bad_header"
    assert "5000000" in err.message


def test_bad_header_limits_are_configurable():
    data = af.encode(af.tone(1.0, 48_000, channels=4), 48_000, "wav")
    assert _kind(data, DecodeConfig(max_channels=2)).kind == "bad_header"
    assert _kind(data, DecodeConfig(max_sample_rate=44_100)).kind == "bad_header"


def test_sample_rate_zero_is_rejected():
    # libsndfile and FFmpeg both refuse to open it, so it cannot reach the header check
    assert _kind(af.wav_rate_zero()).kind in ("bad_header", "undecodable")


def _readable_seconds(data: bytes) -> float:
    """Seconds libsndfile really delivers, reading until it returns nothing."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        n = 0
        while True:
            chunk = f.read(4096, dtype="float32")
            if not len(chunk):
                return n / f.samplerate
            n += len(chunk)


def test_truncated_mp3_is_truncated_or_only_what_is_there():
    data = af.truncated_mp3(5.0)
    really = _readable_seconds(data)
    assert really < 4.0  # precondition: about half the audio is really there
    try:
        audio = decode_audio(data)
    except AudioError as e:
        assert e.kind == "truncated", f"{e.kind}: {e.message}"
    else:
        assert abs(len(audio) / SR - really) < 0.1, (len(audio) / SR, really)


def test_wav_missing_its_last_bytes_is_truncated():
    full = af.encode(af.tone(5.0), SR, "wav")
    assert _kind(full[:-40]).kind == "truncated"


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_wav_piped_from_sox_decodes():
    data = subprocess.run(["sox", "-q", "-n", "-r", "16000", "-c", "1", "-b", "16", "-t", "wav", "-",
                           "synth", "2", "sine", "440"], capture_output=True, check=True).stdout
    audio = decode_audio(data)
    assert len(audio) == 2 * SR


def test_wav_with_zero_data_size_decodes_what_is_there():
    data = bytearray(af.encode(af.tone(2.0), SR, "wav"))
    off = af._wav_data_offset(bytes(data))
    data[4:8] = struct.pack("<I", 0)
    data[off:off + 4] = struct.pack("<I", 0)
    assert len(decode_audio(bytes(data))) == 2 * SR


# ------------------------------------------------------------------ PCM16


def test_pcm16_round_trip():
    x = np.random.default_rng(1).uniform(-1.0, 1.0, 10_000).astype(np.float32)
    x[:3] = [-1.0, 0.0, 1.0]
    pcm = to_pcm16(x)
    assert len(pcm) == 2 * len(x)
    y = from_pcm16(pcm)
    assert y.dtype == np.float32
    assert np.abs(y - x).max() < 1 / 32767
    assert y[0] == -1.0 and y[1] == 0.0 and y[2] == 1.0


def test_pcm16_clips_out_of_range():
    y = from_pcm16(to_pcm16(np.array([-3.0, 2.0, 1.5], np.float32)))
    np.testing.assert_array_equal(y, [-1.0, 1.0, 1.0])


def test_pcm16_samples_match_the_float_formula():
    """pcm16_samples (in place) gives what float32 clip -> x 32767 -> round gave, at the edges too."""
    x = np.random.default_rng(2).uniform(-1.2, 1.2, 50_000).astype(np.float32)
    x[:6] = [-1.0, 1.0, 0.5 / 32767, 1.5 / 32767, -0.5 / 32767, 2.5 / 32767]  # halves round to even
    expect = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    assert expect[2:6].tolist() == [0, 2, 0, 2]
    np.testing.assert_array_equal(pcm16_samples(x), expect)


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_16k_mono_16bit_source_carries_its_own_samples(fmt):
    """A 16 kHz mono 16-bit source is carried as its own int16 samples, full scale included (the float
    round trip rounded s x 32767/32768: up to 1 LSB off)."""
    rng = np.random.default_rng(3)
    s = rng.integers(-32768, 32768, 3 * SR).astype(np.int16)
    s[:4] = [-32768, 32767, -1, 1]
    buf = io.BytesIO()
    sf.write(buf, s, SR, format=fmt.upper(), subtype="PCM_16")
    out = decode_pcm16(buf.getvalue())
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, s)
    # the same through the decode stage, planned there or left whole for the ASR actor
    for where in ("decode", "actor"):
        cfg = JobConfig.model_validate({"segment": {"vad": "none", "vad_on": where}})
        row = decode_batch(source_table(["a"], ["mem://a"], blobs=[buf.getvalue()]), cfg).to_pylist()[0]
        assert row["status"] == OK and np.array_equal(np.frombuffer(row["pcm16"], "<i2"), s), where


@pytest.mark.parametrize("fmt,rate,channels", [("flac", 44_100, 1), ("flac", SR, 2), ("wav_float", SR, 1),
                                               ("m4a", 48_000, 1)])
def test_other_sources_carry_the_rounded_float_decode(fmt, rate, channels):
    x = af.tone(2.0, rate)
    data = af.encode(np.stack([x, 0.5 * x], axis=1) if channels == 2 else x, rate, fmt)
    np.testing.assert_array_equal(decode_pcm16(data), pcm16_samples(decode_audio(data)))


# ------------------------------------------------------------------ decode_batch


def test_decode_batch_rows_in_order_with_errors(tmp_path):
    good_flac = af.encode(af.tone(2.0, 44_100), 44_100, "flac")
    good_m4a = af.encode(af.tone(1.5, 48_000), 48_000, "m4a")
    on_disk = tmp_path / "disk.wav"
    on_disk.write_bytes(af.encode(af.tone(1.0), SR, "wav"))
    missing = tmp_path / "missing.wav"

    ids = ["good", "text", "src", "empty", "m4a", "disk", "missing", "nan"]
    uris = ["mem://good.flac", "mem://text.wav", "mem://src.tar#x", "mem://empty.wav", "mem://a.m4a",
            str(on_disk), str(missing), "mem://nan.wav"]
    blobs = [good_flac, af.text_as_wav(), None, b"", good_m4a, None, None, af.float_wav_with_nan()]
    errors = [None, None, "tar member unreadable: bad checksum", None, None, None, None, None]
    refs = ["r0", None, "r2", None, None, "r5", None, None]
    langs = ["en", None, None, "fr", None, None, None, None]
    table = source_table(ids, uris, refs, langs, blobs, errors)

    out = decode_batch(table, JobConfig())

    assert out.schema.equals(DECODED_SCHEMA)
    rows = out.to_pylist()
    assert {r["perf_vad"] for r in rows} == {"none"}   # no detector passed: all audio kept
    assert [r["audio_id"] for r in rows] == ids
    assert [r["source_uri"] for r in rows] == uris
    assert [r["reference"] for r in rows] == refs
    assert [r["language"] for r in rows] == langs

    expect = {"good": None, "text": "undecodable", "src": "source", "empty": "empty", "m4a": None,
              "disk": None, "missing": "fetch", "nan": "invalid_samples"}
    for r in rows:
        kind = expect[r["audio_id"]]
        if kind is None:
            assert r["status"] == OK and r["error"] is None, r["error"]
            audio = from_pcm16(r["pcm16"])
            assert r["duration_s"] == pytest.approx(len(audio) / SR)
            assert (r["seg_start"], r["seg_end"]) == tuple(map(list, plan_segments(audio)))
            assert r["seg_start"] == [0] and r["seg_end"] == [len(audio)]
        else:
            assert r["status"] == ERROR
            assert r["error"].startswith(f"{kind}: "), r["error"]
            assert len(r["error"]) > len(kind) + 2
            assert r["pcm16"] is None and r["duration_s"] is None
            assert r["seg_start"] == [] and r["seg_end"] == []

    by_id = {r["audio_id"]: r for r in rows}
    assert by_id["good"]["duration_s"] == pytest.approx(2.0)
    assert by_id["m4a"]["duration_s"] == pytest.approx(1.5, abs=0.1)
    assert by_id["disk"]["duration_s"] == pytest.approx(1.0)
    assert by_id["src"]["error"] == "source: tar member unreadable: bad checksum"


def test_pcm16_column_is_the_rows_bytes_nulls_and_empties_included(monkeypatch):
    """The column built from the int16 arrays holds what a bytes object per row would (a null for an
    error row, b"" for a row that kept nothing), also cut into several chunks at the 2 GiB limit (here
    lowered to 10 kB) and from a strided array."""
    import operators.audio.decode as decode

    rng = np.random.default_rng(0)
    samples = [rng.integers(-32768, 32768, n).astype(np.int16) for n in (3000, 0, 1, 2500, 7)]
    samples[3] = samples[3][::2]                       # not contiguous
    samples.insert(2, None)
    want = [None if s is None else s.tobytes() for s in samples]
    assert pcm16_column(samples).to_pylist() == want
    assert pcm16_column([]).to_pylist() == [] and pcm16_column([None]).to_pylist() == [None]
    monkeypatch.setattr(decode, "_BINARY_LIMIT", 10_000)
    col = pcm16_column(samples * 3)
    assert col.num_chunks > 1 and col.to_pylist() == want * 3
    assert all(c.nbytes <= 10_000 + 8 * len(c) + 64 for c in col.chunks)
    # a row over the limit alone is an error row, naming the fix; its neighbours keep theirs
    table = source_table(["a", "b"], ["mem://a.wav", "mem://b.wav"],
                         blobs=[af.encode(af.tone(0.2), SR, "wav"), af.encode(af.tone(0.5), SR, "wav")])
    rows = decode_batch(table, JobConfig()).to_pylist()
    assert [r["status"] for r in rows] == [OK, ERROR] and rows[0]["pcm16"] is not None
    assert rows[1]["error"].startswith("decode: ") and "max_duration_s" in rows[1]["error"]
    assert rows[1]["pcm16"] is None and rows[1]["perf_carried_bytes"] == 0


def test_decode_batch_applies_decode_config():
    cfg = JobConfig.model_validate({"decode": {"max_duration_s": 1.0}})
    table = source_table(["a", "b"], ["mem://a", "mem://b"],
                         blobs=[af.encode(af.tone(0.5), SR, "wav"), af.encode(af.tone(2.0), SR, "wav")])
    rows = decode_batch(table, cfg).to_pylist()
    assert [r["status"] for r in rows] == [OK, ERROR]
    assert rows[1]["error"].startswith("too_long: ")
