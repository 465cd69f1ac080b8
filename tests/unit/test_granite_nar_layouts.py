"""The published checkpoint layouts of granite-nar: the BPE CTC head vocab + 1 wide (older hub
snapshots: blank 0, class k = token k-1) or vocab wide (current: classes are token ids, blank =
blank_token_id), and the native transformers port's namespace. The same tiny random model saved each
way must transcribe identically with no setting; a head of any other width is a clear load error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from operators.asr.granite_nar import GraniteNarBackend
from operators.asr.granite_nar.loader import CheckpointError, inspect_checkpoint
from operators.asr.granite_nar.tiny import TINY_VOCAB, babble, build_tiny_checkpoint, move_bpe_blank
from operators.config import ModelConfig

CLIPS = [babble(s, seed=i) for i, s in enumerate([0.7, 1.3, 2.2, 3.1, 4.4, 5.0, 6.6, 9.5])]

# the native port's names (written here from PR #46031's converter description, independently of the
# loader's inverse table), applied in order
TO_NATIVE = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^encoder\.out_bpe\.", "model.out_bpe."),
    (r"^encoder\.", "model.encoder."),
    (r"^projector\.layer_projector\.", "model.projector.proj."),
    (r"^projector\.out_linear\.", "model.projector.qformer.linear."),
    (r"^projector\.query$", "model.projector.qformer.queries"),
    (r"^projector\.window_positions$", "model.projector.qformer.pos_emb"),
    (r"^projector\.qformer\.layers\.(\d+)\.cross_attention\.", r"model.projector.qformer.layers.\1.cross_attn."),
    (r"^projector\.", "model.projector."),
]
NORM = re.compile(r"^projector\.(layer_norms\.\d+|out_norm|qformer\.layers\.\d+\.(attn_norm|mlp_norm))\.")


def _to_native(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    native = {}
    for k, v in tensors.items():
        if NORM.match(k):  # identity affines, dropped by the converter
            assert torch.equal(v, torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)), k
            continue
        for pattern, repl in TO_NATIVE:
            k = re.sub(pattern, repl, k)
        native[k] = v
    save_file(native, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    enc, proj = cfg["encoder_config"], cfg["projector_config"]
    enc["vocabulary_size"], enc["pooling_window"] = enc.pop("bpe_output_dim"), enc.pop("bpe_pooling_window")
    for old, new in {"num_heads": "num_attention_heads", "num_layers": "num_hidden_layers",
                     "block_size": "window_size", "layernorm_eps": "layer_norm_eps",
                     "attn_bias": "attention_bias"}.items():
        proj[new] = proj.pop(old)
    proj["intermediate_size"] = int(proj["hidden_size"] * proj.pop("mlp_ratio"))
    for k in ("llm_dim", "mlp_bias", "encoder_dim", "num_encoder_layers", "dropout_prob"):
        proj.pop(k)
    enc.pop("pred_dropout"), enc.pop("blank_token_id", None)
    cfg["text_config"]["model_type"] = "granite_speech_nar_text"
    layer_indices = cfg.pop("encoder_layer_indices")
    assert layer_indices == [1, 2, 3, -1]
    cfg["encoder_layer_indices"] = layer_indices   # the tiny model's are not the default [4, 8, 12, -1]
    for k in ("min_edit_sequence_length", "scale_projected_embeddings"):
        cfg.pop(k)
    cfg["auto_map"] = {}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    shifted = build_tiny_checkpoint(root / "vocab_plus_1", seed=3)
    return {"vocab_plus_1": shifted, "vocab": move_bpe_blank(shifted, root / "vocab"),
            "native": _to_native(shifted, root / "native")}


def _ids(model_dir: Path, **options) -> list[tuple[list[int], list[int]]]:
    backend = GraniteNarBackend(ModelConfig(id=str(model_dir), options=options))
    return backend.transcribe_ids(CLIPS)


def test_layouts_are_what_they_claim(layouts):
    old, new = inspect_checkpoint(layouts["vocab_plus_1"]), inspect_checkpoint(layouts["vocab"])
    assert old.shapes["encoder.out_bpe.weight"][0] == TINY_VOCAB + 1 and old.config.bpe_blank == (0, 1)
    assert new.shapes["encoder.out_bpe.weight"][0] == TINY_VOCAB and new.config.bpe_blank == (TINY_VOCAB - 1, 0)
    native = inspect_checkpoint(layouts["native"])
    assert native.native and not old.native and native.config.to_dict() == old.config.to_dict()


def test_both_head_layouts_transcribe_identically_with_no_setting(layouts):
    old, new = _ids(layouts["vocab_plus_1"]), _ids(layouts["vocab"])
    assert old == new
    hyps = [h for h, _ in old]
    assert sum(map(len, hyps)) > 3 * len(CLIPS) and len({t for h in hyps for t in h}) > 3  # not trivial
    # the test can fail: the other reading of the same weights is token soup
    assert _ids(layouts["vocab"], bpe_blank_shifted=True) != new
    assert _ids(layouts["vocab_plus_1"], bpe_blank_shifted=False) != old


def test_native_transformers_layout_transcribes_identically(layouts):
    assert _ids(layouts["native"]) == _ids(layouts["vocab_plus_1"])


def test_weights_decide_when_config_json_disagrees(layouts, tmp_path):
    odd = shutil.copytree(layouts["vocab"], tmp_path / "stale_config")
    cfg = json.loads((odd / "config.json").read_text())
    cfg["encoder_config"]["bpe_output_dim"] = TINY_VOCAB + 1    # config.json from the other snapshot
    (odd / "config.json").write_text(json.dumps(cfg))
    assert _ids(odd) == _ids(layouts["vocab"])


def test_a_third_width_is_a_load_error_naming_both_numbers(tmp_path):
    from operators.asr.granite_nar.tiny import tiny_config

    bad = build_tiny_checkpoint(tmp_path / "w70", config=tiny_config(
        encoder_config={"bpe_output_dim": 70}, bpe_blank_shifted=False))
    cfg = json.loads((bad / "config.json").read_text())
    cfg.pop("bpe_blank_shifted")                                 # as published: no setting
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"w70: the BPE CTC head \(encoder.out_bpe\) is 70 classes wide "
                                              r"but the text vocabulary is 64.*65.*64"):
        GraniteNarBackend(ModelConfig(id=str(bad)))
    # the explicit override still reads it
    out = GraniteNarBackend(ModelConfig(id=str(bad), options={"bpe_blank_shifted": False})).transcribe_ids(CLIPS[:2])
    assert len(out) == 2
