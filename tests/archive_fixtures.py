"""A real archive's recordings, made in code: the kinds call, meeting and LDC archives hold.

Helpers only (no tests here). `encode(form, audio, sr)` turns mono float32 audio into the bytes of one
form (`FORMS`): telephone WAV (8 kHz mu-law, A-law, GSM 6.10), studio WAV (96 kHz 24-bit, 32-bit
float, 5.1), NIST SPHERE (two-channel 8 kHz mu-law, as Switchboard/Fisher/CallHome), AIFF, a Zoom-style
MP4 (H.264 video + AAC), a browser WebM (VP8 video + Opus), a phone 3GP (AMR-NB), WMA (WMAv2 in ASF),
and the formats read before (FLAC, Ogg Vorbis, Ogg Opus, MP3, M4A, 16-bit WAV). `ARCHIVE` names each
under a key of the kind real archives have (spaces, unicode, brackets, `+ # % = ,`).
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import soundfile as sf
import soxr


def _resample(audio: np.ndarray, sr: int, rate: int) -> np.ndarray:
    return audio if sr == rate else soxr.resample(audio, sr, rate).astype(np.float32)


def _sf(audio: np.ndarray, sr: int, rate: int, fmt: str, subtype: str, channels: int = 1) -> bytes:
    x = _resample(audio, sr, rate)
    if channels == 6:  # 5.1 (FL FR FC LFE BL BR): the voice on the front three, the rest silent
        x = np.stack([x, x, x, 0 * x, 0 * x, 0 * x], axis=1)
    elif channels == 2:  # a two-sided call: this side speaks, the other is near silence
        x = np.stack([x, 0.001 * x], axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _av(audio: np.ndarray, sr: int, container: str, codec: str, rate: int,
        video: str | None = None, size: tuple[int, int] = (64, 48), fps: int = 10,
        bit_rate: int | None = None) -> bytes:
    """A container with one audio stream (`codec` at `rate`, mono) and, with `video`, a video stream of
    moving colour frames the length of the audio."""
    import av

    x = _resample(audio, sr, rate)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=fps)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
        astream = out.add_stream(codec, rate=rate)
        astream.layout = "mono"
        if bit_rate:
            astream.bit_rate = bit_rate  # wmav2 has no default bit rate
        if vstream is not None:
            n = max(1, int(len(x) / rate * fps))
            for i in range(n):
                img = np.zeros((size[1], size[0], 3), np.uint8)
                img[:, : (i * 7) % size[0]] = (i * 23 % 256, 128, 255 - i * 11 % 256)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="flt", layout="mono")
        frame.rate = rate
        for packet in astream.encode(frame):
            out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# form -> (extension, maker(audio, sr) -> bytes, what it stands for)
FORMS = {
    "wav_ulaw_8k": (".wav", lambda a, sr: _sf(a, sr, 8000, "WAV", "ULAW"), "call centre, G.711 mu-law"),
    "wav_alaw_8k": (".wav", lambda a, sr: _sf(a, sr, 8000, "WAV", "ALAW"), "European telephony, G.711 A-law"),
    "wav_gsm_8k": (".wav", lambda a, sr: _sf(a, sr, 8000, "WAV", "GSM610"), "GSM 6.10 phone recording"),
    "wav_pcm24_96k": (".wav", lambda a, sr: _sf(a, sr, 96000, "WAV", "PCM_24"), "96 kHz 24-bit studio"),
    "wav_float": (".wav", lambda a, sr: _sf(a, sr, 48000, "WAV", "FLOAT"), "32-bit float DAW export"),
    "wav_5_1": (".wav", lambda a, sr: _sf(a, sr, 48000, "WAV", "PCM_16", channels=6), "5.1 surround"),
    "sph": (".sph", lambda a, sr: _sf(a, sr, 8000, "NIST", "ULAW", channels=2),
            "NIST SPHERE, 2-channel 8 kHz mu-law (Switchboard/Fisher/CallHome)"),
    "aiff": (".aiff", lambda a, sr: _sf(a, sr, 44100, "AIFF", "PCM_16"), "AIFF (Mac recorders)"),
    "mp4": (".mp4", lambda a, sr: _av(a, sr, "mp4", "aac", 48000, video="libx264"),
            "Zoom-style MP4: H.264 video + AAC"),
    "webm": (".webm", lambda a, sr: _av(a, sr, "webm", "libopus", 48000, video="libvpx"),
             "browser recording: VP8 video + Opus"),
    "3gp": (".3gp", lambda a, sr: _av(a, sr, "3gp", "libopencore_amrnb", 8000), "phone voice memo, AMR-NB"),
    "wma": (".wma", lambda a, sr: _av(a, sr, "asf", "wmav2", 44100, bit_rate=64000), "Windows Media Audio (WMAv2)"),
    "flac": (".flac", lambda a, sr: _sf(a, sr, sr, "FLAC", "PCM_16"), "FLAC"),
    "ogg": (".ogg", lambda a, sr: _sf(a, sr, 44100, "OGG", "VORBIS"), "Ogg Vorbis"),
    "opus": (".opus", lambda a, sr: _sf(a, sr, 48000, "OGG", "OPUS"), "Ogg Opus"),
    "mp3": (".mp3", lambda a, sr: _sf(a, sr, 44100, "MP3", "MPEG_LAYER_III"), "MP3"),
    "m4a": (".m4a", lambda a, sr: _av(a, sr, "ipod", "aac", 44100), "M4A (AAC)"),
    "wav": (".wav", lambda a, sr: _sf(a, sr, sr, "WAV", "PCM_16"), "16-bit WAV"),
}
# the forms no listing took before input.extensions covered every decodable format
NEW_EXTENSION_FORMS = ("sph", "aiff", "mp4", "webm", "3gp", "wma")

# form -> the key it is stored under, below the archive root: what real archives are named like
ARCHIVE = {
    "wav_ulaw_8k": "calls/2024-01-05 call #12 (agent+customer).wav",
    "wav_alaw_8k": "calls/line=2, alaw [8k].wav",
    "wav_gsm_8k": "calls/gsm 100% compressed.wav",
    "wav_pcm24_96k": "studio/96k 24bit [master].wav",
    "wav_float": "studio/float export, take 3.wav",
    "wav_5_1": "studio/5.1 mix #2.wav",
    "sph": "ldc/swb1/sw02001 A+B.sph",
    "aiff": "interviews/entrevista ü 日本語.aiff",
    "mp4": "meetings/Zoom meeting – Q3 review (2024).mp4",
    "webm": "meetings/browser recording=1.webm",
    "3gp": "phone/voice memo #3.3gp",
    "wma": "legacy/dictation, 2009 [final].wma",
    "flac": "misc/a+b=c.flac",
    "ogg": "misc/ogg 50%.ogg",
    "opus": "misc/épisode #4.opus",
    "mp3": "misc/podcast, ep 1.mp3",
    "m4a": "misc/voice memo [iPhone].m4a",
    "wav": "misc/plain 16-bit.wav",
}
# files that are not audio: counted as left out, never read
NON_AUDIO = {
    "notes/meeting notes, Q3.txt": b"not audio",
    "notes/cover [art].jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
    "README": b"an archive readme",
}
# hidden / underscore names: markers and OS junk, counted as hidden
HIDDEN = {
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "meetings/._Zoom meeting.mp4": b"AppleDouble junk",
    "_SUCCESS": b"",
}


def encode(form: str, audio: np.ndarray, sr: int) -> bytes:
    """Mono float32 `audio` at `sr` -> the bytes of `form` (a key of FORMS)."""
    return FORMS[form][1](np.asarray(audio, np.float32), sr)
