"""benchmarks/gpu_check.py --dry-run: every phase of the GPU device check runs (tiny model, CPU), each
in its own subprocess, with ray, soundfile, soxr, silero_vad, av, fsspec, s3fs and rapidfuzz made
unimportable, as on the GPU machine (which has none of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
BLOCKED = ("ray", "soundfile", "soxr", "silero_vad", "av", "fsspec", "s3fs", "rapidfuzz")
PHASES = ("preflight", "model", "backend", "long", "invariance", "precision", "tests", "stage", "vad", "stage_vad")

sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_check")
    block = base / "block"
    block.mkdir()
    # None in sys.modules: `import x` raises ModuleNotFoundError and importlib.util.find_spec(x) is None,
    # in this interpreter and in every subprocess it starts (PYTHONPATH is inherited)
    (block / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = base / "out"
    t = time.time()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.time() - t
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    return doc, proc.stdout, seconds, out


@pytest.mark.slow  # about a minute on the 2-core box (make test runs it)
def test_every_phase_ran_ok(dry_run):
    doc, stdout, seconds, out = dry_run
    assert list(doc["phases"]) == list(PHASES)
    for name, p in doc["phases"].items():
        assert p["status"] == "ok", (name, p.get("error"), p.get("log_tail"))
        assert p["seconds"] > 0 and p["cap_s"] > 0
        r = p["result"]
        assert r["problems"] == [], (name, r["problems"])
        assert r["forbidden_imported"] == [], (name, r["forbidden_imported"])
        assert (out / f"phase_{name}.json").exists()
    assert doc["meta"]["dry_run"] is True
    assert doc["meta"]["reference_rtfx"]["ibm_model_card_h100_batch128"] == 1820
    assert "1820" in stdout and "3935" in stdout and "3951" in stdout
    for name in PHASES:
        assert name in stdout
    print(f"dry run: {seconds:.1f} s")


@pytest.mark.slow  # about a minute on the 2-core box (make test runs it)
def test_preflight_and_model_figures(dry_run):
    doc = dry_run[0]
    pre = doc["phases"]["preflight"]["result"]
    for key in ("python", "torch", "version_transformers", "cuda_available", "tf32", "kernels",
                "resolve_auto_cuda_bf16", "resolvable_bf16"):
        assert key in pre, key
    assert pre["importable"]["ray"] is False and pre["importable"]["soundfile"] is False
    assert pre["resolve_auto_cuda_bf16"] == "sdpa_per_sample"   # no CUDA here
    model = doc["phases"]["model"]["result"]
    assert set(model["sets"]) == {"production_20_32s", "librispeech_like"}
    for s in model["sets"].values():
        fig = s["backends"]["sdpa_per_sample"]
        assert fig["rtfx"] > 0 and fig["model_s"] > 0
        assert {"encoder_s", "projector_s", "editor_s", "heads_s"} <= set(fig["split"])
        assert fig["mean_hypothesis_tokens"] >= 1


@pytest.mark.slow  # about a minute on the 2-core box (make test runs it)
def test_backend_long_and_stage_figures(dry_run):
    doc = dry_run[0]
    backend = doc["phases"]["backend"]["result"]
    assert backend["staged"] is True
    for s in backend["sets"].values():
        for key in ("transcribe_s", "prepare_s", "run_s", "finish_s", "model_only_s",
                    "host_outside_model_s_per_128", "transcribe_rtfx"):
            assert s[key] is not None, key
    long = doc["phases"]["long"]["result"]
    assert long["b128"]["status"] == "ok" and long["b256"]["status"] == "ok"
    rec = long["oom_recovery"]
    assert rec["all_ok"] is True and rec["rows_ok"] == rec["rows"]
    assert rec["splits"] >= 1 and rec["ooms"] >= 1
    assert rec["calls"][0]["outcome"] == "oom (simulated)"
    assert all(c["outcome"] == "ok" for c in rec["calls"][1:])
    stage = doc["phases"]["stage"]["result"]
    assert stage["rows"] == stage["rows_ok"] == stage["files"]
    assert stage["threads"] >= 2
    assert 0 < stage["busy_fraction"] <= 1.05 and stage["rtfx_e2e"] > 0
    # the vad phase finds the silero-vad package even where its import is refused (the device carries
    # the wheel); on a CPU it runs both detectors on one thread, no CUDA rows
    vad = doc["phases"]["vad"]["result"]
    assert "skipped" not in vad, vad
    assert set(vad["runs"]) == {"cpu_silero", "cpu_silero_full"}, vad["runs"]
    for fig in vad["runs"].values():
        assert fig["wall_s_per_audio_hour"] > 0 and fig["host_cpu_s_per_audio_hour"] > 0
        assert 0 < fig["model_on_windows"] and 0 <= fig["kept_fraction"] <= 1
    assert vad["runs"]["cpu_silero_full"]["model_on_windows"] >= 1.0   # every window, and the warm-up
    # vad_on decode vs actor through the stage: on a CPU both detectors are the same, so the same
    # segments and text; the actor's rows carry its voice-activity seconds, decode's none
    sv = doc["phases"]["stage_vad"]["result"]
    assert "skipped" not in sv, sv
    assert sv["same_segments_rate"] == 1.0 and sv["same_text_rate"] == 1.0, sv
    assert 0 < sv["kept_fraction"] < 1 and sv["decode_vad_cpu_s_per_audio_hour"] > 0
    for w in ("decode", "actor"):
        assert len(sv["runs"][w]) == 2 and all(x["rows_ok"] == sv["files"] for x in sv["runs"][w])
    assert all(x["actor_vad_s"] > 0 for x in sv["runs"]["actor"])
    assert all(x["actor_vad_s"] == 0 for x in sv["runs"]["decode"])


@pytest.mark.slow  # about a minute on the 2-core box (make test runs it)
def test_invariance_precision_and_tests_figures(dry_run):
    doc = dry_run[0]
    inv = doc["phases"]["invariance"]["result"]
    assert inv["edit_distance"] == "python"   # rapidfuzz is blocked: the fallback ran
    assert inv["backends"]["sdpa_per_sample"]["exact"] is True   # fp32 on CPU
    assert inv["encoder_hypotheses"]["alone"]["exact_rate"] == 1.0
    for fig in inv["cross_backend"].values():
        assert 0.0 <= fig["token_agreement"] <= 1.0
    prec = doc["phases"]["precision"]["result"]
    assert 0.0 <= prec["hypotheses"]["token_agreement"] <= 1.0
    assert 0.0 <= prec["bf16_vs_fp32"]["sdpa_per_sample"]["edits"]["token_agreement"] <= 1.0
    assert prec["tf32"] == {"matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    tests = doc["phases"]["tests"]["result"]
    assert tests["files"] and tests["rc"] in (0, 5), tests.get("output_tail")
    assert "skipped" in tests["summary"] or "passed" in tests["summary"], tests["summary"]
    assert tests["conftest_missing"] == []


def test_agreement_rates():
    from benchmarks.gpu_check import agreement_rates

    assert agreement_rates([[1, 2, 3], []], [[1, 2, 3], []]) == {"exact_rate": 1.0, "token_agreement": 1.0,
                                                                "clips": 2}
    r = agreement_rates([[1, 2, 3, 4], [5]], [[1, 2, 9, 4], [5]])
    assert r["exact_rate"] == 0.5 and r["token_agreement"] == pytest.approx(1 - 1 / 5)


def test_a_phase_past_its_cap_is_killed_and_recorded(tmp_path):
    """The parent kills a phase's process group at its cap and records a timeout with what the phase
    had saved so far; nothing of it is left running."""
    import argparse

    from benchmarks.gpu_check import _run_child

    entry = _run_child("model", 1.5, argparse.Namespace(dry_run=True, seed=0), tmp_path)
    assert entry["status"] == "timeout" and entry["rc"] is None
    assert "cap" in entry["error"]
    assert entry["seconds"] < 15
    assert (tmp_path / "phase_model.log").exists()
