"""What the KubeRay operator and the Kubernetes API server would say about infra/, checked offline, and
what a KubeRay maintainer would ask of the manifests besides.

The schema (CRD) check is not enough: the operator runs its own validation
(ray-project/kuberay ray-operator/controllers/ray/utils/validation.go at v1.6.0: ValidateRayJobSpec with
validateDeletionConfiguration / validateDeletionRules, ValidateRayClusterSpec with
validateWorkerGroupIdleTimeout, ValidateRayJobMetadata, ValidateRayCronJobSpec) and refuses a RayJob that
breaks it; nothing then runs. `rayjob_problems` / `raycluster_problems` encode the rules these manifests
could break, with KubeRay 1.6's feature-gate defaults (RayJobDeletionPolicy: beta, on), and run over every
RayJob in infra/ (plain, RayCronJob templates, RayJobs held in ConfigMaps) and every RayCluster. Core
Kubernetes kinds (and every Ray pod template, as a v1 PodTemplate) go through kubernetes-validate in
strict mode (unknown fields are errors). The manifests are rendered by infra/kuberay/render.py from one
spec; the files must be what it renders."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
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
# rayv1 enums (rayjob_types.go): DeletionPolicyType, DeletionCondition.jobStatus / jobDeploymentStatus
DELETION_POLICIES = ("DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone")
DELETION_JOB_STATUS = ("SUCCEEDED", "FAILED")
DELETION_DEPLOYMENT_STATUS = ("Failed",)
DELETION_ORDER = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")   # TTLs must not decrease along it
AUTOSCALER_V2_ENV = "RAY_enable_autoscaler_v2"
SLOT = "20260309"               # what the CronJob's script puts for __SLOT__ (the UTC date)


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
                if not key.endswith(".yaml"):
                    continue
                inner = yaml.safe_load(text.replace("__SLOT__", SLOT))
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


def _env(container: dict) -> dict[str, str]:
    return {e.get("name"): e.get("value") for e in container.get("env") or []}


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
    options = spec.get("autoscalerOptions") or {}
    v2 = options.get("version") == "v2"            # IsAutoscalingV2Enabled: only an explicit version
    head_env = _env(head_containers[0]) if head_containers else {}
    v2_env = head_env.get(AUTOSCALER_V2_ENV) in ("1", "true")
    for name, group in groups:
        params = group.get("rayStartParams") or {}
        pod = (group.get("template") or {}).get("spec", {})
        if name != "Head" and not pod.get("containers"):
            problems.append(f"workerGroupSpec {name} should have at least one container")
        if any(params.get(k) for k in RAYSTART_RESOURCE_KEYS) and group.get("resources"):
            problems.append(f"{name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{name}: rayStartParams['labels'] is not supported; use the labels field")
        if group.get("suspend") and autoscaling:
            problems.append(f"worker group {name} cannot be suspended with autoscaler enabled")
        if autoscaling and v2 and pod.get("restartPolicy") not in (None, "", "Never"):
            problems.append(f"{name}: restartPolicy should be Never or unset when using autoscaler V2")
        if name != "Head":
            lo, n, hi = group.get("minReplicas"), group.get("replicas", 0), group.get("maxReplicas")
            if not autoscaling and (lo is None or hi is None):
                problems.append(f"worker group {name} must set both minReplicas and maxReplicas when "
                                "autoscaling is disabled")
            if (lo is not None and lo < 0) or (hi is not None and hi < 0):
                problems.append(f"worker group {name} has negative minReplicas or maxReplicas")
            if lo is not None and hi is not None and lo > hi:
                problems.append(f"worker group {name} has minReplicas {lo} greater than maxReplicas {hi}")
            if hi is not None and not ((lo or 0) <= n <= hi):       # (a project rule: KubeRay clamps)
                problems.append(f"{name}: replicas {n} outside [{lo or 0}, {hi}]")
            idle = group.get("idleTimeoutSeconds")
            if idle is not None and idle < 0:
                problems.append(f"worker group {name}: idleTimeoutSeconds must be non-negative")
            elif idle is not None and not (v2 or v2_env):
                problems.append(f"worker group {name}: idleTimeoutSeconds is set, but autoscaler v2 is not "
                                "enabled (.spec.autoscalerOptions.version: v2)")
    if not autoscaling and v2_env:
        problems.append(f"{AUTOSCALER_V2_ENV} cannot be set when enableInTreeAutoscaling is false")
    if autoscaling and options.get("version") is not None and AUTOSCALER_V2_ENV in head_env:
        problems.append(f"both .spec.autoscalerOptions.version and head Pod env var {AUTOSCALER_V2_ENV} are set")
    if (options.get("idleTimeoutSeconds") or 0) < 0:
        problems.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")
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


def deletion_problems(spec: dict) -> list[str]:
    """validateDeletionConfiguration, validateDeletionRules, validateLegacyDeletionPolicies (plus the CRD's
    enums and XValidations on deletionStrategy)."""
    problems = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        problems.append("shutdownAfterJobFinishes=false cannot have ttlSecondsAfterFinished")
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return problems
    selector = bool(spec.get("clusterSelector"))
    autoscaling = bool((spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling"))
    legacy = "onSuccess" in strategy or "onFailure" in strategy
    rules = strategy.get("deletionRules") or []
    if rules and shutdown:
        problems.append("spec.shutdownAfterJobFinishes and spec.deletionStrategy.deletionRules are mutually exclusive")
    if rules and legacy:
        problems.append("Cannot use both legacy onSuccess/onFailure fields and deletionRules simultaneously")
    if not rules and not legacy:
        problems.append("DeletionStrategy requires either BOTH onSuccess and onFailure, OR the deletionRules field")
    if legacy and not rules:
        on = [strategy.get("onSuccess"), strategy.get("onFailure")]
        if None in on:
            problems.append("both DeletionStrategy.OnSuccess and DeletionStrategy.OnFailure must be set")
        policies = [(o or {}).get("policy") for o in on if o is not None]
        if None in policies:
            problems.append("the DeletionPolicyType field of onSuccess / onFailure cannot be unset")
        if selector and {"DeleteCluster", "DeleteWorkers"} & set(policies):
            problems.append("the ClusterSelector mode doesn't support DeleteCluster / DeleteWorkers")
        if "DeleteWorkers" in policies and autoscaling:
            problems.append("DeletionStrategy=DeleteWorkers does not support autoscaling")
        if shutdown and "DeleteNone" in policies:
            problems.append("shutdownAfterJobFinishes is set to 'true' while deletion policy is 'DeleteNone'")
    ttls: dict[tuple[str, str], dict[str, int]] = {}
    for i, rule in enumerate(rules):
        policy, cond = rule.get("policy"), rule.get("condition") or {}
        if policy not in DELETION_POLICIES:
            problems.append(f"deletionRules[{i}]: policy {policy!r} is not one of {DELETION_POLICIES}")
            continue
        has_job, has_dep = "jobStatus" in cond, "jobDeploymentStatus" in cond
        if has_job == has_dep:
            problems.append(f"deletionRules[{i}]: exactly one of JobStatus and JobDeploymentStatus must be set")
            continue
        if has_job and cond["jobStatus"] not in DELETION_JOB_STATUS:
            problems.append(f"deletionRules[{i}]: jobStatus {cond['jobStatus']!r} not in {DELETION_JOB_STATUS}")
            continue
        if has_dep and cond["jobDeploymentStatus"] not in DELETION_DEPLOYMENT_STATUS:
            problems.append(f"deletionRules[{i}]: jobDeploymentStatus {cond['jobDeploymentStatus']!r} "
                            f"not in {DELETION_DEPLOYMENT_STATUS}")
            continue
        ttl = cond.get("ttlSeconds", 0)
        if not isinstance(ttl, int) or ttl < 0:
            problems.append(f"deletionRules[{i}]: TTLSeconds must be non-negative")
            continue
        if selector and policy in ("DeleteCluster", "DeleteWorkers"):
            problems.append(f"deletionRules[{i}]: {policy} not supported when ClusterSelector is set")
            continue
        if autoscaling and policy == "DeleteWorkers":
            problems.append(f"deletionRules[{i}]: DeleteWorkers not supported with autoscaling enabled")
            continue
        key = ("JobStatus", cond["jobStatus"]) if has_job else ("JobDeploymentStatus", cond["jobDeploymentStatus"])
        if policy in ttls.setdefault(key, {}):
            problems.append(f"deletionRules[{i}]: duplicate rule for {policy} and {key[0]} {key[1]}")
            continue
        ttls[key][policy] = ttl
    for (kind, value), by_policy in ttls.items():
        seen = [(p, by_policy[p]) for p in DELETION_ORDER if p in by_policy]
        for (p0, t0), (p1, t1) in zip(seen, seen[1:]):
            if t1 < t0:
                problems.append(f"for {kind} {value!r}: {p1} TTL ({t1}) must be >= {p0} TTL ({t0})")
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
    problems += deletion_problems(spec)
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
    pre_running = spec.get("preRunningDeadlineSeconds")       # KubeRay >= 1.6.0
    if pre_running is not None and pre_running <= 0:
        problems.append("preRunningDeadlineSeconds must be a positive integer")
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


def _rules(s: dict) -> list[dict]:
    return s["deletionStrategy"]["deletionRules"]


def _h100(s: dict) -> dict:
    return next(g for g in s["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "h100")


def _on_existing_cluster(s: dict) -> None:
    s.pop("rayClusterSpec")
    s.update(clusterSelector={"ray.io/cluster": "transcribe"}, backoffLimit=0)


@pytest.mark.parametrize("change,expected", [
    (lambda s: (s.pop("rayClusterSpec"), s.update(clusterSelector={"ray.io/cluster": "transcribe"}),
                s.update(backoffLimit=2)), "BackoffLimit is incompatible with ClusterSelector mode"),
    (lambda s: s.update(clusterSelector={"ray.io/cluster": ""}), "should not be empty"),
    (lambda s: s.pop("rayClusterSpec"), "one of rayClusterSpec or clusterSelector"),
    (lambda s: s.update(ttlSecondsAfterFinished=600), "cannot have ttlSecondsAfterFinished"),
    (lambda s: s.update(submissionMode="InteractiveMode"), "incompatible with InteractiveMode"),
    (lambda s: s.update(activeDeadlineSeconds=0), "activeDeadlineSeconds must be a positive"),
    (lambda s: s.update(preRunningDeadlineSeconds=0), "preRunningDeadlineSeconds must be a positive"),
    (lambda s: s.update(runtimeEnvYAML="working_dir: [unclosed"), "runtimeEnvYAML is not valid YAML"),
    (lambda s: s["rayClusterSpec"]["headGroupSpec"].update(resources={"CPU": "1"}), "resources set in both"),
    # deletion rules (validateDeletionConfiguration / validateDeletionRules)
    (lambda s: s.update(shutdownAfterJobFinishes=True), "mutually exclusive"),
    (lambda s: s["deletionStrategy"].update(onSuccess={"policy": "DeleteCluster"}), "Cannot use both legacy"),
    (lambda s: s.update(deletionStrategy={"onSuccess": {"policy": "DeleteCluster"}}),
     "both DeletionStrategy.OnSuccess and DeletionStrategy.OnFailure"),
    (lambda s: s.update(deletionStrategy={"onSuccess": {"policy": "DeleteNone"},
                                          "onFailure": {"policy": "DeleteNone"}}, shutdownAfterJobFinishes=True),
     "while deletion policy is 'DeleteNone'"),
    (lambda s: s.update(deletionStrategy={}), "requires either BOTH onSuccess and onFailure"),
    (lambda s: _rules(s)[0]["condition"].update(jobDeploymentStatus="Failed"), "exactly one of JobStatus"),
    (lambda s: _rules(s)[0]["condition"].pop("jobStatus"), "exactly one of JobStatus"),
    (lambda s: _rules(s)[0]["condition"].update(jobStatus="STOPPED"), "not in ('SUCCEEDED', 'FAILED')"),
    (lambda s: _rules(s)[0]["condition"].update(ttlSeconds=-1), "TTLSeconds must be non-negative"),
    (lambda s: _rules(s)[0].update(policy="DeleteWorkers"), "DeleteWorkers not supported with autoscaling"),
    (lambda s: _rules(s).append(copy.deepcopy(_rules(s)[0])), "duplicate rule"),
    (lambda s: _rules(s)[1]["condition"].update(ttlSeconds=0) or _rules(s)[0]["condition"].update(ttlSeconds=9),
     "DeleteSelf TTL (0) must be >= DeleteCluster TTL (9)"),
    (lambda s: (_on_existing_cluster(s)), "DeleteCluster not supported when ClusterSelector is set"),
    # autoscaler (ValidateRayClusterSpec, validateWorkerGroupIdleTimeout)
    (lambda s: s["rayClusterSpec"]["autoscalerOptions"].pop("version"), "autoscaler v2 is not enabled"),
    (lambda s: _h100(s).update(idleTimeoutSeconds=-1), "idleTimeoutSeconds must be non-negative"),
    (lambda s: s["rayClusterSpec"]["autoscalerOptions"].update(idleTimeoutSeconds=-1),
     "autoscalerOptions.idleTimeoutSeconds must be non-negative"),
    (lambda s: _h100(s)["template"]["spec"].update(restartPolicy="OnFailure"), "restartPolicy should be Never"),
    (lambda s: s["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        env=[{"name": AUTOSCALER_V2_ENV, "value": "true"}]), "both .spec.autoscalerOptions.version"),
    (lambda s: (s["rayClusterSpec"].update(enableInTreeAutoscaling=False), _h100(s).pop("minReplicas")),
     "must set both minReplicas and maxReplicas"),
    (lambda s: _h100(s).update(minReplicas=9), "greater than maxReplicas"),
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
    # the RayJob the RayCronJob creates gets the cron job's name plus a suffix (KubeRay 1.7 refuses
    # RayCronJob names over MaxRayCronJobNameLength = MaxRayJobNameLength - 11 = 36)
    assert len(cron["metadata"]["name"]) + 12 <= MAX_RAYJOB_NAME and len(cron["metadata"]["name"]) <= 36
    assert "TZ=" not in cron["spec"]["schedule"]        # KubeRay 1.7: use spec.timeZone, not CRON_TZ


def test_scheduled_runs_retry_and_continue():
    """A killed scheduled run continues: KubeRay retries it (backoffLimit > 0, allowed only when the
    RayJob creates its own cluster) and the entrypoint's --schedule-slot gives the retry the same run
    id; the writer skips ids already written."""
    scheduled = [(n, s) for n, _, s in rayjobs() if "Cron" in n or "ConfigMap" in n]
    assert len(scheduled) == 2
    for name, spec in scheduled:
        assert spec.get("backoffLimit", 0) >= 1, name
        assert "clusterSelector" not in spec and spec["rayClusterSpec"], name
        assert "--schedule-slot" in spec["entrypoint"], name
        assert "--overwrite" not in spec["entrypoint"] and "--select all" not in spec["entrypoint"], name
    text = (ROOT / "infra/README.md").read_text()
    assert "backoffLimit" in text and "clusterSelector" in text


# ---- what a KubeRay maintainer would ask of them ----

def _render_module():
    spec = importlib.util.spec_from_file_location("kuberay_render", ROOT / "infra/kuberay/render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifests_are_rendered_from_one_source():
    """One cluster spec, one image, one set of deadlines (infra/kuberay/render.py): the committed files
    are exactly what it renders, so a change is made once."""
    rendered = _render_module().render()
    on_disk = {p.name: p.read_text() for p in (ROOT / "infra/kuberay").glob("*.yaml")}
    assert set(rendered) == set(on_disk)
    stale = [name for name, text in rendered.items() if on_disk[name] != text]
    assert not stale, f"run python infra/kuberay/render.py: {stale} differ from what it renders"
    r = subprocess.run([sys.executable, "infra/kuberay/render.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    specs = [spec for _, _, spec in rayclusters()]
    assert all(spec == specs[0] for spec in specs), "the cluster specs differ"


def _rules_by(spec: dict) -> dict[tuple[str, str], int]:
    """(policy, condition) -> ttlSeconds; condition is SUCCEEDED or Failed."""
    out = {}
    for rule in spec["deletionStrategy"]["deletionRules"]:
        cond = rule["condition"]
        out[(rule["policy"], cond.get("jobStatus") or cond.get("jobDeploymentStatus"))] = cond.get("ttlSeconds", 0)
    return out


def test_deletion_rules_clean_up_clusters_and_rayjobs():
    """deletionRules (KubeRay >= 1.5; its gate is on by default from 1.6) instead of
    shutdownAfterJobFinishes + ttlSecondsAfterFinished: the cluster goes as soon as the job succeeds, a
    failed run's cluster stays a while for debugging (any failure: jobDeploymentStatus Failed), and the
    RayJob objects themselves go days later instead of piling up night after night."""
    for name, _, spec in rayjobs():
        assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec, name
        rules = _rules_by(spec)
        assert rules.get(("DeleteCluster", "SUCCEEDED")) == 0, name
        assert 0 < rules[("DeleteCluster", "Failed")] <= 6 * 3600, name
        assert rules[("DeleteSelf", "SUCCEEDED")] >= 3600 and rules[("DeleteSelf", "Failed")] >= 24 * 3600, name
        assert max(rules.values()) <= 14 * 24 * 3600, name
        assert all(policy in ("DeleteCluster", "DeleteSelf") for policy, _ in rules), name


def _daily_interval(schedule: str) -> int:
    minute, hour, *rest = schedule.split()
    assert rest == ["*", "*", "*"] and minute.isdigit() and hour.isdigit(), f"not a daily schedule: {schedule}"
    return 24 * 3600


RETRY_TEARDOWN_S = 600          # deleting a failed attempt's cluster before the retry's is created


def _longest_run_s(spec: dict, late_start_s: int = 0) -> int:
    """The latest a scheduled RayJob can still hold a cluster after its slot fired: every attempt runs
    to activeDeadlineSeconds (a retry starts the deadlines again), each retry waits for the teardown,
    and a failed run's cluster is kept for debugging (its Ray job may still run: KubeRay does not stop
    it when a deadline passes, deleting the cluster does)."""
    attempts = spec["backoffLimit"] + 1
    return (late_start_s + attempts * spec["activeDeadlineSeconds"] + spec["backoffLimit"] * RETRY_TEARDOWN_S
            + _rules_by(spec)[("DeleteCluster", "Failed")])


def test_deadlines_are_sized_for_what_they_mean():
    """preRunningDeadlineSeconds (KubeRay >= 1.6.0) bounds the wait for a cluster (GPU capacity) of
    each attempt; activeDeadlineSeconds bounds each attempt, the wait included. A scheduled run, all its
    attempts and its kept cluster included, ends before the next slot fires."""
    for name, _, spec in rayjobs():
        pre, active = spec.get("preRunningDeadlineSeconds"), spec.get("activeDeadlineSeconds")
        assert pre and active and 600 <= pre <= 2 * 3600 and pre < active / 4, (name, pre, active)
    [cron] = _docs(ROOT / "infra/kuberay/raycronjob.yaml")
    assert _longest_run_s(cron["spec"]["jobTemplate"]) < _daily_interval(cron["spec"]["schedule"])
    docs = {d["kind"]: d for d in _docs(ROOT / "infra/kuberay/cronjob-rayjob.yaml")}
    cj = docs["CronJob"]["spec"]
    [(_, _, spec)] = [j for j in rayjobs() if "ConfigMap" in j[0]]
    assert _longest_run_s(spec, cj["startingDeadlineSeconds"]) < _daily_interval(cj["schedule"])
    # today's figures fail: 3 x 23 h attempts, no wait bound
    assert _longest_run_s({"backoffLimit": 2, "activeDeadlineSeconds": 82800,
                           "deletionStrategy": spec["deletionStrategy"]}) > 24 * 3600


def _all_ray_specs() -> list[tuple[str, dict]]:
    return [(name, spec) for name, _, spec in rayclusters()]


def test_autoscaler_is_explicit_v2_with_its_own_resources():
    """autoscalerOptions.version v2 (KubeRay sets v2's env and restartPolicy Never only when asked), an
    idle timeout long enough that a GPU worker does not reload the model every minute (the default is
    60 s), the autoscaler container's own resources (requests = limits: the head stays Guaranteed)."""
    for name, spec in _all_ray_specs():
        assert spec["enableInTreeAutoscaling"] is True, name
        options = spec["autoscalerOptions"]
        assert options["version"] == "v2", name
        res = options["resources"]
        assert res["requests"] == res["limits"] and {"cpu", "memory"} <= set(res["limits"]), name
        for group in spec["workerGroupSpecs"]:
            idle = group.get("idleTimeoutSeconds", options.get("idleTimeoutSeconds", 60))
            gpu = "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert idle >= (900 if gpu else 120), (name, group["groupName"], idle)


KUBERAY_DEFAULT_PORTS = {6379, 8265, 10001, 8080, 8000}


def test_no_settings_kuberay_sets_itself():
    """KubeRay adds dashboard-host 0.0.0.0 on the head, the head's ports (gcs-server, dashboard, client,
    metrics, serve), num-gpus from the container's nvidia.com/gpu limit and num-cpus from its CPU limit."""
    for name, spec in _all_ray_specs():
        head = spec["headGroupSpec"]
        assert "dashboard-host" not in head.get("rayStartParams", {}), name
        ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0].get("ports") or []}
        assert not ports & KUBERAY_DEFAULT_PORTS, (name, ports)
        for group in spec["workerGroupSpecs"]:
            params = group.get("rayStartParams")
            assert params is None or params, f"{name}: empty rayStartParams in {group['groupName']}"
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            if "nvidia.com/gpu" in limits:
                assert "num-gpus" not in (params or {}), (name, group["groupName"])
            assert "num-cpus" not in (params or {}), (name, group["groupName"])


DIGEST = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")


def test_images_are_pinned():
    """The project image by digest (a retry runs the code the first attempt ran); kubectl from the
    Kubernetes project's registry (bitnami/kubectl's versioned tags are gone from its free tier)."""
    images = {c["image"] for _, t in _pod_templates() for c in t["spec"]["containers"]}
    assert len(images) == 1 and DIGEST.match(images.pop()), images
    docs = {d["kind"]: d for d in _docs(ROOT / "infra/kuberay/cronjob-rayjob.yaml")}
    [creator] = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"registry\.k8s\.io/kubectl:v1\.\d+\.\d+(@sha256:[0-9a-f]{64})?", creator["image"])
    text = "".join(p.read_text() for p in MANIFESTS)
    assert "bitnami/" not in text


def test_ray_pods_run_as_a_service_account_of_their_own():
    """IRSA / workload identity bind cloud credentials to a ServiceAccount: every Ray pod names one that
    infra/ defines (KubeRay also binds the autoscaler's Role to the head pod's)."""
    accounts = {d["metadata"]["name"] for _, d in _k8s_docs() if d["kind"] == "ServiceAccount"}
    names = {(n, t["spec"].get("serviceAccountName")) for n, t in _pod_templates()}
    assert {sa for _, sa in names} == {"transcribe-ray"} and "transcribe-ray" in accounts, names
    [sa] = _docs(ROOT / "infra/kuberay/serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount"


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


# ---- a scheduled run never overlaps the next ----

FAKE_KUBECTL = r'''#!PYTHON
"""kubectl for the CronJob's script: answers from $KUBE_STATE (rayjobs: name -> jobDeploymentStatus,
rayclusters: names), records `create -f -` in $KUBE_CREATED."""
import json, os, sys
state = json.load(open(os.environ["KUBE_STATE"]))
args = sys.argv[1:]
if args[:2] == ["get", "rayjob"]:
    if args[2] in state["rayjobs"]:
        print(f"rayjob.ray.io/{args[2]}")
elif args[:2] == ["get", "rayjobs"]:
    assert "-l" in args and "jsonpath=" in " ".join(args), args
    for name, status in state["rayjobs"].items():
        print(f"{name}={status}")
elif args[:2] == ["get", "rayclusters"]:
    assert "-l" in args, args
    for name in state["rayclusters"]:
        print(f"raycluster.ray.io/{name}")
elif args[:3] == ["create", "-f", "-"]:
    with open(os.environ["KUBE_CREATED"], "a") as f:
        f.write(sys.stdin.read() + "\n---\n")
    print("rayjob.ray.io/created")
else:
    sys.exit(f"unexpected kubectl {args}")
'''


def _creator(tmp_path, rayjobs: dict, rayclusters: list) -> tuple[int, str, list[dict]]:
    """Run the CronJob's script against a fake kubectl: (exit code, output, RayJobs created)."""
    [cm] = [d for d in _docs(ROOT / "infra/kuberay/cronjob-rayjob.yaml") if d["kind"] == "ConfigMap"]
    template = tmp_path / "template"
    template.mkdir(exist_ok=True)
    for key, text in cm["data"].items():
        (template / key).write_text(text.replace("/template/", f"{template}/"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.replace("PYTHON", sys.executable))
    kubectl.chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps({"rayjobs": rayjobs, "rayclusters": rayclusters}))
    created = tmp_path / "created.yaml"
    created.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KUBE_STATE": str(tmp_path / "state.json"),
           "KUBE_CREATED": str(created)}
    r = subprocess.run(["bash", str(template / "create-rayjob.sh")], env=env, capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout + r.stderr, [d for d in yaml.safe_load_all(created.read_text()) if d]


def test_the_cronjob_skips_a_night_while_the_previous_run_is_going(tmp_path):
    """concurrencyPolicy: Forbid covers the creator pod only, which ends as soon as the RayJob exists;
    so the pod itself refuses to create tonight's RayJob while one of this schedule has not ended, or
    still holds a RayCluster (a failed run's kept cluster, a run past its deadline whose Ray job KubeRay
    does not stop): exit 3, which the Job's podFailurePolicy turns into a failed Job at once."""
    docs = {d["kind"]: d for d in _docs(ROOT / "infra/kuberay/cronjob-rayjob.yaml")}
    cj = docs["CronJob"]["spec"]
    assert cj["concurrencyPolicy"] == "Forbid" and cj["timeZone"] == "Etc/UTC"
    job = cj["jobTemplate"]["spec"]
    [rule] = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [3]
    assert job["template"]["spec"]["restartPolicy"] == "Never"        # podFailurePolicy needs it
    [container] = job["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/bash", "/template/create-rayjob.sh"]
    verbs = {(r["resources"][0], v) for r in docs["Role"]["rules"] for v in r["verbs"]}
    assert {("rayjobs", "create"), ("rayjobs", "list"), ("rayjobs", "get"), ("rayclusters", "list")} <= verbs

    today = datetime.now(timezone.utc).strftime("%Y%m%d")
    done = {"transcribe-nightly-20200101": "Complete", "transcribe-nightly-20200102": "Failed"}
    code, out, created = _creator(tmp_path, done, [])
    assert code == 0, out
    [rayjob] = created
    assert rayjob["metadata"]["name"] == f"transcribe-nightly-{today}"
    assert rayjob["metadata"]["labels"]["granite-transcribe/schedule"] == "nightly"
    assert rayjob["spec"] == yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])["spec"]

    for going, clusters in [({"transcribe-nightly-20200103": "Running"}, []),
                            ({"transcribe-nightly-20200103": "Retrying"}, []),
                            ({"transcribe-nightly-20200103": ""}, []),          # just created: no status yet
                            ({"transcribe-nightly-20200103": "Failed"}, ["transcribe-nightly-20200103-x7k2p"])]:
        code, out, created = _creator(tmp_path, {**done, **going}, clusters)
        assert code == 3 and not created and "skipped" in out, (going, clusters, out)

    # a retried creator pod (its first try created the RayJob) makes no second one
    code, out, created = _creator(tmp_path, {f"transcribe-nightly-{today}": "Running"}, [])
    assert code == 0 and not created, out


def test_the_raycronjob_cannot_overlap_by_its_deadlines():
    """RayCronJob (KubeRay 1.6 and 1.7) has no concurrencyPolicy: it creates a RayJob at every tick. A
    run is therefore bounded to end before the next tick (test_deadlines_are_sized_for_what_they_mean);
    no field of it can forbid what KubeRay does not offer."""
    [cron] = _docs(ROOT / "infra/kuberay/raycronjob.yaml")
    assert set(cron["spec"]) == {"schedule", "jobTemplate"}, sorted(cron["spec"])
    assert _longest_run_s(cron["spec"]["jobTemplate"]) <= 23 * 3600
