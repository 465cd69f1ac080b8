"""Audio built in code (lhotse-style): tones, clips with known pauses, every codec, hostile bytes.

Helpers only (no tests here). Everything is deterministic: fixed frequencies and seeded noise.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

SR = 16_000

# fmt -> (soundfile format, subtype); "m4a" goes through PyAV instead.
_SF_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "wav_float": ("WAV", "FLOAT"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
FORMATS = tuple(_SF_FORMATS) + ("m4a",)
# codecs with encoder delay / frame padding: decoded length may differ by up to ~0.1 s
LOSSY = {"ogg", "opus", "mp3", "m4a"}


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 440.0,
         amp: float = 0.5) -> np.ndarray:
    """A sine tone, float32; shape (n,) for mono, (n, channels) otherwise (same tone on every channel)."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.repeat(x[:, None], channels, axis=1)


def pause_clip(bursts_s: list[float], pause_s: float = 0.5, sr: int = SR, noise: float = 1e-3,
               seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tone bursts separated by silences (low noise floor everywhere).

    Returns (audio, silences) where silences are (start, end) sample offsets of each pause between
    two bursts. Burst frequencies cycle so neighbouring bursts differ.
    """
    rng = np.random.default_rng(seed)
    freqs = (220.0, 330.0, 440.0, 550.0, 660.0)
    parts, silences, pos = [], [], 0
    pause = np.zeros(int(round(pause_s * sr)), np.float32)
    for i, b in enumerate(bursts_s):
        if i:
            parts.append(pause)
            silences.append((pos, pos + len(pause)))
            pos += len(pause)
        burst = tone(b, sr, freq=freqs[i % len(freqs)], amp=0.5)
        parts.append(burst)
        pos += len(burst)
    audio = np.concatenate(parts)
    audio = (audio + noise * rng.standard_normal(len(audio))).astype(np.float32)
    return audio, silences


def _sf_bytes(audio: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _aac_bytes(audio: np.ndarray, sr: int, container: str = "mp4") -> bytes:
    import av

    x = audio if audio.ndim == 2 else audio[:, None]
    channels = x.shape[1]
    layout = {1: "mono", 2: "stereo"}[channels]
    buf = io.BytesIO()
    out = av.open(buf, mode="w", format=container)
    stream = out.add_stream("aac", rate=sr)
    stream.layout = layout
    # planar float frames of 1024 samples (the AAC frame size)
    planar = np.ascontiguousarray(x.T.astype(np.float32))
    for at in range(0, planar.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, at:at + 1024]),
                                           format="fltp", layout=layout)
        frame.sample_rate = sr
        frame.pts = at
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return buf.getvalue()


def encode(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    """Encode float audio ((n,) or (n, channels)) to the bytes of a file of format `fmt`.

    fmt: wav (PCM_16), wav_float (FLOAT), flac, ogg (Vorbis), opus (Ogg Opus; sr must be one of
    Opus' rates, use 48000), mp3 (soundfile/LAME), m4a (AAC in MP4 via PyAV).
    """
    if fmt == "m4a":
        return _aac_bytes(audio, sr)
    if fmt not in _SF_FORMATS:
        raise ValueError(f"unknown fmt {fmt!r}; one of {FORMATS}")
    return _sf_bytes(audio, sr, *_SF_FORMATS[fmt])


def native_rate(fmt: str, sr: int) -> int:
    """The rate `fmt` is encoded at when `sr` is asked for: Opus only takes 8/12/16/24/48 kHz and
    MPEG audio stops at 48 kHz, so those become 48 kHz."""
    if fmt == "opus" and sr not in (8000, 12000, 16000, 24000, 48000):
        return 48000
    if fmt == "mp3" and sr > 48000:
        return 48000
    return sr


# ---------------------------------------------------------------- hostile bytes

def _chunk_body(data: bytes, chunk_id: bytes) -> int:
    """Offset of a RIFF/WAVE chunk's body (its 4-byte size field sits just before it)."""
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == chunk_id:
            return pos + 8
        pos += 8 + size + (size & 1)
    raise ValueError(f"no {chunk_id!r} chunk")


def _wav_data_offset(data: bytes) -> int:
    """Offset of the 4-byte size field of the `data` chunk."""
    return _chunk_body(data, b"data") - 4


def _fmt_offset(data: bytes) -> int:
    """Offset of the `fmt ` chunk body (audio_format, channels, rate, ...)."""
    return _chunk_body(data, b"fmt ")


def truncated_flac(seconds: float = 5.0) -> bytes:
    full = encode(tone(seconds), SR, "flac")
    return full[: len(full) // 2]


def truncated_mp3(seconds: float = 5.0) -> bytes:
    """The first ~half of an MP3 (an interrupted download). Its Xing header still declares the
    full length."""
    full = encode(tone(seconds), SR, "mp3")
    return full[: len(full) // 2]


def zero_bytes() -> bytes:
    return b""


def text_as_wav() -> bytes:
    """A text file someone renamed to .wav."""
    return b"hello, this is a text file renamed to .wav, not audio at all\n" * 8


def wav_claiming_hours(seconds: float = 5.0) -> bytes:
    """A valid 5 s PCM_16 WAV whose RIFF and data chunk sizes claim ~0x7FFFFFF0 bytes (~18.6 h)."""
    data = bytearray(encode(tone(seconds), SR, "wav"))
    data[4:8] = struct.pack("<I", 0x7FFFFFF0)
    off = _wav_data_offset(bytes(data))
    data[off:off + 4] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


def float_wav_with_nan(seconds: float = 2.0, n_nan: int = 10) -> bytes:
    x = tone(seconds)
    x[1000:1000 + n_nan] = np.nan
    return encode(x, SR, "wav_float")


def wav_8ch_96k(seconds: float = 2.0, freq: float = 1000.0) -> bytes:
    """Valid: 8 channels of the same tone at 96 kHz (must decode to 16 kHz mono)."""
    return encode(tone(seconds, 96_000, channels=8, freq=freq, amp=0.3), 96_000, "wav")


def _patched_fmt(channels: int | None = None, rate: int | None = None, seconds: float = 1.0) -> bytes:
    data = bytearray(encode(tone(seconds), SR, "wav"))
    off = _fmt_offset(bytes(data))
    if channels is not None:
        data[off + 2:off + 4] = struct.pack("<H", channels)
    if rate is not None:
        data[off + 4:off + 8] = struct.pack("<I", rate)
    return bytes(data)


def wav_absurd_channels(channels: int = 1000) -> bytes:
    """Header claims 1000 channels (and keeps block_align of a mono file)."""
    return _patched_fmt(channels=channels)


def wav_absurd_rate(rate: int = 5_000_000) -> bytes:
    return _patched_fmt(rate=rate)


def wav_rate_zero() -> bytes:
    return _patched_fmt(rate=0)


def dominant_freq(audio: np.ndarray, sr: int = SR) -> float:
    """Frequency (Hz) of the FFT magnitude peak (Hann window)."""
    x = np.asarray(audio, np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))])
