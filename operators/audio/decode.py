"""Decode audio bytes to 16 kHz mono float32 (or 16-bit PCM), with guards; every failure is a typed
`AudioError`.

soundfile (libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3, ...) first; PyAV (FFmpeg) for what libsndfile
does not recognise (m4a/AAC, ...). Audio is read in blocks, downmixed and resampled as a stream
(soxr), so an 8-channel 96 kHz file of hours never sits in memory at its source rate.
"""

from __future__ import annotations

import io
import struct
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import soundfile as sf
import soxr

from operators import storage
from operators.config import SAMPLE_RATE, DecodeConfig, JobConfig
from operators.retry import TRANSIENT_KIND, RetriesExhausted
from operators.schema import DECODED_SCHEMA, ERROR, OK, TASK_COLUMNS, error_text
from operators.audio.pcm import pcm16_float, pcm16_samples
from operators.audio.segment import plan_block
from operators.audio.vad import on_actor
from operators.io.sources import split_source_error

BLOCK_S = 30  # seconds of source audio read per block
# a source in one of these at 16 kHz mono is read as its own int16 samples (decode_pcm16): exact, and no
# float round trip (to_pcm16 was ~7 % of decode's CPU on the corpus)
_PCM16_SUBTYPES = ("PCM_16", "PCM_S8", "PCM_U8")


class AudioError(Exception):
    """A per-file failure; `kind` goes into the error column as 'kind: message'."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class _Limits:
    max_duration_s: float
    min_duration_s: float
    max_channels: int
    max_sample_rate: int
    quality: str

    @classmethod
    def of(cls, cfg: DecodeConfig) -> "_Limits":
        return cls(cfg.max_duration_s, cfg.min_duration_s, cfg.max_channels, cfg.max_sample_rate,
                   cfg.resample_quality)


class _Mono16k:
    """Accumulates (frames, channels) blocks at `rate` into 16 kHz mono float32 (int16 blocks of a
    16 kHz mono source stay int16)."""

    def __init__(self, rate: int, limits: _Limits, check_finite: bool = True):
        self.rate = rate
        self.limits = limits
        self.check_finite = check_finite  # integer sources cannot hold NaN/inf: skip the scan
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
            rate, SAMPLE_RATE, 1, dtype="float32", quality=limits.quality)
        self.parts: list[np.ndarray] = []
        self.source_frames = 0

    def add(self, block: np.ndarray, last: bool = False) -> None:
        if block.ndim == 2:
            block = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if block.dtype != np.int16:
            block = np.ascontiguousarray(block, dtype=np.float32)
        if self.check_finite and not np.isfinite(block).all():
            bad = int((~np.isfinite(block)).sum())
            raise AudioError("invalid_samples", f"{bad} NaN/inf samples near "
                             f"{self.source_frames / self.rate:.2f} s")
        self.source_frames += len(block)
        if self.source_frames / self.rate > self.limits.max_duration_s:
            raise AudioError("too_long", f"longer than decode.max_duration_s="
                             f"{self.limits.max_duration_s:g} s")
        if self.stream is None:
            self.parts.append(block)
        else:
            self.parts.append(self.stream.resample_chunk(block, last=last))

    def finish(self) -> np.ndarray:
        if self.stream is not None:
            self.parts.append(self.stream.resample_chunk(np.zeros(0, np.float32), last=True))
        parts = [p for p in self.parts if len(p)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(out) == 0:
            raise AudioError("too_short", "no audio samples")
        if len(out) / SAMPLE_RATE < self.limits.min_duration_s:
            raise AudioError("too_short", f"{len(out) / SAMPLE_RATE:.3f} s is below "
                             f"decode.min_duration_s={self.limits.min_duration_s:g}")
        return out


def _check_header(rate: int, channels: int, limits: _Limits) -> None:
    if not 1000 <= rate <= limits.max_sample_rate:
        raise AudioError("bad_header", f"sample rate {rate} Hz is outside 1000..{limits.max_sample_rate}")
    if not 1 <= channels <= limits.max_channels:
        raise AudioError("bad_header", f"{channels} channels is outside 1..{limits.max_channels}")


# data-chunk sizes that mean "length unknown": written by streaming recorders (0, 0xFFFFFFFF) and by
# sox when its output is not seekable (0x7FFFF000)
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF, 0x7FFFF000)


def _wav_data_chunk(data: bytes) -> tuple[int, int] | None:
    """(offset of the samples, declared size) of a RIFF/WAVE data chunk; None if not RIFF/WAVE."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"data":
            return pos + 8, size
        pos += 8 + size + (size & 1)
    return None


def _check_wav_length(data: bytes, f: sf.SoundFile) -> None:
    """A WAV whose header declares more sample bytes than the file holds was cut off (libsndfile
    would silently read what is there)."""
    chunk = _wav_data_chunk(data)
    frame_bytes = _wav_frame_bytes(f)
    if chunk is None or not frame_bytes or chunk[1] in _UNKNOWN_WAV_SIZES:
        return
    offset, declared = chunk
    held = len(data) - offset
    if declared > held:
        raise AudioError("truncated", f"WAV header declares {declared / frame_bytes / f.samplerate:.2f} s "
                         f"of audio but the file holds {held / frame_bytes / f.samplerate:.2f} s")


def _decode_soundfile(data: bytes, limits: _Limits, pcm16: bool = False) -> np.ndarray:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except sf.LibsndfileError as e:
        raise _NotRecognised(str(e)) from None
    with f:
        _check_header(f.samplerate, f.channels, limits)
        declared = f.frames
        if declared > 0 and declared / f.samplerate > limits.max_duration_s:
            raise AudioError("too_long", f"{declared / f.samplerate:.0f} s is longer than "
                             f"decode.max_duration_s={limits.max_duration_s:g} s")
        if declared == 0 and f.format in ("WAV", "WAVEX"):
            raise _NotRecognised("WAV with unknown length")  # PyAV reads to the end of the data
        _check_wav_length(data, f)
        out = _Mono16k(f.samplerate, limits, check_finite=f.subtype in ("FLOAT", "DOUBLE"))
        block = BLOCK_S * f.samplerate
        mono = f.channels == 1
        dtype = "int16" if pcm16 and mono and f.samplerate == SAMPLE_RATE and f.subtype in _PCM16_SUBTYPES \
            else "float32"
        try:
            # f.blocks() pads short reads up to the declared length; read until nothing comes back
            while len(chunk := f.read(block, dtype=dtype, always_2d=not mono)):
                out.add(chunk)
        except sf.LibsndfileError as e:
            kind = "truncated" if "sync" in str(e) or "end of" in str(e).lower() else "decode"
            raise AudioError(kind, f"{e} after {out.source_frames / f.samplerate:.2f} s") from None
        # lossless formats know their exact length; lossy ones may differ by encoder padding
        slack = 0 if f.format in ("FLAC", "WAV", "WAVEX", "AIFF") else max(f.samplerate // 2, declared // 20)
        if declared > 0 and out.source_frames < declared - slack:
            raise AudioError("truncated", f"decoded {out.source_frames / f.samplerate:.2f} s of the "
                             f"{declared / f.samplerate:.2f} s the header declares")
        return out.finish()


def _wav_frame_bytes(f: sf.SoundFile) -> int:
    widths = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8, "PCM_U8": 1, "PCM_S8": 1}
    width = widths.get(f.subtype)
    return width * f.channels if width else 0


class _NotRecognised(Exception):
    pass


def _decode_av(data: bytes, limits: _Limits) -> np.ndarray:
    try:
        import av
    except ImportError:  # pragma: no cover - av is a core dependency
        raise AudioError("undecodable", "format not recognised by libsndfile and PyAV is not installed")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as e:  # av raises many error types (InvalidDataError, ...)
        raise AudioError("undecodable", f"not a recognised audio format ({type(e).__name__}: {e})") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise AudioError("undecodable", "container has no audio stream")
        stream = streams[0]
        rate, channels = stream.rate or stream.codec_context.sample_rate, stream.channels
        _check_header(int(rate or 0), int(channels or 0), limits)
        if stream.duration and stream.time_base and \
                float(stream.duration * stream.time_base) > limits.max_duration_s:
            raise AudioError("too_long", f"{float(stream.duration * stream.time_base) / 3600:.2f} h is "
                             f"longer than decode.max_duration_s={limits.max_duration_s:g} s")
        out = _Mono16k(int(rate), limits)
        try:
            for frame in container.decode(stream):
                arr = frame.to_ndarray()
                if arr.dtype.kind in "iu":
                    scale = float(np.iinfo(arr.dtype).max) + 1.0
                    arr = arr.astype(np.float32) / scale
                if frame.format.is_planar:
                    arr = arr.T  # (channels, frames) -> (frames, channels)
                else:
                    arr = arr.reshape(-1, len(frame.layout.channels))
                out.add(arr)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError("truncated" if out.source_frames else "decode",
                             f"{type(e).__name__}: {e}") from None
        return out.finish()


def decode_audio(data: bytes | None, cfg: DecodeConfig | None = None) -> np.ndarray:
    """Bytes of any supported format -> 16 kHz mono float32 in [-1, 1]. Raises AudioError."""
    return _decode(data, cfg, pcm16=False)


def decode_pcm16(data: bytes | None, cfg: DecodeConfig | None = None) -> np.ndarray:
    """Bytes of any supported format -> 16 kHz mono int16, what the decode stage carries. A 16 kHz mono
    source of 16 bits or fewer gives its own samples (8-bit ones scaled to 16 bits); any other is
    decoded as decode_audio does, then rounded (pcm16_samples). Raises AudioError."""
    audio = _decode(data, cfg, pcm16=True)
    return audio if audio.dtype == np.int16 else pcm16_samples(audio)


def _decode(data: bytes | None, cfg: DecodeConfig | None, pcm16: bool) -> np.ndarray:
    limits = _Limits.of(cfg or DecodeConfig())
    if not data:
        raise AudioError("empty", "0 bytes")
    try:
        return _decode_soundfile(data, limits, pcm16)
    except _NotRecognised:
        return _decode_av(data, limits)


def to_pcm16(audio: np.ndarray) -> bytes:
    return pcm16_samples(audio).tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    return pcm16_float(np.frombuffer(data, dtype="<i2"))


def ray_node_id() -> str | None:
    """The Ray node this runs on (None outside a Ray worker), for the run's placement figures."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


def decode_batch(batch: pa.Table, cfg: JobConfig, detector=None) -> pa.Table:
    """Ray Data stage: SOURCE_SCHEMA rows -> DECODED_SCHEMA rows.

    Fetches what is not embedded (concurrently), decodes, resamples, finds speech (`detector`, an
    operators.audio.vad detector, over the whole block at once; None keeps all audio) and plans segments.
    The row's pcm16 holds only the kept audio; with segment.vad_on actor (`vad.on_actor`) it holds the
    whole audio, unplanned (no detector runs here: the ASR actor finds speech and plans). Every
    per-file failure becomes a row with
    status='error'; nothing raised here loses a block.
    """
    read_at, cpu0 = time.time(), time.process_time()
    rows = batch.to_pylist()
    need = [i for i, r in enumerate(rows) if r["audio_bytes"] is None and not r.get("source_error")]
    retries: Counter = Counter()
    fetched = dict(zip(need, storage.fetch_many([rows[i]["source_uri"] for i in need],
                                                cfg.input.storage_options, cfg.retry.policy(), retries)))
    out, pcms = [], {}
    for i, r in enumerate(rows):
        rec = {k: r.get(k) for k in ("audio_id", "source_uri", "source_version", "reference", "language",
                                     *TASK_COLUMNS)}
        rec.update(duration_s=None, pcm16=None, seg_start=[], seg_end=[], speech_start=[], speech_end=[],
                   status=OK, error=None)
        try:
            if r.get("source_error"):
                # refused by the source (input_path, input_scheme, ...) or an unreadable container
                raise AudioError(*split_source_error(r["source_error"]))
            data = fetched.get(i, r["audio_bytes"])
            if isinstance(data, RetriesExhausted):  # a re-run retries it: not done
                raise AudioError(TRANSIENT_KIND, f"fetch: {data}")
            if isinstance(data, Exception):
                raise AudioError("fetch", f"{type(data).__name__}: {data}")
            pcms[i] = decode_pcm16(data, cfg.decode)
            rec["duration_s"] = len(pcms[i]) / SAMPLE_RATE
        except AudioError as e:
            rec.update(status=ERROR, error=error_text(e.kind, e.message))
        except Exception as e:  # noqa: BLE001 - an unforeseen decoder failure stays per file
            rec.update(status=ERROR, error=error_text("decode", f"{type(e).__name__}: {e}"))
        out.append(rec)
    later = on_actor(cfg.segment)  # segment.vad_on actor: the whole audio goes, the actor finds speech
    if later:                      # and plans
        plans, vad_cpu = [None] * len(pcms), 0.0
    else:  # the detector and planner take the int16 samples and hear what the ASR actor will
        plans, vad_cpu, _ = plan_block(list(pcms.values()), cfg.segment, detector)  # (pcm16_float)
    carry: list[np.ndarray | None] = [None] * len(out)   # each row's pcm16 samples
    for i, plan in zip(pcms, plans):
        rec = out[i]
        if later:
            carry[i] = pcms[i]
        elif isinstance(plan, Exception):
            rec.update(status=ERROR, error=error_text("segment", f"{type(plan).__name__}: {plan}"))
        else:
            (rec["speech_start"], rec["speech_end"], rec["seg_start"], rec["seg_end"]), carry[i] = plan
        if _nbytes(carry[i]) > _BINARY_LIMIT:
            rec.update(status=ERROR, error=error_text(
                "decode", f"{carry[i].nbytes} bytes of 16 kHz audio do not fit one Arrow binary value "
                "(2 GiB, ~18.6 h): split the file, or keep decode.max_duration_s under 18 h"))
            carry[i] = None
    cpu = (time.process_time() - cpu0) / max(1, len(out))   # the table's build below is not in it (as before)
    node = ray_node_id()
    where = "on the ASR actor" if later else f"{detector.name} on decode CPU" if detector else "none"
    for k, (rec, samples) in enumerate(zip(out, carry)):  # the block's retries on its first row: sums stay right
        carried = _nbytes(samples)
        rec.update(perf_read_at=read_at, perf_decode_cpu_s=cpu, perf_vad_cpu_s=vad_cpu / len(out),
                   perf_vad=where, perf_decode_node=node, perf_fetch_retries=retries["fetch"] if k == 0 else 0,
                   perf_speech_s=carried / 2 / SAMPLE_RATE, perf_carried_bytes=carried)
    table = pa.Table.from_pylist(out, schema=DECODED_SCHEMA)
    return table.set_column(_PCM16_COLUMN, DECODED_SCHEMA.field(_PCM16_COLUMN), pcm16_column(carry))


_PCM16_COLUMN = DECODED_SCHEMA.get_field_index("pcm16")
_BINARY_LIMIT = 2**31 - 1   # bytes in one chunk of an Arrow binary column (int32 offsets)


def pcm16_column(samples: list[np.ndarray | None]) -> pa.ChunkedArray:
    """The block's pcm16 column straight from the int16 arrays (None: a null; none over 2 GiB): one
    copy of the samples into Arrow's data buffer, in chunks of at most 2 GiB, instead of a bytes object
    per row copied again into the column (~1.7-2.7x less CPU for the column)."""
    sizes = [_nbytes(s) for s in samples]
    chunks, start = [], 0
    while start < len(samples) or not chunks:
        end, size = start, 0
        while end < len(samples) and (end == start or size + sizes[end] <= _BINARY_LIMIT):
            size += sizes[end]
            end += 1
        part = samples[start:end]
        offsets = np.zeros(len(part) + 1, np.int32)
        np.cumsum(sizes[start:end], out=offsets[1:])
        data = np.concatenate([np.ascontiguousarray(s, "<i2").view(np.uint8) for s in part if s is not None]
                              or [np.zeros(0, np.uint8)])
        valid = [s is not None for s in part]
        validity = None if all(valid) else pa.array(valid, pa.bool_()).buffers()[1]
        chunks.append(pa.Array.from_buffers(pa.binary(), len(part), [validity, pa.py_buffer(offsets),
                                                                     pa.py_buffer(data)],
                                            null_count=len(part) - sum(valid)))
        start = end
    return pa.chunked_array(chunks, pa.binary())


def _nbytes(samples: np.ndarray | None) -> int:
    return 0 if samples is None else samples.nbytes


def decode_detector(cfg: JobConfig):
    """The decode workers' detector: None where there is none or the ASR actors run it."""
    from operators.audio.vad import make_detector

    return None if on_actor(cfg.segment) else make_detector(cfg.segment.vad, cfg.segment)


class Decoder:
    """The decode stage as a Ray Data actor (an actor pool of CPU workers): the voice-activity model
    loads once per actor, not once per block."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.detector = decode_detector(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return decode_batch(batch, self.cfg, self.detector)


def decode_task(batch: pa.Table, cfg: JobConfig) -> pa.Table:
    """The decode stage as plain Ray tasks (decode.min_actors: 0): the detector loads per call."""
    return decode_batch(batch, cfg, decode_detector(cfg))
