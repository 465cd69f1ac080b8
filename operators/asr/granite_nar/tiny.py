"""A tiny random Granite Speech NAR checkpoint in the published hub layout (config.json, sharded
safetensors + index, tokenizer files), for tests, the CPU benchmark and the demo of the loader.
Random weights: the text is garbage, the structure is real."""

from __future__ import annotations

from pathlib import Path

import torch

from operators.asr.granite_nar.config import NarConfig

TINY_VOCAB = 64          # w0..w60, <unk>=61, <pad>=62, <eos>=63 (editor blank / bos / eos)


def tiny_config(**overrides) -> NarConfig:
    data = {
        "model_type": "granite_speech_nar",
        "encoder_config": {
            "input_dim": 160, "num_layers": 4, "hidden_dim": 32, "feedforward_mult": 4, "num_heads": 2,
            "dim_head": 16, "output_dim": 12, "context_size": 20, "max_pos_emb": 32, "dropout": 0.1,
            "pred_dropout": 0.25, "conv_kernel_size": 15, "conv_expansion_factor": 2,
            "self_conditioning_layer": 2, "bpe_output_dim": TINY_VOCAB + 1, "bpe_pooling_window": 4,
        },
        "projector_config": {
            "encoder_dim": 32, "llm_dim": 64, "downsample_rate": 5, "num_encoder_layers": 4,
            "hidden_size": 48, "num_heads": 4, "num_layers": 2, "dropout_prob": 0.1, "block_size": 15,
            "mlp_ratio": 2, "layernorm_eps": 1e-6, "attn_bias": True, "mlp_bias": True,
        },
        "text_config": {
            "model_type": "granite", "vocab_size": TINY_VOCAB, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "attention_multiplier": 0.0625,
            "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "logits_scaling": 8.0,
            "rope_theta": 10000.0, "pad_token_id": 62, "bos_token_id": 63, "eos_token_id": 63,
            "tie_word_embeddings": True, "hidden_act": "silu",
        },
        "encoder_layer_indices": [1, 2, 3, -1],
        "scale_projected_embeddings": True,
        "blank_token_id": 63,
        "min_edit_sequence_length": 8,
        "auto_map": {"AutoModel": "modeling_granite_speech_nar.GraniteSpeechNarForASR"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return NarConfig.from_dict(data)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(TINY_VOCAB - 3)}
    vocab.update({"<unk>": TINY_VOCAB - 3, "<pad>": TINY_VOCAB - 2, "<eos>": TINY_VOCAB - 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<eos>", eos_token="<eos>")


def random_model(config: NarConfig | None = None, seed: int = 0):
    from operators.asr.granite_nar.modeling import GraniteSpeechNar

    torch.manual_seed(seed)
    model = GraniteSpeechNar(config or tiny_config())
    with torch.no_grad():  # non-trivial BatchNorm statistics and LayerNorm affines
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.normal_(1, 0.1)
                mod.bias.normal_(0, 0.1)
        model.language_model.model.embed_tokens.weight.normal_(0, 0.05)
        model.encoder.out_bpe.weight.normal_(0, 1.0)   # hypotheses that follow the audio
        if model.config.bpe_blank[1]:  # shifted layout: the class of the text eos (the other layout's
            model.encoder.out_bpe.bias[model.config.vocab_size].fill_(-1e4)  # blank) is never emitted
        model.encoder.out.weight.normal_(0, 0.5)
        for layer in model.language_model.model.layers:  # an editor that edits, not only copies
            layer.mlp.down_proj.weight.normal_(0, 2.0)
            layer.self_attn.o_proj.weight.normal_(0, 2.0)
    return model.eval().requires_grad_(False)


def babble(seconds: float, seed: int = 0, sample_rate: int = 16_000):
    """Speech-like test audio: 40-300 ms segments of two random tones (or silence) + a little noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        seg = int(rng.uniform(0.04, 0.3) * sample_rate)
        t = np.arange(min(seg, n - pos)) / sample_rate
        if rng.random() > 0.2:
            f1, f2 = rng.uniform(100, 3000, 2)
            out[pos:pos + len(t)] = rng.uniform(0.05, 0.5) * (np.sin(2 * np.pi * f1 * t) + 0.5 * np.sin(2 * np.pi * f2 * t))
        pos += seg
    return out + 0.003 * rng.standard_normal(n).astype(np.float32)




def build_tiny_checkpoint(model_dir: str | Path, seed: int = 0, config: NarConfig | None = None,
                          max_shard_bytes: int | None = 400_000) -> Path:
    """Write a random tiny checkpoint (sharded by default) + tokenizer to `model_dir`."""
    from operators.asr.granite_nar.loader import save_checkpoint

    model_dir = Path(model_dir)
    model = random_model(config, seed)
    save_checkpoint(model, model_dir, max_shard_bytes=max_shard_bytes)
    tiny_tokenizer().save_pretrained(str(model_dir))
    return model_dir


def move_bpe_blank(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint whose BPE head is vocab + 1 wide (blank 0, class k = token k-1) into the
    other published layout (vocab wide, classes are token ids, blank = blank_token_id) by moving the
    blank row: the same model, as the two hub snapshots hold it. The old head's class for the token
    blank_token_id must never win (random_model makes it so), since the new layout has no such token."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    vocab, blank = cfg["text_config"]["vocab_size"], cfg["blank_token_id"]
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(str(f))
        if "encoder.out_bpe.weight" not in tensors:
            continue
        for name in ("encoder.out_bpe.weight", "encoder.out_bpe.bias"):
            old = tensors[name]
            if old.shape[0] != vocab + 1:
                raise ValueError(f"{src}: {name} is {old.shape[0]} wide, not vocab + 1 = {vocab + 1}")
            new = old[1:].clone()
            new[blank] = old[0]
            tensors[name] = new.contiguous()
        save_file(tensors, str(f), metadata={"format": "pt"})
    cfg["encoder_config"]["bpe_output_dim"] = vocab
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst

