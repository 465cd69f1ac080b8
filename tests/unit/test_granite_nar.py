"""granite-nar backend on a tiny random checkpoint in the hub layout (CPU), plus the full-size model
built on the meta device against the published key list."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from operators.asr import load_backend, resolve_identity
from operators.asr.base import ASRBackend
from operators.asr.granite_nar import GraniteNarBackend
from operators.asr.granite_nar.config import BpeLayoutError, NarConfig
from operators.asr.granite_nar.loader import CheckpointError, load_model, save_checkpoint
from operators.asr.granite_nar.modeling import (GraniteSpeechNar, agreement, ctc_collapse, edit_distance,
                                                insertion_slots)
from operators.asr.granite_nar.tiny import babble, build_tiny_checkpoint, random_model, tiny_config
from operators.config import ModelConfig

KEYS_JSON = Path("/work/shared/data/granite-speech-4.1-2b-nar.keys.json")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("nar") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def backend(tiny_dir) -> GraniteNarBackend:
    return GraniteNarBackend(ModelConfig(id=str(tiny_dir), options={"max_batch": 64}))


def _clips(n: int, lo: float, hi: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [babble(float(rng.uniform(lo, hi)), seed=seed * 1000 + i) for i in range(n)]


# ---- discrete helpers --------------------------------------------------------------------------
def test_ctc_collapse_edge_cases():
    assert ctc_collapse([], blank=0) == []
    assert ctc_collapse([0, 0, 0], blank=0) == []
    assert ctc_collapse([3, 3, 0, 3, 5, 5, 0], blank=0) == [3, 3, 5]     # blank separates repeats
    assert ctc_collapse([3, 3, 0, 3, 5], blank=0, offset=1) == [2, 2, 4]  # BPE head: class t+1 = token t
    assert ctc_collapse(torch.tensor([7, 7, 9, 9, 7]), blank=9) == [7, 7]
    assert ctc_collapse([9, 9], blank=9) == []


def test_insertion_slots_edge_cases():
    assert insertion_slots([], blank=63, min_length=8) == [63] * 8
    assert insertion_slots([5], blank=63, min_length=8) == [63, 5] + [63] * 6
    assert insertion_slots([1, 2, 3, 4], blank=63, min_length=8) == [63, 1, 63, 2, 63, 3, 63, 4, 63]
    assert insertion_slots([4, 4], blank=0, min_length=1) == [0, 4, 0, 4, 0]   # repeats stay apart
    assert len(insertion_slots(list(range(10)), blank=0, min_length=8)) == 21


def test_agreement():
    assert agreement([], []) == 1.0
    assert agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert agreement([1, 2, 3], []) == 0.0
    assert agreement([1, 2, 3, 4], [1, 2, 4]) == 0.75
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2


# ---- config -------------------------------------------------------------------------------------
def test_config_roundtrip_and_published_names():
    cfg = tiny_config()
    again = NarConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    full = NarConfig()
    assert full.encoder_config.self_conditioning_layer == 8
    assert full.resolved_layer_indices() == [4, 8, 12, 16]
    assert full.blank_token_id == 100257
    # the BPE head's layout follows its width against the text vocabulary
    assert full.encoder_config.bpe_output_dim == 100352 and full.bpe_blank == (100257, 0)   # current
    assert NarConfig(encoder_config={"bpe_output_dim": 100353}).bpe_blank == (0, 1)        # older
    assert tiny_config().bpe_blank == (0, 1)                                                # 65 = 64 + 1
    assert tiny_config(encoder_config={"bpe_output_dim": 64}).bpe_blank == (63, 0)
    with pytest.raises(BpeLayoutError, match=r"is 70 classes wide but the text vocabulary is 64"):
        tiny_config(encoder_config={"bpe_output_dim": 70}).bpe_blank
    # an explicit override reads an odd width one way or the other
    assert tiny_config(encoder_config={"bpe_output_dim": 70}, bpe_blank_shifted=False).bpe_blank == (63, 0)
    assert tiny_config(encoder_config={"bpe_output_dim": 70}, bpe_blank_shifted=True).bpe_blank == (0, 1)
    assert tiny_config(encoder_config={"bpe_output_dim": 64}, bpe_blank_shifted=True).bpe_blank == (0, 1)
    # rope_theta given the transformers-5 way, unknown keys ignored
    data = cfg.to_dict()
    data["text_config"].pop("rope_theta")
    data["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    data["auto_map"] = {"AutoModel": "x.Y"}
    assert NarConfig.from_dict(data).granite_config().rope_parameters["rope_theta"] == 5e5
    with pytest.raises(ValueError, match="model_type"):
        NarConfig.from_dict({**data, "model_type": "granite_speech"})


def test_full_size_on_meta_matches_published_keys():
    # the key list was taken from a snapshot whose BPE head is vocab + 1 wide
    with torch.device("meta"):
        model = GraniteSpeechNar(NarConfig(encoder_config={"bpe_output_dim": 100353}))
        current = GraniteSpeechNar(NarConfig())       # the pinned revision: vocab wide
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in current.parameters()) == 1025
    published = json.loads(KEYS_JSON.read_text())
    expected = {k: tuple(v) for k, v in published["keys"].items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    assert not (missing or unexpected or shapes), (missing[:10], unexpected[:10], shapes[:10])
    assert len(got) == published["num_keys"] == 946
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == published["total_params"] == 2_254_570_845
    by_part = {part: sum(p.numel() for n, p in model.named_parameters() if n.startswith(part + "."))
               for part in ("encoder", "projector", "language_model")}
    assert by_part == published["total_params_by_component"]


# ---- loader ---------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_first_shard(model_dir: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shard = model_dir / sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update({k: shard.name for k in tensors})
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))


def test_loader_names_missing_and_unexpected_keys(tiny_dir, tmp_path):
    bad = _copy(tiny_dir, tmp_path / "missing")
    _rewrite_first_shard(bad, lambda t: t.pop("encoder.input_linear.bias"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): encoder\.input_linear\.bias"):
        load_model(bad)

    extra = _copy(tiny_dir, tmp_path / "extra")
    _rewrite_first_shard(extra, lambda t: t.update({"encoder.bogus.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): encoder\.bogus\.weight"):
        load_model(extra)

    shape = _copy(tiny_dir, tmp_path / "shape")
    _rewrite_first_shard(shape, lambda t: t.update({"encoder.input_linear.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: encoder\.input_linear\.bias \(7,\)"):
        load_model(shape)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path / "empty")


def test_loader_single_file_tied_head_and_no_remote_code(tiny_dir, tmp_path):
    model = random_model(seed=0)
    out = tmp_path / "single"
    save_checkpoint(model, out)                          # one model.safetensors, no index
    from safetensors.torch import load_file, save_file

    sd = load_file(str(out / "model.safetensors"))
    sd["language_model.lm_head.weight"] = sd["language_model.model.embed_tokens.weight"].clone()
    save_file(sd, str(out / "model.safetensors"))        # a tied head stored anyway is accepted
    marker = tmp_path / "remote_code_ran"
    (out / "modeling_granite_speech_nar.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_granite_speech_nar.GraniteSpeechNarForASR"}
    (out / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(out)
    assert not marker.exists()
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    sharded = load_model(tiny_dir)                       # same seed, sharded layout
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), sharded.state_dict().values()))


# ---- backend --------------------------------------------------------------------------------------
def test_backend_protocol_and_identity(tiny_dir, backend):
    assert isinstance(backend, ASRBackend)
    assert backend.name == "granite-nar" and backend.max_clip_s == 240.0
    assert backend.model_id == str(tiny_dir) and backend.revision.startswith("local-")
    assert resolve_identity("granite-nar", ModelConfig()) == (
        "ibm-granite/granite-speech-4.1-2b-nar", "a1e3416e25ce29ab3852778e54fa8b3bd59c4bf2")
    assert resolve_identity("granite-nar", ModelConfig(id="org/m", revision="abc")) == ("org/m", "abc")
    assert backend.device.type == "cpu" and backend.dtype == torch.float32
    assert backend.attn_backend == "sdpa_per_sample"
    assert not any(p.requires_grad for p in backend.model.parameters())
    with pytest.raises(ValueError, match="unknown granite-nar options"):
        GraniteNarBackend(ModelConfig(id=str(tiny_dir), options={"beam_size": 2}))
    with pytest.raises(ValueError, match="attn_backend 'flash' needs CUDA"):
        GraniteNarBackend(ModelConfig(id=str(tiny_dir), options={"attn_backend": "flash"}))


def test_transcribe_structure(backend):
    clips = _clips(5, 1.0, 8.0, seed=3) + [np.zeros(100, np.float32), np.zeros(0, np.float32)]
    out = backend.transcribe(clips, ["en"] * len(clips))
    assert len(out) == len(clips)
    for t in out[:5]:
        assert t.text and t.ctc_text and 0.0 <= t.agreement <= 1.0
    assert all(isinstance(t.text, str) for t in out[5:])  # sub-frame clips: no audio, editor only
    assert backend.transcribe([], []) == []


def test_refuses_clips_longer_than_max_clip_s(tiny_dir, backend):
    with pytest.raises(ValueError, match=r"exceeds granite-nar's 240 s limit"):
        backend.transcribe([np.zeros(241 * 16000, np.float32)], [None])
    short = GraniteNarBackend(ModelConfig(id=str(tiny_dir), options={"max_clip_s": 2}))
    with pytest.raises(ValueError, match="2 s limit"):
        short.transcribe([np.zeros(16000, np.float32), np.zeros(40000, np.float32)], [None, None])


def test_load_backend_by_name(tiny_dir):
    b = load_backend("granite-nar", ModelConfig(id=str(tiny_dir), device="cpu", dtype="float32"))
    assert b.name == "granite-nar"


def test_model_code_has_no_ray_imports():
    pkg = ROOT / "operators" / "asr" / "granite_nar"
    for f in pkg.glob("*.py"):
        assert "import ray" not in f.read_text() and "from ray" not in f.read_text(), f
