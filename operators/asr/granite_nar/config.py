"""Configuration of the Granite Speech 4.1 NAR ("NLE") model, parsed from the checkpoint's config.json.

The published config.json (model_type "granite_speech_nar") carries three sub-configs, an `auto_map`
pointing at remote code (ignored: nothing from the checkpoint is executed) and a few top-level fields.
Defaults are the published full-size values, so `NarConfig()` is the 2.25B model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_TYPES = ("granite_speech_nar", "nle")

# the published editor (granite-4.0-1b-base, bidirectional)
DEFAULT_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "granite",
    "vocab_size": 100352,
    "hidden_size": 2048,
    "intermediate_size": 4096,
    "num_hidden_layers": 40,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "attention_multiplier": 0.0078125,
    "embedding_multiplier": 12.0,
    "residual_multiplier": 0.22,
    "logits_scaling": 8.0,
    "rope_theta": 10000.0,
    "pad_token_id": 100256,
    "bos_token_id": 100257,
    "eos_token_id": 100257,
    "tie_word_embeddings": True,
}


class BpeLayoutError(ValueError):
    """The BPE CTC head's width matches neither published layout (see NarConfig.bpe_blank)."""


# field names of the native transformers port (PR #46031's converter writes them) -> the hub's names
NATIVE_FIELD_NAMES = {
    "encoder_config": {"vocabulary_size": "bpe_output_dim", "pooling_window": "bpe_pooling_window"},
    "projector_config": {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers",
                         "window_size": "block_size", "layer_norm_eps": "layernorm_eps",
                         "attention_bias": "attn_bias"},
}


def _hub_field_names(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json in either namespace -> the hub's field names. The native port renames a few
    fields, folds mlp_ratio into intermediate_size and drops fields it derives (llm_dim, encoder_dim,
    num_encoder_layers); they are derived the same way here."""
    data = dict(data)
    for sub, names in NATIVE_FIELD_NAMES.items():
        part = dict(data.get(sub) or {})
        for native, hub in names.items():
            if native in part and hub not in part:
                part[hub] = part.pop(native)
        data[sub] = part
    enc, proj, text = data["encoder_config"], data["projector_config"], data.get("text_config") or {}
    if text.get("model_type") == "granite_speech_nar_text":   # the port's bidirectional Granite
        data["text_config"] = {**text, "model_type": "granite"}
    if "intermediate_size" in proj and "mlp_ratio" not in proj and proj.get("hidden_size"):
        proj["mlp_ratio"] = proj.pop("intermediate_size") / proj["hidden_size"]
    if "encoder_dim" not in proj and "hidden_dim" in enc:
        proj["encoder_dim"] = enc["hidden_dim"]
    if "llm_dim" not in proj and "hidden_size" in text:
        proj["llm_dim"] = text["hidden_size"]
    if "num_encoder_layers" not in proj:
        proj["num_encoder_layers"] = len(data.get("encoder_layer_indices") or [4, 8, 12, -1])
    return data


def _take(cls, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class EncoderConfig:
    """Conformer CTC encoder with self-conditioning and a pooled BPE CTC head."""

    input_dim: int = 160
    num_layers: int = 16
    hidden_dim: int = 1024
    feedforward_mult: int = 4
    num_heads: int = 8
    dim_head: int | None = 128
    output_dim: int = 348               # character CTC head (blank = index 0)
    context_size: int = 200             # block-local attention, frames
    max_pos_emb: int = 512              # Shaw relative positions
    dropout: float = 0.1
    pred_dropout: float = 0.25
    conv_kernel_size: int = 15
    conv_expansion_factor: int = 2
    self_conditioning_layer: int | None = None   # default num_layers // 2
    bpe_output_dim: int = 100352        # the head's width; the loader takes it from the weights
    bpe_pooling_window: int = 4
    blank_token_id: int | None = None   # the character head's blank (self-conditioning uses class 0)

    def __post_init__(self) -> None:
        if self.dim_head is None:
            self.dim_head = self.hidden_dim // self.num_heads
        if self.self_conditioning_layer is None:
            self.self_conditioning_layer = self.num_layers // 2
        if not 0 < self.context_size <= self.max_pos_emb:
            raise ValueError(f"encoder context_size {self.context_size} must be in 1..max_pos_emb "
                             f"({self.max_pos_emb})")
        if not 1 <= self.self_conditioning_layer <= self.num_layers:
            raise ValueError(f"self_conditioning_layer {self.self_conditioning_layer} outside 1..{self.num_layers}")


@dataclass
class ProjectorConfig:
    """Window Q-Former: windows of `block_size` encoder frames -> block_size // downsample_rate queries."""

    encoder_dim: int = 1024
    llm_dim: int = 2048
    downsample_rate: int = 5
    num_encoder_layers: int = 4
    hidden_size: int = 2048
    num_heads: int = 32
    num_layers: int = 2
    dropout_prob: float = 0.1
    block_size: int = 15
    mlp_ratio: float = 2
    layernorm_eps: float = 1e-6
    attn_bias: bool = True
    mlp_bias: bool = True

    def __post_init__(self) -> None:
        if self.block_size % self.downsample_rate:
            raise ValueError(f"projector block_size {self.block_size} must be a multiple of downsample_rate "
                             f"{self.downsample_rate}")
        if self.hidden_size % self.num_heads:
            raise ValueError("projector hidden_size must be a multiple of num_heads")


@dataclass
class NarConfig:
    encoder_config: EncoderConfig = field(default_factory=EncoderConfig)
    projector_config: ProjectorConfig = field(default_factory=ProjectorConfig)
    text_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TEXT_CONFIG))
    encoder_layer_indices: list[int] = field(default_factory=lambda: [4, 8, 12, -1])
    scale_projected_embeddings: bool = True
    blank_token_id: int | None = None       # editor slot / blank token; default text eos
    min_edit_sequence_length: int = 8
    bpe_blank_shifted: bool | None = None   # None: from the head's width (bpe_blank); not published
    model_type: str = "granite_speech_nar"

    def __post_init__(self) -> None:
        if isinstance(self.encoder_config, dict):
            self.encoder_config = EncoderConfig(**_take(EncoderConfig, self.encoder_config))
        if isinstance(self.projector_config, dict):
            self.projector_config = ProjectorConfig(**_take(ProjectorConfig, self.projector_config))
        text = dict(DEFAULT_TEXT_CONFIG)
        text.update(self.text_config or {})
        self.text_config = text
        if self.blank_token_id is None:
            self.blank_token_id = int(text["eos_token_id"])
        enc, proj = self.encoder_config, self.projector_config
        if len(self.encoder_layer_indices) != proj.num_encoder_layers:
            raise ValueError(f"encoder_layer_indices {self.encoder_layer_indices} must name "
                             f"projector num_encoder_layers={proj.num_encoder_layers} layers")
        for i in self.encoder_layer_indices:
            if not -(enc.num_layers + 1) <= i <= enc.num_layers:
                raise ValueError(f"encoder layer index {i} outside the encoder's {enc.num_layers} layers")
        if proj.encoder_dim != enc.hidden_dim:
            raise ValueError("projector encoder_dim must equal the encoder hidden_dim")
        if proj.llm_dim != text["hidden_size"]:
            raise ValueError("projector llm_dim must equal the editor hidden_size")

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.text_config["vocab_size"])

    @property
    def bpe_blank(self) -> tuple[int, int]:
        """(blank class of the BPE CTC head, offset subtracted from the other classes to get token ids),
        decided by the head's width W against the text vocabulary V. IBM's hub repo has held two layouts:

        - W = V + 1 (older snapshots, the first revision of transformers PR #46031): class 0 is the
          blank and class k is token k - 1 -> (0, 1);
        - W = V (current snapshots, the pinned a1e3416e...): classes are token ids and the blank is the
          class `blank_token_id` (100257, the text eos) -> (blank_token_id, 0).

        Any other width is a BpeLayoutError naming both numbers. `bpe_blank_shifted` (true/false in
        config.json or asr.model.options) forces one reading for a checkpoint of another width."""
        width, vocab, blank = self.encoder_config.bpe_output_dim, self.vocab_size, int(self.blank_token_id)
        shifted = self.bpe_blank_shifted
        if shifted is None:
            if width == vocab + 1:
                shifted = True
            elif width == vocab:
                shifted = False
            else:
                raise BpeLayoutError(
                    f"the BPE CTC head (encoder.out_bpe) is {width} classes wide but the text vocabulary "
                    f"is {vocab}: a published layout is {vocab + 1} (blank 0, class k = token k-1) or "
                    f"{vocab} (classes are token ids, blank {blank}); for another layout set "
                    "asr.model.options.bpe_blank_shifted to true or false")
        if not shifted and not 0 <= blank < width:
            raise BpeLayoutError(f"blank_token_id {blank} is not a class of the {width}-wide BPE CTC head")
        return (0, 1) if shifted else (blank, 0)

    @property
    def bpe_token_classes(self) -> int:
        """How many of the head's classes the decoder reads (classes past them are never a token)."""
        blank, offset = self.bpe_blank
        return min(self.encoder_config.bpe_output_dim, self.vocab_size + offset)

    def resolved_layer_indices(self) -> list[int]:
        n = self.encoder_config.num_layers + 1   # index 0 = input_linear output
        return [i if i >= 0 else n + i for i in self.encoder_layer_indices]

    # ---- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NarConfig":
        model_type = data.get("model_type", "granite_speech_nar")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"config.json model_type {model_type!r} is not a Granite Speech NAR model "
                             f"(expected one of {MODEL_TYPES})")
        missing = [k for k in ("encoder_config", "projector_config", "text_config") if k not in data]
        if missing:
            raise ValueError(f"config.json lacks {missing}")
        data = _hub_field_names(data)
        text = dict(data["text_config"])
        rope = text.get("rope_parameters") or {}
        if "rope_theta" not in text and "rope_theta" in rope:
            text["rope_theta"] = rope["rope_theta"]
        kwargs = _take(cls, data)
        kwargs["text_config"] = text
        kwargs["model_type"] = model_type
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "NarConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "encoder_config": dataclasses.asdict(self.encoder_config),
            "projector_config": dataclasses.asdict(self.projector_config),
            "text_config": dict(self.text_config),
            "encoder_layer_indices": list(self.encoder_layer_indices),
            "scale_projected_embeddings": self.scale_projected_embeddings,
            "blank_token_id": self.blank_token_id,
            "min_edit_sequence_length": self.min_edit_sequence_length,
            **({"bpe_blank_shifted": self.bpe_blank_shifted} if self.bpe_blank_shifted is not None else {}),
        }

    def granite_config(self):
        """The editor's transformers GraniteConfig (a plain causal Granite config; the model makes
        it bidirectional by choosing the attention)."""
        from transformers import GraniteConfig

        text = {k: v for k, v in self.text_config.items() if k not in ("model_type", "architectures",
                                                                       "auto_map", "transformers_version")}
        rope_theta = text.pop("rope_theta", 10000.0)
        text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": rope_theta})
        return GraniteConfig(**text)

    def encoder_block_config(self):
        """transformers' GraniteSpeechEncoderConfig for its GraniteSpeechConformerBlock modules."""
        from transformers.models.granite_speech.configuration_granite_speech import GraniteSpeechEncoderConfig

        e = self.encoder_config
        return GraniteSpeechEncoderConfig(
            input_dim=e.input_dim, num_layers=e.num_layers, hidden_dim=e.hidden_dim,
            feedforward_mult=e.feedforward_mult, num_heads=e.num_heads, dim_head=e.dim_head,
            output_dim=e.output_dim, context_size=e.context_size, max_pos_emb=e.max_pos_emb,
            dropout=float(e.dropout), conv_kernel_size=e.conv_kernel_size,
            conv_expansion_factor=e.conv_expansion_factor)
