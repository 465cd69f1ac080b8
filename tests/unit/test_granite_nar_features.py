"""The "nar" log-mel features (operators.asr.features) against librosa, after the same
post-processing (first 2*(n//320) frames, log10, per-clip max-8 floor, /4+1, frame pairs stacked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.asr.features import batch_features, log_mel, num_frames
from operators.asr.granite_nar.tiny import babble

librosa = pytest.importorskip("librosa")


def _reference(audio: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=audio.astype(np.float32), sr=16000, n_fft=512, win_length=400,
                                         hop_length=160, window="hann", center=True, pad_mode="reflect",
                                         power=2.0, n_mels=80, htk=True, norm=None, dtype=np.float32)
    n = len(audio)
    logmel = np.log10(np.maximum(mel.T[: 2 * (n // 320)], 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 8.0) / 4 + 1
    return logmel.reshape(-1, 160)


@pytest.mark.parametrize("seconds,seed", [(0.37, 0), (1.0, 1), (3.3, 2), (9.99, 3)])
def test_nar_features_match_librosa(seconds, seed):
    audio = babble(seconds, seed=seed)
    ours = log_mel(audio, "nar").numpy()
    ref = _reference(audio)
    assert ours.shape == ref.shape == (num_frames(len(audio)), 160)
    assert np.abs(ours - ref).max() < 1e-4


def test_batch_features_pad_and_lengths():
    clips = [babble(s, seed=i) for i, s in enumerate((0.5, 2.0, 1.1))]
    feats, lengths = batch_features(clips, "nar")
    assert lengths.tolist() == [len(c) // 320 for c in clips]
    for i, c in enumerate(clips):
        assert torch.equal(feats[i, : lengths[i]], log_mel(c, "nar"))
        assert not feats[i, lengths[i]:].any()
