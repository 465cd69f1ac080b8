"""The job's command line: bad configs and inputs fail fast with a message naming the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.transcribe", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_unknown_field_names_the_dotted_key():
    r = _cli("--config", "configs/demo.yaml", "--input", "x", "--output", "y", "--set", "asr.batchsize=3")
    assert r.returncode == 2
    assert "asr.batchsize" in r.stderr and "unknown field" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_value_names_field_and_value():
    r = _cli("--config", "configs/demo.yaml", "--input", "x", "--output", "y", "--set", "decode.num_cpus=lots")
    assert r.returncode == 2 and "decode.num_cpus" in r.stderr and "'lots'" in r.stderr


def test_unknown_backend_lists_the_known_ones():
    r = _cli("--input", "x", "--output", "y", "--backend", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "whisper" in r.stderr


def test_missing_input_and_output_are_named():
    r = _cli("--config", "configs/demo.yaml")
    assert r.returncode == 2 and "--input" in r.stderr and "--output" in r.stderr


def test_missing_input_path_is_a_clear_error(tmp_path):
    r = _cli("--config", "configs/demo.yaml", "--input", str(tmp_path / "nope"), "--output",
             str(tmp_path / "out"), "--set", "ray.progress_bars=false")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
