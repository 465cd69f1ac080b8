"""What the KubeRay operator and the Kubernetes API server would say about infra/, checked offline.

The schema (CRD) check is not enough: the operator runs its own validation
(ray-project/kuberay ray-operator/controllers/ray/utils/validation.go, ValidateRayJobSpec,
ValidateRayClusterSpec, ValidateRayJobMetadata, ValidateRayCronJobSpec) and refuses a RayJob that breaks
it; nothing then runs. `kuberay_problems` encodes the rules these manifests could break, and runs over
every RayJob in infra/ (plain, RayCronJob templates, RayJobs held in ConfigMaps) and every RayCluster.
Core Kubernetes kinds (and every Ray pod template, as a v1 PodTemplate) go through kubernetes-validate in
strict mode (unknown fields are errors)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "infra").rglob("*.yaml"))
K8S_VERSION = "1.33.0"          # the oldest Kubernetes these manifests promise to work on

# validation.go constants (utils/constant.go): MaxRayClusterNameLength = 53, RayJob = 53 - 6
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
GENERATE_NAME_SUFFIX = 5        # the API server appends 5 random characters to generateName
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MODES = ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
RAYSTART_RESOURCE_KEYS = ("num-cpus", "num-gpus", "memory", "resources")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[str, dict]]:
    return [(f"{p.relative_to(ROOT)}:{d.get('kind')}", d) for p in MANIFESTS if "kuberay" in p.parts
            for d in _docs(p)]


def rayjobs() -> list[tuple[str, dict, dict]]:
    """(name, metadata, spec) of every RayJob in infra/, RayCronJob templates and ConfigMap-held
    RayJobs included."""
    out = []
    for label, doc in _k8s_docs():
        kind = doc.get("kind")
        if kind == "RayJob":
            out.append((label, doc.get("metadata") or {}, doc["spec"]))
        elif kind == "RayCronJob":
            # the RayJobs it creates are named by the operator from the RayCronJob's name
            out.append((f"{label}.jobTemplate", {}, doc["spec"]["jobTemplate"]))
        elif kind == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                inner = yaml.safe_load(text)
                if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                    out.append((f"{label}[{key}]", inner.get("metadata") or {}, inner["spec"]))
    return out


def rayclusters() -> list[tuple[str, dict, dict]]:
    out = [(label, doc.get("metadata") or {}, doc["spec"]) for label, doc in _k8s_docs()
           if doc.get("kind") == "RayCluster"]
    out += [(f"{name}.rayClusterSpec", {}, spec["rayClusterSpec"]) for name, _, spec in rayjobs()
            if spec.get("rayClusterSpec")]
    return out


def _env_names(container: dict) -> set[str]:
    return {e.get("name") for e in container.get("env") or []}


def raycluster_problems(spec: dict) -> list[str]:
    """ValidateRayClusterSpec's rules that a manifest can break."""
    problems = []
    head = spec.get("headGroupSpec") or {}
    head_containers = (head.get("template") or {}).get("spec", {}).get("containers") or []
    if not head_containers:
        problems.append("headGroupSpec should have at least one container")
    groups = [("Head", head)] + [(g.get("groupName"), g) for g in spec.get("workerGroupSpecs") or []]
    names = [n for n, _ in groups[1:]]
    if len(set(names)) != len(names):
        problems.append(f"worker group names repeat: {names}")
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for name, group in groups:
        params = group.get("rayStartParams") or {}
        if name != "Head" and not ((group.get("template") or {}).get("spec", {}).get("containers")):
            problems.append(f"workerGroupSpec {name} should have at least one container")
        if any(params.get(k) for k in RAYSTART_RESOURCE_KEYS) and group.get("resources"):
            problems.append(f"{name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{name}: rayStartParams['labels'] is not supported; use the labels field")
        if group.get("suspend") and autoscaling:
            problems.append(f"worker group {name} cannot be suspended with autoscaler enabled")
        if group.get("suspend"):
            problems.append(f"worker group {name}: suspend needs the RayJobDeletionPolicy feature gate")
        if name != "Head":
            lo, n, hi = group.get("minReplicas", 0), group.get("replicas", 0), group.get("maxReplicas")
            if hi is not None and not (lo <= n <= hi):
                problems.append(f"{name}: replicas {n} outside [{lo}, {hi}]")
    if head_containers:
        env = _env_names(head_containers[0])
        ft = spec.get("gcsFaultToleranceOptions")
        if ft is None and "RAY_REDIS_ADDRESS" in env:
            problems.append("RAY_REDIS_ADDRESS implicitly enables GCS FT without gcsFaultToleranceOptions")
        if ft is not None and ({"REDIS_PASSWORD", "RAY_REDIS_ADDRESS"} & env
                               or (head.get("rayStartParams") or {}).get("redis-password")):
            problems.append("redis settings belong in gcsFaultToleranceOptions")
        if (head.get("rayStartParams") or {}).get("redis-username") or "REDIS_USERNAME" in env:
            problems.append("cannot set redis username in rayStartParams or env")
    if (spec.get("authOptions") or {}).get("mode") == "token" and not spec.get("rayVersion"):
        problems.append("authOptions.mode token needs rayVersion >= 2.52.0")
    return problems


def rayjob_problems(spec: dict, metadata: dict | None = None) -> list[str]:
    """ValidateRayJobSpec + ValidateRayJobMetadata: an empty list means the operator accepts it."""
    problems = []
    metadata = metadata or {}
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode", "K8sJobMode")
    backoff = spec.get("backoffLimit")
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if mode not in MODES:
        problems.append(f"submissionMode {mode!r} is not one of {MODES}")
    if spec.get("suspend") and not shutdown:
        problems.append("a RayJob with shutdownAfterJobFinishes=false cannot be suspended")
    if ttl < 0:
        problems.append("ttlSecondsAfterFinished must be non-negative")
    if not shutdown and ttl > 0:
        problems.append("shutdownAfterJobFinishes=false cannot have ttlSecondsAfterFinished")
    if spec.get("deletionStrategy") is not None:
        problems.append("deletionStrategy needs the RayJobDeletionPolicy feature gate")
    if selector and spec.get("suspend"):
        problems.append("the ClusterSelector mode doesn't support suspend")
    if not spec.get("rayClusterSpec") and not selector:
        problems.append("one of rayClusterSpec or clusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            problems.append("cluster name in clusterSelector (ray.io/cluster) should not be empty")
        if mode == "SidecarMode":
            problems.append("clusterSelector is not supported in SidecarMode")
        if backoff is not None and backoff > 0:
            problems.append("BackoffLimit is incompatible with ClusterSelector mode")
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        problems.append("BackoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode":
        if spec.get("submitterPodTemplate") or spec.get("submitterConfig"):
            problems.append("SidecarMode doesn't support submitterPodTemplate / submitterConfig")
        head_policy = (((spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {}).get("template") or
                       {}).get("spec", {}).get("restartPolicy")
        if head_policy not in (None, "", "Never"):
            problems.append("restartPolicy for the head pod should be Never or unset in SidecarMode")
    if spec.get("rayClusterSpec"):
        problems += [f"rayClusterSpec: {p}" for p in raycluster_problems(spec["rayClusterSpec"])]
    runtime_env = spec.get("runtimeEnvYAML")
    if runtime_env:
        try:
            if not isinstance(yaml.safe_load(runtime_env), dict):
                problems.append("runtimeEnvYAML is not a YAML mapping")
        except yaml.YAMLError as e:
            problems.append(f"runtimeEnvYAML is not valid YAML: {e}")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and deadline <= 0:
        problems.append("activeDeadlineSeconds must be a positive integer")
    if backoff is not None and backoff < 0:
        problems.append("backoffLimit must be non-negative")
    if mode in ("K8sJobMode", "HTTPMode", "SidecarMode") and not spec.get("entrypoint"):
        problems.append(f"{mode} needs an entrypoint")
    name = metadata.get("name")
    if name is None and metadata.get("generateName"):
        name = metadata["generateName"] + "x" * GENERATE_NAME_SUFFIX
    if name is not None:
        if len(name) > MAX_RAYJOB_NAME:
            problems.append(f"RayJob name {name!r} longer than {MAX_RAYJOB_NAME} characters")
        if not DNS1035.match(name):
            problems.append(f"RayJob name {name!r} is not a DNS-1035 label")
    return problems


# ---- the checker itself catches what the operator refuses (so a green run means something) ----

def _archive() -> dict:
    [doc] = _docs(ROOT / "infra/kuberay/rayjob-archive.yaml")
    return doc


@pytest.mark.parametrize("change,expected", [
    (lambda s: (s.pop("rayClusterSpec"), s.update(clusterSelector={"ray.io/cluster": "transcribe"}),
                s.update(backoffLimit=2)), "BackoffLimit is incompatible with ClusterSelector mode"),
    (lambda s: s.update(clusterSelector={"ray.io/cluster": ""}), "should not be empty"),
    (lambda s: s.pop("rayClusterSpec"), "one of rayClusterSpec or clusterSelector"),
    (lambda s: s.update(shutdownAfterJobFinishes=False), "cannot have ttlSecondsAfterFinished"),
    (lambda s: s.update(submissionMode="InteractiveMode"), "incompatible with InteractiveMode"),
    (lambda s: s.update(activeDeadlineSeconds=0), "activeDeadlineSeconds must be a positive"),
    (lambda s: s.update(runtimeEnvYAML="working_dir: [unclosed"), "runtimeEnvYAML is not valid YAML"),
    (lambda s: s["rayClusterSpec"]["workerGroupSpecs"][1].update(resources={"GPU": "1"}),
     "resources set in both"),
])
def test_checker_flags_what_the_operator_refuses(change, expected):
    spec = copy.deepcopy(_archive()["spec"])
    assert rayjob_problems(spec) == []
    change(spec)
    assert any(expected in p for p in rayjob_problems(spec)), rayjob_problems(spec)


def test_checker_flags_long_generated_names():
    assert rayjob_problems(_archive()["spec"], {"generateName": "x" * 43 + "-"})
    assert rayjob_problems(_archive()["spec"], {"name": "Transcribe"})


# ---- the manifests ----

def test_every_rayjob_is_accepted_by_the_operator():
    jobs = rayjobs()
    assert len(jobs) == 3, [n for n, _, _ in jobs]
    problems = {name: rayjob_problems(spec, meta) for name, meta, spec in jobs}
    assert all(not p for p in problems.values()), problems


def test_every_raycluster_is_accepted_by_the_operator():
    clusters = rayclusters()
    assert len(clusters) == 4
    for name, meta, spec in clusters:
        assert raycluster_problems(spec) == [], name
        if meta.get("name") is not None:
            assert len(meta["name"]) <= MAX_RAYCLUSTER_NAME and DNS1035.match(meta["name"]), name


def test_raycronjob_schedule_is_standard_cron():
    [cron] = _docs(ROOT / "infra/kuberay/raycronjob.yaml")
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,\-]+", f) for f in fields), fields
    # the RayJob the RayCronJob creates gets the cron job's name plus a suffix
    assert len(cron["metadata"]["name"]) + 12 <= MAX_RAYJOB_NAME


def test_scheduled_runs_retry_and_continue():
    """A killed scheduled run continues: KubeRay retries it (backoffLimit > 0, allowed only when the
    RayJob creates its own cluster) and the entrypoint's --schedule-slot gives the retry the same run
    id; the writer skips ids already written."""
    scheduled = [(n, s) for n, _, s in rayjobs() if "Cron" in n or "ConfigMap" in n]
    assert len(scheduled) == 2
    for name, spec in scheduled:
        assert spec.get("backoffLimit", 0) >= 1, name
        assert "clusterSelector" not in spec and spec["rayClusterSpec"], name
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0, name
        assert "--schedule-slot" in spec["entrypoint"], name
        assert "--overwrite" not in spec["entrypoint"] and "--select all" not in spec["entrypoint"], name
    text = (ROOT / "infra/README.md").read_text()
    assert "backoffLimit" in text and "clusterSelector" in text


def _pod_templates() -> list[tuple[str, dict]]:
    out = []
    for name, _, spec in rayclusters():
        out.append((f"{name}:head", spec["headGroupSpec"]["template"]))
        out += [(f"{name}:{g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def test_secret_env_is_optional_everywhere():
    """Pods on IRSA / workload identity have no transcribe-s3 secret; they must still start."""
    refs = []
    for name, tmpl in _pod_templates():
        for c in tmpl["spec"]["containers"]:
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    refs.append((name, src["secretRef"]))
    assert refs
    assert all(ref.get("optional") is True for _, ref in refs), [n for n, r in refs if not r.get("optional")]


def test_gpu_groups_select_the_gpu_product():
    [cluster] = _docs(ROOT / "infra/kuberay/raycluster.yaml")
    reference = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "h100")
    product = reference["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
    gpu_groups = [(n, t) for n, t in _pod_templates()
                  if any("nvidia.com/gpu" in (c.get("resources") or {}).get("limits", {})
                         for c in t["spec"]["containers"])]
    assert len(gpu_groups) == 4
    for name, tmpl in gpu_groups:
        assert (tmpl["spec"].get("nodeSelector") or {}).get("nvidia.com/gpu.product") == product, name
        # the same pod as the long-lived cluster's GPU group
        assert tmpl == reference["template"], name


@pytest.mark.parametrize("label,doc", [(n, d) for n, d in _k8s_docs() if "ray.io" not in d["apiVersion"]],
                         ids=[n for n, d in _k8s_docs() if "ray.io" not in d["apiVersion"]])
def test_core_kinds_validate_strictly(label, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("label,tmpl", _pod_templates(), ids=[n for n, _ in _pod_templates()])
def test_ray_pod_templates_validate_strictly(label, tmpl):
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": tmpl}, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field():
    [_, tmpl] = _pod_templates()[0]
    bad = copy.deepcopy(tmpl)
    bad["spec"]["containers"][0]["envFrom"][0]["secretRef"]["optinal"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": bad}, K8S_VERSION, strict=True)


def test_cluster_launcher_pins_an_image_for_every_node_type():
    """Without ImageId Ray's launcher uses its built-in default AMI (Ubuntu 18.04, CUDA 11.2)."""
    [doc] = _docs(ROOT / "infra/cluster-launcher/aws-gpu.yaml")
    for name, node_type in doc["available_node_types"].items():
        ami = str(node_type["node_config"].get("ImageId", ""))
        assert ami and ami.lower() != "latest_dlami", name
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", ami) or (
            ami.startswith("resolve:ssm:/aws/service/deeplearning/") and "ubuntu-22.04" in ami
            and "18.04" not in ami), (name, ami)
