"""Load a Granite Speech NAR checkpoint natively: config.json + safetensors (sharded through
model.safetensors.index.json, or one model.safetensors) + the tokenizer, from one directory.

Nothing from the checkpoint is executed (its `auto_map` remote code is ignored). The state-dict keys
must be exactly the model's (the tied `language_model.lm_head.weight` may be present or absent);
anything else is an error naming the missing and unexpected keys. A hub id is fetched with
huggingface_hub.snapshot_download at a pinned revision only when `model_id` is not a local directory.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from operators.asr.checks import ModelCheckError, describe_key_problems, header_shapes, read_json, weight_files
from operators.asr.granite_nar.config import BpeLayoutError, NarConfig
from operators.asr.granite_nar.modeling import GraniteSpeechNar

log = logging.getLogger(__name__)

TIED_KEYS = {"language_model.lm_head.weight"}
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "merges*", "vocab*"]


class CheckpointError(ModelCheckError):
    """The checkpoint does not match the model (keys or shapes), or files are missing."""


def resolve_model_dir(model_id: str, revision: str | None = None) -> Path:
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or model_id.startswith("."):
        raise CheckpointError(f"model directory {model_id!r} does not exist")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS))


def _fmt(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# The native transformers layout (PR #46031's convert_granite_speech_nar_to_hf.py) -> the hub's
# namespace, applied in order to each key. That converter also drops the projector's LayerNorm
# affines (identity in the published weights); they are restored as identity here.
NATIVE_KEY_RENAMES = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.out_bpe\.", "encoder.out_bpe."),
    (r"^model\.encoder\.", "encoder."),
    (r"^model\.projector\.proj\.", "projector.layer_projector."),
    (r"^model\.projector\.qformer\.linear\.", "projector.out_linear."),
    (r"^model\.projector\.qformer\.queries$", "projector.query"),
    (r"^model\.projector\.qformer\.pos_emb$", "projector.window_positions"),
    (r"^model\.projector\.", "projector."),
    (r"^(projector\.qformer\.layers\.\d+)\.cross_attn\.", r"\1.cross_attention."),
]
AFFINE_FREE_NORM = re.compile(r"^projector\.(layer_norms\.\d+|out_norm|qformer\.layers\.\d+\.(attn_norm|mlp_norm))"
                              r"\.(weight|bias)$")
BPE_HEAD = "encoder.out_bpe.weight"


def hub_key(key: str) -> str:
    for pattern, repl in NATIVE_KEY_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def is_native_layout(keys) -> bool:
    return any(k.startswith(("model.encoder.", "model.language_model.")) for k in keys)


def check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
               optional: set[str] = frozenset()) -> None:
    missing = sorted(set(expected) - set(found) - set(optional))
    unexpected = sorted(set(found) - set(expected) - TIED_KEYS)
    wrong = sorted(f"{k} {tuple(found[k])} != {tuple(expected[k])}" for k in set(expected) & set(found)
                   if tuple(expected[k]) != tuple(found[k]))
    if missing or unexpected or wrong:
        raise CheckpointError("checkpoint does not match the Granite Speech NAR model: "
                              + describe_key_problems(missing, unexpected, wrong, limit=20)
                              + "; is asr.model.id a granite-speech-4.1-2b-nar checkpoint?")


def load_config(model_dir: Path) -> NarConfig:
    cfg = model_dir / "config.json"
    try:
        return NarConfig.from_dict(read_json(cfg))
    except ModelCheckError as e:
        raise CheckpointError(str(e)) from None
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{cfg}: {e}") from None


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, read from config.json and the safetensors headers only."""

    dir: Path
    config: NarConfig
    files: list[Path]
    native: bool                            # the transformers port's namespace (keys renamed on load)
    shapes: dict[str, tuple[int, ...]]      # hub-namespace key -> shape

    @property
    def bpe_layout(self) -> str:
        blank, offset = self.config.bpe_blank
        return f"{self.config.encoder_config.bpe_output_dim} classes, blank {blank}" + (
            ", class k = token k-1" if offset else ", classes are token ids")


def inspect_checkpoint(model_dir: str | Path, bpe_blank_shifted: bool | None = None,
                       shapes: dict[str, tuple[int, ...]] | None = None) -> Checkpoint:
    """Check config.json and every key and shape in the safetensors headers against the model, without
    reading a tensor. The BPE head's width comes from the weights (config.json may say otherwise) and
    decides how its classes are read (NarConfig.bpe_blank). `shapes`: headers read elsewhere (the hub's)
    instead of the directory's weight files. Raises CheckpointError (a ModelCheckError)."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    if bpe_blank_shifted is not None:
        config.bpe_blank_shifted = bool(bpe_blank_shifted)
    try:
        files = weight_files(model_dir) if shapes is None else []
        raw = header_shapes(files) if shapes is None else shapes
    except ModelCheckError as e:
        raise CheckpointError(str(e)) from None
    native = is_native_layout(raw)
    shapes = {hub_key(k): v for k, v in raw.items()} if native else raw
    head = shapes.get(BPE_HEAD)
    if head is not None and head[0] != config.encoder_config.bpe_output_dim:
        log.info("%s: config.json says bpe_output_dim %d, the weights hold %d; using the weights",
                 model_dir, config.encoder_config.bpe_output_dim, head[0])
        config.encoder_config.bpe_output_dim = int(head[0])
    try:
        config.bpe_blank
    except BpeLayoutError as e:
        raise CheckpointError(f"{model_dir}: {e}") from None
    with torch.device("meta"):
        model = GraniteSpeechNar(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        check_keys(expected, shapes, optional={k for k in expected if AFFINE_FREE_NORM.match(k)} if native else set())
    except CheckpointError as e:
        raise CheckpointError(f"{model_dir}: {e}") from None
    return Checkpoint(model_dir, config, files, native, shapes)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, bpe_blank_shifted: bool | None = None) -> GraniteSpeechNar:
    """Check the checkpoint (inspect_checkpoint), build the model on the meta device, then load the
    tensors onto `device` in `dtype` (shard by shard). Eval mode, no gradients."""
    from safetensors import safe_open

    ckpt = inspect_checkpoint(model_dir, bpe_blank_shifted)
    with torch.device("meta"):
        model = GraniteSpeechNar(ckpt.config)
    device = torch.device(device)
    for f in ckpt.files:
        tensors = {}
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for k in st.keys():
                name = hub_key(k) if ckpt.native else k
                if name in TIED_KEYS:
                    continue
                t = st.get_tensor(k)
                if t.is_floating_point():
                    t = t.to(dtype)
                tensors[name] = t.to(device)
        model.load_state_dict(tensors, strict=False, assign=True)
        del tensors
    if ckpt.native:  # affine-free norms in the native port: identity
        params = dict(model.named_parameters())
        for name in [n for n in params if AFFINE_FREE_NORM.match(n) and params[n].is_meta]:
            module, attr = name.rsplit(".", 1)
            fill = torch.ones if attr == "weight" else torch.zeros
            setattr(model.get_submodule(module), attr,
                    torch.nn.Parameter(fill(params[name].shape, dtype=dtype, device=device), requires_grad=False))
    model.reset_buffers(device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left unloaded: {_fmt(left)}")
    model.eval().requires_grad_(False)
    return model


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # config.json's model_type is unknown to AutoConfig: expected
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(level)


def save_checkpoint(model: GraniteSpeechNar, model_dir: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json + safetensors in the hub layout (sharded with an index when
    max_shard_bytes is given). Used by tests and tools; the published checkpoint is never rewritten."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = ["GraniteSpeechNarForASR"]
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if not max_shard_bytes:
        save_file(sd, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(model_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
