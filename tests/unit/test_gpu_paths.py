"""The GPU branches of the NAR path that can be proven on a CPU (issue 17): the load-time probe, the
staged backend (only device work under the model lock), the fp32 vocabulary heads, batched device
features from int16 PCM, one host sync per AR batch, buffers after a dtype cast, the allocator
setting, and the image's pins."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from operators.asr import features
from operators.asr.granite_nar import GraniteNarBackend, attention
from operators.asr.granite_nar import backend as nar_backend
from operators.asr.granite_nar import modeling
from operators.asr.granite_nar.tiny import babble, build_tiny_checkpoint, tiny_config, tiny_tokenizer
from operators.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("nar") / "ckpt", seed=4)


def _pcm16_exact(a: np.ndarray) -> np.ndarray:
    """What the decode stage hands the ASR stage: 16-bit PCM back to float."""
    return (np.clip(a, -1, 1) * 32767.0).round().astype("<i2").astype(np.float32) / 32767.0


# ----------------------------------------------------------------------------- load-time probe
def test_a_kernel_that_fails_on_first_use_fails_the_load(ckpt, monkeypatch):
    """flash-attn's CUDA extension is imported on first use: a broken one must end the job at load
    (one line naming the kernel and the fix), not turn every batch into error rows."""
    def broken(*args, **kwargs):
        raise ImportError("flash_attn_2_cuda: undefined symbol _ZN3c104cuda9SetDeviceEi")

    monkeypatch.setattr(attention, "packed_attention", broken)
    with pytest.raises(RuntimeError, match=r"first forward with attention 'sdpa_per_sample'.*ImportError"
                                           r".*flash_attn_2_cuda.*attn_backend"):
        GraniteNarBackend(ModelConfig(id=str(ckpt), device="cpu"))


def test_the_stage_reports_a_failed_probe_as_a_load_error(ckpt, monkeypatch):
    from operators.asr.stage import ASRStage, BackendLoadError
    from operators.config import JobConfig

    monkeypatch.setattr(attention, "packed_attention",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kernel image is available")))
    cfg = JobConfig.model_validate({"asr": {"backend": "granite-nar", "model": {"id": str(ckpt), "device": "cpu"}}})
    with pytest.raises(BackendLoadError, match="could not load.*first forward.*no kernel image"):
        ASRStage(cfg)


def test_probe_can_be_turned_off(ckpt, monkeypatch):
    calls = []
    monkeypatch.setattr(GraniteNarBackend, "probe", lambda self: calls.append(1))
    GraniteNarBackend(ModelConfig(id=str(ckpt), device="cpu", options={"probe": False}))
    GraniteNarBackend(ModelConfig(id=str(ckpt), device="cpu"))
    assert calls == [1]


# ----------------------------------------------------------------------------- staged backend
def test_staged_calls_equal_transcribe(ckpt):
    b = GraniteNarBackend(ModelConfig(id=str(ckpt), device="cpu", options={"max_batch": 4}))
    rng = np.random.default_rng(0)
    clips = [_pcm16_exact(babble(float(rng.uniform(0.3, 6)), seed=i)) for i in range(9)]
    prepared = b.prepare(clips, ["en"] * 9)
    assert [len(s.index) for s in prepared.batches] == [4, 4, 1]
    ran = b.run(prepared)
    # run() returns token ids only: nothing for the host to decode under the lock
    assert all(isinstance(h, list) and isinstance(e, list) for h, e in ran)
    staged = b.finish(ran)
    direct = b.transcribe(clips, ["en"] * 9)
    assert [(t.text, t.ctc_text, t.agreement) for t in staged] == [(t.text, t.ctc_text, t.agreement) for t in direct]
    assert any(t.text for t in direct)


def test_from_model_uses_the_models_device_and_dtype():
    model = modeling.build_random(tiny_config(), "cpu", torch.float32, seed=1)
    b = GraniteNarBackend.from_model(model, tiny_tokenizer(), {"max_batch": 8})
    assert b.device.type == "cpu" and b.dtype == torch.float32 and b.max_batch == 8
    assert len(b.transcribe([babble(1.0, seed=1)], ["en"])) == 1


def test_agreement_uses_a_c_edit_distance_and_matches_the_python_one():
    rng = np.random.default_rng(2)
    for _ in range(50):
        a = rng.integers(0, 100_352, rng.integers(0, 40)).tolist()
        b = [t if rng.random() > 0.2 else int(rng.integers(0, 100_352)) for t in a if rng.random() > 0.1]
        assert modeling.edit_distance(a, b) == modeling._edit_distance_py(a, b)
    assert modeling._levenshtein is not None, "rapidfuzz (a jiwer dependency) should be installed"
    a = list(range(90))
    b = [t + (i % 7 == 0) for i, t in enumerate(a)]
    t0 = time.perf_counter()
    for _ in range(128):
        modeling.edit_distance(a, b)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(128):
        modeling._edit_distance_py(a, b)
    slow = time.perf_counter() - t0
    assert fast < slow   # not a timing target: a check that the C path is the one taken


# ----------------------------------------------------------------------------- fp32 heads
def test_vocabulary_head_argmax_is_taken_on_fp32_logits():
    """Two classes 1 apart at 256: bf16 logits round both to 256 and the arg-max takes the first;
    fp32 accumulation keeps the second ahead."""
    x = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    w = torch.tensor([[256.0, 0.0], [256.0, 1.0]], dtype=torch.bfloat16)
    assert torch.nn.functional.linear(x, w).argmax(-1).item() == 0   # the bf16 rounding
    assert modeling._argmax_rows(x, w).item() == 1
    bias = torch.tensor([0.0, -2.0], dtype=torch.bfloat16)
    assert modeling._argmax_rows(x, w, bias).item() == 0


def test_bf16_model_heads_agree_with_fp32_logits_of_the_same_weights():
    """On a bf16 model, the editor's and the BPE head's arg-max equal the arg-max of fp32 logits
    computed from the same bf16 hidden states and weights, row for row."""
    torch.manual_seed(0)
    hidden = torch.randn(300, 64).to(torch.bfloat16)
    weight = (torch.randn(5000, 64) * 0.02).to(torch.bfloat16)
    want = (hidden.float() @ weight.float().T).argmax(-1)
    assert torch.equal(modeling._argmax_rows(hidden, weight), want)


# ----------------------------------------------------------------------------- features
def test_batched_features_from_int16_equal_per_clip_features():
    rng = np.random.default_rng(5)
    clips = [_pcm16_exact(babble(float(s), seed=i)) for i, s in enumerate(rng.uniform(0.001, 9, 37))]
    clips += [np.zeros(100, np.float32), np.full(300, 0.1, np.float32), np.zeros(0, np.float32)]
    ref, ref_len = features.batch_features(clips, "nar")
    pcm, lengths = features.pcm16_matrix(clips)
    assert pcm.dtype == torch.int16 and pcm.shape == (len(clips), max(lengths))
    got, got_len = features.batch_log_mel(pcm.float() / features.PCM_SCALE, lengths, chunk=8)
    assert torch.equal(got_len, ref_len)
    assert torch.equal(got, ref), float((got - ref).abs().max())


def test_int16_matrix_carries_every_16_bit_sample_exactly():
    """The decode stage carries a source's own samples (-32768 included); from_pcm16 then pcm16_matrix
    gives them back, so the batched features see what the per-clip ones do."""
    from operators.audio.decode import from_pcm16

    s = np.arange(-32768, 32768, dtype=np.int16)
    clip = from_pcm16(s.tobytes())
    pcm, _ = features.pcm16_matrix([clip, clip[::-1]])
    assert torch.equal(pcm[0], torch.from_numpy(s)) and torch.equal(pcm[1], torch.from_numpy(s[::-1].copy()))
    assert torch.equal(pcm[0].float() / features.PCM_SCALE, torch.from_numpy(clip))


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def test_batched_features_launch_a_fixed_number_of_stfts():
    clips = [babble(2.0 + i * 0.1, seed=i) for i in range(24)]
    pcm, lengths = features.pcm16_matrix(clips)
    with _Ops() as ops:
        features.batch_log_mel(pcm.float() / features.PCM_SCALE, lengths, chunk=32)
    per_clip = _Ops()
    with per_clip:
        features.batch_features(clips, "nar")
    stft = [n for n in ops.names if "fft" in n]
    assert 0 < len(stft) <= 2, stft
    assert len([n for n in per_clip.names if "fft" in n]) >= 24


# ----------------------------------------------------------------------------- granite-ar
def test_granite_ar_batched_encoder_syncs_once_not_per_clip(tmp_path):
    from operators.asr import load_backend
    from operators.asr.granite_ar import random_checkpoint

    b = load_backend("granite-ar", ModelConfig(id=str(random_checkpoint(tmp_path / "ar")), device="cpu"))

    def syncs(n):
        clips = [babble(0.5 + 0.3 * i, seed=i) for i in range(n)]
        with _Ops() as ops:
            b.encode_batch(clips)
        return ops.names.count("_local_scalar_dense")

    assert syncs(8) == syncs(2), "a device-to-host sync per clip"


# ----------------------------------------------------------------------------- buffers, allocator, pins
def test_build_random_keeps_rotary_frequencies_in_fp32():
    cfg = tiny_config()
    model = modeling.build_random(cfg, "cpu", torch.bfloat16, seed=0)
    assert model.dtype == torch.bfloat16
    rope = model.language_model.model.rotary_emb
    fresh = modeling.build_random(cfg, "cpu", torch.float32, seed=0).language_model.model.rotary_emb
    assert rope.inv_freq.dtype == torch.float32
    assert torch.equal(rope.inv_freq, fresh.inv_freq)
    # what a blanket cast does: the bug this guards against
    assert not torch.equal(fresh.inv_freq.to(torch.bfloat16).float(), fresh.inv_freq)
    assert model.encoder.attention_dists.dtype == torch.long


def test_nar_benchmark_builds_through_build_random():
    text = (ROOT / "benchmarks/nar_model.py").read_text()
    assert "build_random(" in text and ".to(torch.bfloat16).eval()" not in text


def test_expandable_segments_are_asked_for_unless_the_user_set_them(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", lambda s: seen.append(s))
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    nar_backend.expandable_segments()
    assert seen == ["expandable_segments:True"]
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    nar_backend.expandable_segments()
    assert seen == ["expandable_segments:True"]


def test_h100_profile_does_not_empty_the_cache():
    cfg = yaml.safe_load((ROOT / "configs/nar-h100.yaml").read_text())
    opts = cfg["asr"]["model"]["options"]
    assert not opts.get("empty_cache", False)
    assert opts["max_batch"] == cfg["asr"]["batch_size"] == 128


def test_image_pins_torch_to_its_cuda_and_checks_the_kernels():
    text = (ROOT / "infra/Dockerfile").read_text()
    tag = re.search(r"^ARG CUDA_TAG=(cu\d+)$", text, re.M).group(1)
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-\$\{CUDA_TAG\}$", text, re.M)
    assert re.search(r"--index-url \"https://download\.pytorch\.org/whl/\$\{CUDA_TAG\}\" \"torch==\$\{TORCH_VERSION\}\"",
                     text)
    assert re.search(r"^ARG TORCH_VERSION=2\.1[1-9]\.\d+$", text, re.M)
    assert tag.startswith("cu12") or tag.startswith("cu13")
    assert "from torch.nn.attention.varlen import varlen_attn" in text   # the build fails without it
    assert "import flash_attn_2_cuda" in text
    assert not re.search(r"pip install[^\n]*\bflash-attn\b(?!=)", text), "flash-attn unpinned"
    assert "expandable_segments:True" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'"flash-attn"', pyproject), "flash-attn must be pinned where it is named"
