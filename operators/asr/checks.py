"""Check a backend's checkpoint on the driver before any Ray work: the path or hub id resolves (from
the local Hugging Face cache, or the hub's small files when it is reachable), config.json parses, the
safetensors headers hold every expected key with the expected shape (headers only, never a tensor),
and the tokenizer loads. A failure is one ModelCheckError line: the path, what is wrong, the fix.

Backends call these helpers from their `check(cfg)` static method; operators.asr.check_model runs it.
No Ray in here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

SMALL_FILES = ["*.json", "*.txt", "*.model", "tokenizer*", "merges*", "vocab*"]   # no weights


class ModelCheckError(ValueError):
    """A checkpoint that cannot work: one line naming the path, what is wrong and the fix."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_path(model_id: str) -> bool:
    """A filesystem path rather than a hub id ("name" or "org/name")."""
    return (model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or os.sep != "/" and os.sep in model_id)


def fetch_hint(model_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision and revision != "unpinned" else ""
    return (f"fetch it on this machine with `hf download {model_id}{rev}` (HF_HOME picks the cache), or set "
            "asr.model.id to a local checkpoint directory")


def locate(model_id: str, revision: str | None, what: str) -> tuple[Path, bool]:
    """(directory holding the checkpoint's small files, whether it is a hub snapshot). A local path
    must exist; a hub id is looked up in the local cache first, then (unless HF_HUB_OFFLINE) its
    small files are fetched from the hub. Raises ModelCheckError."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path, False
    if path.exists():
        raise ModelCheckError(f"asr.model.id {model_id!r} is a file; point it at the {what} checkpoint "
                              "directory (config.json, weights, tokenizer)")
    if looks_like_path(model_id):
        raise ModelCheckError(f"asr.model.id {model_id!r}: no such directory; point it at a {what} checkpoint "
                              "directory or a hub id (org/name)")
    from huggingface_hub import snapshot_download

    rev = revision if revision and revision != "unpinned" else None
    try:
        return Path(snapshot_download(model_id, revision=rev, allow_patterns=SMALL_FILES,
                                      local_files_only=True)), True
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    if _offline():
        raise ModelCheckError(f"{model_id}{'@' + rev if rev else ''} is not in the local Hugging Face cache "
                              f"and HF_HUB_OFFLINE is set; {fetch_hint(model_id, revision)}")
    try:
        return Path(snapshot_download(model_id, revision=rev, allow_patterns=SMALL_FILES)), True
    except Exception as e:  # noqa: BLE001
        reason = " ".join(str(e).split())[:200]
        raise ModelCheckError(f"{model_id}{'@' + rev if rev else ''} is not in the local Hugging Face cache and "
                              f"the hub did not answer ({type(e).__name__}: {reason}); "
                              f"{fetch_hint(model_id, revision)}") from None


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelCheckError(f"{path.parent}: no {path.name}; is this the model's checkpoint directory?")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelCheckError(f"{path}: not valid JSON ({e}); download the checkpoint again") from None
    if not isinstance(data, dict):
        raise ModelCheckError(f"{path}: expected a JSON object")
    return data


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (sharded through model.safetensors.index.json, or
    one model.safetensors)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        files = sorted({model_dir / f for f in weight_map.values()})
        absent = [f.name for f in files if not f.is_file()]
        if absent or not files:
            raise ModelCheckError(f"{model_dir}: shards named in model.safetensors.index.json are missing: "
                                  f"{absent or 'none listed'}; download the checkpoint again")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelCheckError(f"{model_dir}: no model.safetensors.index.json or model.safetensors; download the "
                          "weights (safetensors) into it")


def header_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    found[k] = tuple(st.get_slice(k).get_shape())
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            raise ModelCheckError(f"{f}: not a readable safetensors file ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:120]}); download it again") from None
    return found


def hub_header_shapes(model_id: str, revision: str | None) -> dict[str, tuple[int, ...]]:
    """Shapes from the hub's safetensors headers (HTTP range reads, no weights downloaded)."""
    from huggingface_hub import get_safetensors_metadata

    try:
        meta = get_safetensors_metadata(model_id, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise ModelCheckError(f"{model_id}: cannot read the weights' headers from the hub ({type(e).__name__}); "
                              f"{fetch_hint(model_id, revision)}") from None
    return {k: tuple(t.shape) for fm in meta.files_metadata.values() for k, t in fm.tensors.items()}


def shapes_for(model_dir: Path, from_hub: bool, model_id: str, revision: str | None) -> dict[str, tuple[int, ...]]:
    """Header shapes of a located checkpoint: from its files, or (a hub snapshot whose weights are not
    cached yet: the actors download them) from the hub's headers."""
    try:
        return header_shapes(weight_files(model_dir))
    except ModelCheckError:
        if not from_hub:
            raise
    rev = revision if revision and revision != "unpinned" else None
    return hub_header_shapes(model_id, rev)


def describe_key_problems(missing: list[str], unexpected: list[str], wrong: list[str], limit: int = 5) -> str:
    def fmt(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {fmt(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {fmt(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} key(s) with the wrong shape: {fmt(wrong)}")
    return "; ".join(parts)


def load_tokenizer_or_fail(model_dir: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise ModelCheckError(f"{model_dir}: the tokenizer does not load ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]}); the checkpoint needs tokenizer.json / "
                              "tokenizer_config.json") from None
    finally:
        hf_logging.set_verbosity(level)
