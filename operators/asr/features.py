"""Granite Speech log-mel features in plain torch (torchaudio does not import next to CPU torch here).

The math of IBM's extractor (torchaudio MelSpectrogram defaults): 16 kHz, n_fft 512, Hann window 400
(periodic), hop 160, 80 HTK mel bins without filter normalisation, power 2, centred with reflect
padding; log10(clamp(mel, 1e-10)); per-utterance floor at max - 8; /4 + 1; pairs of frames stacked
into 160-dim vectors at 50 Hz. Two variants differ in one detail:

- "nar" (granite-speech-4.1-2b-nar): keep the first 2 * (n // 320) mel frames, then take the max.
- "ar" (transformers' GraniteSpeechFeatureExtractor): the max is taken over all n // 160 + 1 frames,
  then an odd last frame is dropped.

Features are computed per clip, so padding in a batch never changes a clip's features.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import torch

SAMPLE_RATE = 16_000
N_FFT = 512
WIN_LENGTH = 400
HOP = 160
N_MELS = 80

Variant = Literal["nar", "ar"]


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   device: str = "cpu") -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular HTK filters, no area normalisation, float32."""
    n_freqs = n_fft // 2 + 1
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(_hz_to_mel(torch.tensor(0.0)).item(),
                           _hz_to_mel(torch.tensor(sample_rate / 2.0)).item(), n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(device=device, dtype=torch.float32)


@lru_cache(maxsize=8)
def _window(device: str) -> torch.Tensor:
    return torch.hann_window(WIN_LENGTH, periodic=True, dtype=torch.float32, device=device)


def mel_power(audio: torch.Tensor) -> torch.Tensor:
    """(frames, n_mels) mel power spectrogram of one 1-D clip; frames = n // HOP + 1."""
    device = str(audio.device)
    spec = torch.stft(audio.float(), N_FFT, hop_length=HOP, win_length=WIN_LENGTH, window=_window(device),
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (freqs, frames)
    return power.transpose(0, 1) @ mel_filterbank(device=device)


def num_frames(n_samples: int, variant: Variant = "nar") -> int:
    """Encoder frames (50 Hz, 160-dim) a clip of n samples yields."""
    return n_samples // 320 if variant == "nar" else (n_samples // HOP + 1) // 2


def log_mel(audio: torch.Tensor | np.ndarray, variant: Variant = "nar") -> torch.Tensor:
    """One 16 kHz mono clip -> (num_frames(n), 160) float32 features."""
    audio = torch.as_tensor(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected a 1-D clip, got shape {tuple(audio.shape)}")
    n = audio.shape[0]
    reflect_min = N_FFT // 2 + 1
    if n < reflect_min:  # reflect padding needs n > n_fft / 2: pad with zeros (silence)
        audio = torch.nn.functional.pad(audio, (0, reflect_min - n))
    mel = mel_power(audio)[: n // HOP + 1]
    logmel = mel.clamp(min=1e-10).log10()
    if variant == "nar":
        logmel = logmel[: 2 * (n // 320)]
        if logmel.shape[0] == 0:
            return logmel.new_zeros((0, 2 * N_MELS))
        logmel = torch.maximum(logmel, logmel.max() - 8.0) / 4 + 1
    else:
        logmel = torch.maximum(logmel, logmel.max() - 8.0) / 4 + 1
        if logmel.shape[0] % 2:
            logmel = logmel[:-1]
    return logmel.reshape(-1, 2 * N_MELS)


def device_clips(audios: Sequence[torch.Tensor | np.ndarray], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Clips as float32 tensors on `device`. On CUDA the clips go up in one copy from one pinned host
    buffer (non-blocking, so the host goes on preparing while the copy runs), then split on the GPU."""
    device = torch.device(device)
    if device.type != "cuda" or not audios:
        return [torch.as_tensor(np.asarray(a, np.float32) if not isinstance(a, torch.Tensor) else a).to(device)
                for a in audios]
    host = [np.asarray(a, np.float32) for a in audios]
    flat = torch.from_numpy(np.concatenate(host)).pin_memory()
    return list(flat.to(device, non_blocking=True).split([len(a) for a in host]))


def batch_features(audios: Sequence[torch.Tensor | np.ndarray], variant: Variant = "nar",
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Clips -> (features (B, T_max, 160) zero-padded, lengths (B,) in frames), each clip computed
    on its own, on `device` (the features are computed there: only PCM crosses to the GPU)."""
    feats = [log_mel(a, variant) for a in device_clips(audios, device)]
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=device)
    if not feats:
        return torch.zeros((0, 0, 2 * N_MELS), device=device), lengths
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


# --------------------------------------------------------------------------------------------------
# Batched path for an accelerator: one STFT launch for a whole sub-batch instead of one per clip
# --------------------------------------------------------------------------------------------------
PCM_SCALE = 32767.0   # operators.audio.decode.to_pcm16 / from_pcm16: int16 <-> float
PCM_MIN = np.float32(-32768.0) / np.float32(PCM_SCALE)  # int16's lowest sample as from_pcm16 gives it
FEATURE_CHUNK = 32    # clips per batched STFT (bounds the complex spectrogram: ~1.6 GB at 128 x 60 s)


def pcm16_matrix(audios: Sequence[np.ndarray], pin: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Clips (float in [-32768/32767, 1], as the decode stage's 16-bit PCM gives them) -> (B, max_len)
    int16 host tensor, zero-padded, optionally in pinned memory (half the bytes of float32 to copy to a
    device). For clips that came from 16-bit PCM this is lossless, -32768 included (a source's own
    samples are carried as they are): from_pcm16 then this round-trips."""
    lengths = [len(a) for a in audios]
    out = torch.zeros((len(audios), max(lengths, default=0)), dtype=torch.int16, pin_memory=pin)
    view = out.numpy()
    for i, a in enumerate(audios):
        np.rint(np.clip(np.asarray(a, np.float32), PCM_MIN, 1.0) * PCM_SCALE, out=view[i, :len(a)],
                casting="unsafe")
    return out, lengths


def batch_log_mel(signal: torch.Tensor, lengths: Sequence[int], chunk: int = FEATURE_CHUNK
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) zero-padded float clips on any device + their lengths -> ("nar" features (B, T, 160)
    zero-padded, frame lengths (B,)), equal to log_mel() of each clip on its own (each clip is
    reflect-padded at its own end, its floor taken over its own frames), in a few batched launches."""
    dev = signal.device
    n = torch.tensor(list(lengths), dtype=torch.long)
    frames = n // 320
    if signal.shape[0] == 0:
        return torch.zeros((0, 0, 2 * N_MELS), device=dev), frames.to(dev)
    out = torch.zeros((signal.shape[0], int(frames.max()), 2 * N_MELS), device=dev)
    for s in range(0, signal.shape[0], chunk):
        sub_n = n[s:s + chunk]
        t = int((sub_n // 320).max())
        if t:
            out[s:s + chunk, :t] = _batch_log_mel(signal[s:s + chunk, :int(sub_n.max())], sub_n)[:, :t]
    return out, frames.to(dev)


def _batch_log_mel(signal: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    dev = signal.device
    b = signal.shape[0]
    half = N_FFT // 2
    npad = n.clamp(min=half + 1)                      # log_mel zero-pads clips shorter than this
    width = int(npad.max())
    if signal.shape[1] < width:
        signal = torch.nn.functional.pad(signal, (0, width - signal.shape[1]))
    # centred reflect padding at each clip's own ends, by index: source sample of each padded position
    # (index math on the device: the (B, L) index would be hundreds of MB to build and copy on the host)
    pos = (torch.arange(width + 2 * half, device=dev) - half).unsqueeze(0)
    m = npad.to(dev).unsqueeze(1)
    src = pos.abs()
    src = torch.where(src >= m, 2 * (m - 1) - src, src)
    inside = src >= 0                                  # past the clip's reflected end: zeros (unused)
    x = torch.gather(signal.float(), 1, src.clamp(0, width - 1)) * inside
    spec = torch.stft(x, N_FFT, hop_length=HOP, win_length=WIN_LENGTH, window=_window(str(dev)),
                      center=False, normalized=False, onesided=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()     # (B, freqs, frames)
    logmel = (power.transpose(1, 2) @ mel_filterbank(device=str(dev))).clamp(min=1e-10).log10()
    keep = 2 * (n // 320)
    t = int(keep.max())                                # host ints: no device sync
    keep = keep.to(dev)
    logmel = logmel[:, :t]
    valid = (torch.arange(t, device=dev).unsqueeze(0) < keep.unsqueeze(1)).unsqueeze(-1)
    peak = logmel.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
    feats = (torch.maximum(logmel, peak - 8.0) / 4 + 1).masked_fill(~valid, 0.0)
    return feats.reshape(b, t // 2, 2 * N_MELS)
