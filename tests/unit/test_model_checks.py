"""A missing or broken checkpoint is one clear line on the driver before Ray starts (every backend):
the path or hub id resolves, config.json parses, the safetensors headers hold every expected key with
its shape (headers only), the tokenizer loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from operators.asr import check_model
from operators.asr.checks import ModelCheckError
from operators.asr.granite_nar.tiny import build_tiny_checkpoint
from operators.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nar_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("nar") / "ckpt", seed=0, max_shard_bytes=None)


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory) -> Path:
    from operators.asr.granite_ar import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("ar") / "ckpt")


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.transcribe", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    """The run ended with exit 2, no traceback, Ray never started, and exactly one `error:` line."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and "Ray instance" not in out and "ray" not in r.stdout.lower(), out
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


def test_cli_missing_checkpoint_dir_is_one_line_before_ray(tmp_path):
    (tmp_path / "in.flac").write_bytes((ROOT / "pipelines/demo_corpus/utt00.flac").read_bytes())
    line = _one_error_line(_cli("--config", "configs/demo.yaml", "--input", str(tmp_path / "*.flac"),
                                "--output", str(tmp_path / "out"), "--backend", "granite-nar",
                                "--set", "asr.model.id=/nonexistent/dir"))
    assert "/nonexistent/dir" in line and "no such directory" in line and "asr.model.id" in line


def test_cli_hub_id_not_cached_offline_says_how_to_fetch(tmp_path):
    (tmp_path / "in.flac").write_bytes((ROOT / "pipelines/demo_corpus/utt00.flac").read_bytes())
    line = _one_error_line(_cli("--config", "configs/demo.yaml", "--input", str(tmp_path / "*.flac"),
                                "--output", str(tmp_path / "out"), "--backend", "granite-nar",
                                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}))
    assert "ibm-granite/granite-speech-4.1-2b-nar@a1e3416e" in line
    assert "not in the local Hugging Face cache" in line
    assert "hf download ibm-granite/granite-speech-4.1-2b-nar --revision a1e3416e" in line


def test_cli_broken_shard_is_one_line(nar_dir, tmp_path):
    bad = _copy(nar_dir, tmp_path / "truncated")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "in.flac").write_bytes((ROOT / "pipelines/demo_corpus/utt00.flac").read_bytes())
    line = _one_error_line(_cli("--config", "configs/demo.yaml", "--input", str(tmp_path / "*.flac"),
                                "--output", str(tmp_path / "out"), "--backend", "granite-nar",
                                "--set", f"asr.model.id={bad}"))
    assert str(weights) in line and "not a readable safetensors file" in line


def test_nar_good_checkpoint_passes_and_says_its_layout(nar_dir):
    found = check_model("granite-nar", ModelConfig(id=str(nar_dir)))
    assert str(nar_dir) in found and "65 classes, blank 0" in found


def _rewrite(model_dir: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("case, expect", [
    ("missing_key", r"ckpt_missing_key: checkpoint does not match .*1 missing key\(s\): encoder\.out\.bias"),
    ("wrong_shape", r"1 key\(s\) with the wrong shape: projector\.query \(1, 2, 48\) != \(1, 3, 48\)"),
    ("third_width", r"is 70 classes wide but the text vocabulary is 64"),
    ("bad_json", r"config\.json: not valid JSON"),
    ("not_nar", r"model_type 'whisper' is not a Granite Speech NAR model"),
    ("no_weights", r"no model\.safetensors\.index\.json or model\.safetensors"),
    ("no_tokenizer", r"the tokenizer does not load"),
])
def test_nar_broken_checkpoints_name_what_is_wrong(nar_dir, tmp_path, case, expect):
    import torch

    bad = _copy(nar_dir, tmp_path / f"ckpt_{case}")
    cfg_path = bad / "config.json"
    if case == "missing_key":
        _rewrite(bad, lambda t: t.pop("encoder.out.bias"))
    elif case == "wrong_shape":
        _rewrite(bad, lambda t: t.update({"projector.query": torch.zeros(1, 2, 48)}))
    elif case == "third_width":
        _rewrite(bad, lambda t: t.update({"encoder.out_bpe.weight": torch.zeros(70, 32),
                                          "encoder.out_bpe.bias": torch.zeros(70)}))
    elif case == "bad_json":
        cfg_path.write_text(cfg_path.read_text()[:-20])
    elif case == "not_nar":
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "model_type": "whisper"}))
    elif case == "no_weights":
        (bad / "model.safetensors").unlink()
    elif case == "no_tokenizer":
        for f in bad.glob("tokenizer*"):
            f.unlink()
    with pytest.raises(ModelCheckError, match=expect) as info:
        check_model("granite-nar", ModelConfig(id=str(bad)))
    assert "\n" not in str(info.value)


def test_nar_unknown_option_and_dtype_fail_on_the_driver(nar_dir):
    with pytest.raises(ModelCheckError, match="unknown granite-nar options"):
        check_model("granite-nar", ModelConfig(id=str(nar_dir), options={"beams": 2}))
    with pytest.raises(ModelCheckError, match="asr.model.dtype 'int3'"):
        check_model("granite-nar", ModelConfig(id=str(nar_dir), dtype="int3"))


def test_ar_checkpoint_checked_by_headers(ar_dir, tmp_path):
    assert "match GraniteSpeechForConditionalGeneration" in check_model("granite-ar", ModelConfig(id=str(ar_dir)))
    bad = _copy(ar_dir, tmp_path / "ar_missing")
    _rewrite(bad, lambda t: t.pop(next(k for k in t if k.endswith("input_linear.weight"))))
    with pytest.raises(ModelCheckError, match=r"ar_missing: checkpoint does not match .*1 missing key\(s\): "
                                              r"model\.encoder\.input_linear\.weight"):
        check_model("granite-ar", ModelConfig(id=str(bad)))
    nar_instead = tmp_path / "nar_as_ar"
    build_tiny_checkpoint(nar_instead)
    with pytest.raises(ModelCheckError, match="nar_as_ar"):
        check_model("granite-ar", ModelConfig(id=str(nar_instead)))


def test_whisper_default_passes_and_a_foreign_dir_fails(tmp_path, nar_dir):
    assert Path(check_model("whisper", ModelConfig())).joinpath("model.bin").is_file()
    with pytest.raises(ModelCheckError, match=r"not a faster-whisper \(CTranslate2\) model directory"):
        check_model("whisper", ModelConfig(id=str(nar_dir)))
    with pytest.raises(ModelCheckError, match="unknown whisper options"):
        check_model("whisper", ModelConfig(options={"beam": 1}))
