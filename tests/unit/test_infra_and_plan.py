"""Deployment manifests parse, carry what KubeRay/Kubernetes require, and run the documented CLI;
`--plan` works on every profile; scheduled runs are not repeated."""

from __future__ import annotations

import shlex
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from operators.io import runs
from operators.config import ConfigError, load_config
from pipelines.transcribe import parse_args

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "infra").rglob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec in infra/: plain RayJobs, RayCronJob templates, ConfigMap-held templates."""
    out = []
    for path in MANIFESTS:
        for doc in _docs(path):
            kind = doc.get("kind")
            if kind == "RayJob":
                out.append((f"{path.name}:RayJob", doc["spec"]))
            elif kind == "RayCronJob":
                out.append((f"{path.name}:RayCronJob", doc["spec"]["jobTemplate"]))
            elif kind == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if not key.endswith(".yaml"):
                        continue    # the CronJob's script
                    inner = yaml.safe_load(text.replace("__SLOT__", "20260309"))
                    if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                        out.append((f"{path.name}:{key}", inner["spec"]))
    return out


def test_manifests_exist_and_parse():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "rayjob-archive.yaml", "raycronjob.yaml", "cronjob-rayjob.yaml",
            "serviceaccount.yaml", "aws-gpu.yaml"} <= names
    for path in MANIFESTS:
        assert _docs(path), path


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu-decode", "h100"} <= set(groups)
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["template"]["spec"]["containers"][0]["image"]
    gpu = groups["h100"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1", "one GPU actor per GPU: one GPU per worker pod"


def test_raycluster_structure():
    [doc] = _docs(ROOT / "infra/kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    _check_cluster_spec(doc["spec"])


def test_rayjob_specs_have_required_fields():
    specs = _rayjob_specs()
    assert len(specs) == 3
    for name, spec in specs:
        assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode"), name
        assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1, name
        if "clusterSelector" in spec:
            assert "rayClusterSpec" not in spec and "shutdownAfterJobFinishes" not in spec, name
        else:
            _check_cluster_spec(spec["rayClusterSpec"])
            # the cluster goes when the job ends (deletion rules: test_infra_kuberay_rules.py)
            policies = {r["policy"] for r in spec["deletionStrategy"]["deletionRules"]}
            assert {"DeleteCluster", "DeleteSelf"} <= policies, name


def test_schedules():
    [cron] = _docs(ROOT / "infra/kuberay/raycronjob.yaml")
    assert cron["kind"] == "RayCronJob" and len(cron["spec"]["schedule"].split()) == 5
    docs = {d["kind"]: d for d in _docs(ROOT / "infra/kuberay/cronjob-rayjob.yaml")}
    assert {"CronJob", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"} <= set(docs)
    cj = docs["CronJob"]
    assert cj["apiVersion"] == "batch/v1" and cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert pod["volumes"][0]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert "create" in docs["Role"]["rules"][0]["verbs"] and "rayjobs" in docs["Role"]["rules"][0]["resources"]
    inner = yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])
    assert inner["metadata"]["name"] == "transcribe-nightly-__SLOT__"      # the script puts the UTC date
    assert "create-rayjob.sh" in docs["ConfigMap"]["data"]


@pytest.mark.parametrize("name,spec", _rayjob_specs(), ids=[n for n, _ in _rayjob_specs()])
def test_entrypoints_are_the_documented_cli(name, spec):
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.transcribe"], name
    args = parse_args(argv[3:])
    cfg = load_config(ROOT / args.config, args.overrides, **{"input.uri": args.input, "output.uri": args.output})
    assert cfg.input.uri.startswith("s3://") and cfg.output.uri.startswith("s3://")
    if "Cron" in name or "rayjob.yaml" in name:
        assert args.schedule_slot == "@daily"


def test_cluster_launcher_structure():
    [doc] = _docs(ROOT / "infra/cluster-launcher/aws-gpu.yaml")
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types and {"cpu_decode", "h100"} <= set(types)
    assert sum(t.get("max_workers", 0) for t in types.values()) <= doc["max_workers"]


@pytest.mark.parametrize("profile", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_plan_on_every_profile(profile, tmp_path):
    audio = tmp_path / "in"
    audio.mkdir()
    for i in range(3):
        (audio / f"a{i}.wav").write_bytes(b"not read by --plan")
    r = subprocess.run([sys.executable, "-m", "pipelines.transcribe", "--config", str(profile),
                        "--input", str(audio), "--output", str(tmp_path / "out"), "--set",
                        "input.format=audio", "--plan"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr
    plan = yaml.safe_load(r.stdout)
    check = plan["stages"][1]["model_check"]        # the plan says whether the checkpoint is usable here
    if "ibm-granite/" in profile.read_text():
        assert check.startswith("error: ") and "not in the local Hugging Face cache" in check, check
    else:
        assert check.startswith("ok: "), check
    assert plan["input"]["listed"] == 3 and plan["input"]["to_transcribe"] == 3
    assert [s["stage"] for s in plan["stages"]] == ["decode", "asr", "write"]
    assert plan["output"]["dir"].startswith(str(tmp_path / "out"))


def test_schedule_slots_and_run_ids(tmp_path):
    now = datetime(2026, 3, 9, 14, 5, tzinfo=timezone.utc)
    assert runs.resolve_slot("@daily", now) == "2026-03-09"
    assert runs.resolve_slot("@hourly", now) == "2026-03-09T14"
    assert runs.resolve_slot("@weekly", now) == "2026-W11"
    assert runs.resolve_slot("nightly-42", now) == "nightly-42"
    with pytest.raises(ConfigError):
        runs.resolve_slot("@sometimes", now)
    a = load_config(ROOT / "configs/demo.yaml", **{"input.uri": "s3://a/", "output.uri": "s3://o/"})
    b = load_config(ROOT / "configs/demo.yaml", **{"input.uri": "s3://b/", "output.uri": "s3://o/"})
    assert runs.run_id(a, "2026-03-09") == runs.run_id(a.model_copy(deep=True), "2026-03-09")
    assert runs.run_id(a, "2026-03-09") != runs.run_id(a, "2026-03-10")
    assert runs.run_id(a, "2026-03-09") != runs.run_id(b, "2026-03-09")

    out = str(tmp_path / "out")
    rid = runs.run_id(a, "s1")
    runs.begin(out, rid, "s1")
    runs.begin(out, rid, "s1")  # a killed run (still 'running') may continue
    runs.finish(out, rid, "s1", {"files": 3, "errors": 0})
    with pytest.raises(runs.AlreadyRan, match="already completed"):
        runs.begin(out, rid, "s1")
    runs.begin(out, runs.run_id(a, "s2"), "s2")  # the next slot runs
