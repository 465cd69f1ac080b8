"""The one source of infra/kuberay/*.yaml: the cluster (head, cpu-decode, h100 groups), the image, the
deadlines and deletion rules are written here once, and every manifest is rendered from them.

    python infra/kuberay/render.py            # rewrite the manifests after a change here
    python infra/kuberay/render.py --check    # exit 1 if a committed manifest differs (the unit tests do this)

Written for KubeRay >= 1.6.0 (ray.io/v1): `preRunningDeadlineSeconds` and the deletion rules'
`jobDeploymentStatus` condition are new in 1.6.0, and the RayJobDeletionPolicy feature gate behind
`deletionStrategy.deletionRules` (alpha since 1.5.0) is beta and on by default from 1.6.0;
`autoscalerOptions.version` dates from 1.4.0; the RayCronJob kind (1.6.0) is alpha and needs its gate. Kubernetes
>= 1.33 (tests/unit/test_infra_kuberay_rules.py validates the core kinds against it).

Edit this file, run it, commit both. Never edit the .yaml files by hand: the tests fail when they differ
from what this renders.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# The project image (infra/Dockerfile), pinned by digest: a tag can be moved, and the retry of a run must
# run the code the first attempt ran. After `docker push`, put the digest it printed here (or
# `docker buildx imagetools inspect REGISTRY/granite-transcribe:0.1.0`) and render. The tag stays for
# people; with both, the runtime pulls the digest.
IMAGE = "REGISTRY/granite-transcribe:0.1.0@sha256:" + "0" * 64
# kubectl for the CronJob's creator pod: the Kubernetes project's own image (bitnami/kubectl's versioned
# tags left that registry's free tier). It has bash, grep and date besides kubectl (its entrypoint).
# kubectl 1.34 talks to API servers 1.33-1.35 (kubectl's +-1 minor version skew).
KUBECTL_IMAGE = "registry.k8s.io/kubectl:v1.34.3"
RAY_VERSION = "2.60.0"
RAY_SERVICE_ACCOUNT = "transcribe-ray"
SECRET = "transcribe-s3"
LABELS = {"app": "granite-transcribe"}
SCHEDULE = "0 2 * * *"                     # nightly, 02:00 UTC
SCHEDULE_LABEL = {"granite-transcribe/schedule": "nightly"}

# ---- deadlines (KubeRay: both count from the attempt's start; every retry starts them again) ----
# preRunningDeadlineSeconds: how long an attempt may wait for its cluster (all pods of the initial
# replicas, the H100 worker included, Running) and the job's submission. Past it the attempt fails
# (reason PreRunningDeadlineExceeded), its cluster is deleted and, while backoffLimit allows, a retry asks
# again on a fresh cluster: waiting for GPU capacity no longer holds a cluster for the whole run.
PRE_RUNNING_DEADLINE_S = 3600
# activeDeadlineSeconds: the longest one attempt may take, the wait above included. A run that passes
# it fails with reason DeadlineExceeded and is not retried; KubeRay does not stop its Ray job then, the
# cluster's deletion does (deletion rules below).
NIGHTLY_ATTEMPT_S = 7 * 3600
ARCHIVE_ATTEMPT_S = 24 * 3600
BACKOFF_LIMIT = 2                          # retries: 3 attempts, each on a fresh cluster, each resumes
# deletion rules (deletionStrategy.deletionRules: KubeRay 1.5.0, alpha; the jobDeploymentStatus condition
# is new in 1.6.0, where the RayJobDeletionPolicy gate became beta, on by default). They replace
# shutdownAfterJobFinishes and ttlSecondsAfterFinished, which KubeRay refuses alongside them. TTLs count
# from the job's end.
KEEP_FAILED_CLUSTER_S = 3600               # a failed run's cluster (head logs, dashboard) for debugging
KEEP_SUCCEEDED_RAYJOB_S = 3 * 24 * 3600    # RayJob objects (status, events), then deleted: no pile-up
KEEP_FAILED_RAYJOB_S = 7 * 24 * 3600
# The CronJob's creator pod may start this late (it then skips the night rather than start later).
STARTING_DEADLINE_S = 1800


def _container(name: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    res = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {"name": name, "image": IMAGE,
            "resources": {"requests": dict(res), "limits": dict(res)},
            # optional: pods on IRSA / workload identity (no such secret) still start
            "envFrom": [{"secretRef": {"name": SECRET, "optional": True}}]}


def cluster_spec() -> dict:
    """The RayCluster spec every manifest carries. Left to KubeRay (it sets them itself): the head's
    `dashboard-host: 0.0.0.0` and its container ports (6379 gcs-server, 8265 dashboard, 10001 client,
    8080 metrics, 8000 serve), `num-gpus` (from the container's nvidia.com/gpu limit), `num-cpus` of the
    workers (from their CPU limit), the autoscaler's ServiceAccount Role and RoleBinding (bound to the
    head's ServiceAccount), restartPolicy Never under autoscaler v2."""
    pod = {"serviceAccountName": RAY_SERVICE_ACCOUNT}
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "version": "v2",
            # a CPU worker with nothing to do goes after 5 minutes (the default is 60 s); the GPU group
            # sets its own, longer idle timeout below
            "idleTimeoutSeconds": 300,
            # its own container in the head pod: requests = limits keeps the head pod Guaranteed QoS
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                          "limits": {"cpu": "500m", "memory": "1Gi"}},
        },
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0"},      # the head runs the driver and GCS, no decode work
            "template": {"spec": {**pod, "containers": [_container("ray-head", "4", "16Gi")]}},
        },
        "workerGroupSpecs": [
            {"groupName": "cpu-decode", "replicas": 4, "minReplicas": 0, "maxReplicas": 32,
             "template": {"spec": {**pod, "containers": [_container("ray-worker", "16", "64Gi")]}}},
            {"groupName": "h100", "replicas": 1, "minReplicas": 0, "maxReplicas": 8,
             # autoscaler v2 only (worker group idleTimeoutSeconds): an idle GPU worker stays 20
             # minutes, so a gap between batches does not cost a new node and a model load
             "idleTimeoutSeconds": 1200,
             "template": {"spec": {
                 **pod,
                 "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "containers": [_container("ray-worker", "8", "96Gi", gpus=1)]}}},
        ],
    }


def deletion_rules(keep_succeeded: int = KEEP_SUCCEEDED_RAYJOB_S, keep_failed: int = KEEP_FAILED_RAYJOB_S) -> dict:
    """Delete the cluster as soon as the job succeeds; keep a failed run's cluster an hour; delete the
    RayJob object (and with it anything left) days later. `jobDeploymentStatus: Failed` matches every
    failure: the Ray job failing, a deadline passing, the submission failing. A Ray job stopped by hand
    (`ray job stop`: STOPPED, Complete) matches no rule: delete that RayJob yourself."""
    return {"deletionRules": [
        {"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 0}},
        {"policy": "DeleteSelf", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": keep_succeeded}},
        {"policy": "DeleteCluster", "condition": {"jobDeploymentStatus": "Failed",
                                                  "ttlSeconds": KEEP_FAILED_CLUSTER_S}},
        {"policy": "DeleteSelf", "condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": keep_failed}},
    ]}


def _entrypoint(*extra: str) -> str:
    return " ".join(["python -m pipelines.transcribe --config configs/nar-h100.yaml",
                     "--input s3://archive/calls/ --output s3://transcripts/calls/", *extra])


def job_spec(entrypoint: str, attempt_s: int, runtime_env: str = "working_dir: /home/ray/app\n") -> dict:
    return {
        "entrypoint": entrypoint,
        "runtimeEnvYAML": runtime_env,
        "submissionMode": "K8sJobMode",
        "backoffLimit": BACKOFF_LIMIT,
        "preRunningDeadlineSeconds": PRE_RUNNING_DEADLINE_S,
        "activeDeadlineSeconds": attempt_s,
        "deletionStrategy": deletion_rules(),
        "rayClusterSpec": cluster_spec(),
    }


def nightly_job_spec() -> dict:
    return job_spec(_entrypoint("--schedule-slot @daily"), NIGHTLY_ATTEMPT_S)


def service_account() -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": RAY_SERVICE_ACCOUNT, "labels": dict(LABELS)}}


def raycluster() -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": "transcribe", "labels": dict(LABELS)}, "spec": cluster_spec()}


def archive_rayjob() -> dict:
    spec = job_spec(_entrypoint(), ARCHIVE_ATTEMPT_S,
                    "working_dir: /home/ray/app\nenv_vars:\n  AWS_DEFAULT_REGION: us-east-1\n")
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": "transcribe-archive", "labels": dict(LABELS)}, "spec": spec}


def raycronjob() -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
            "metadata": {"name": "transcribe-nightly", "labels": dict(LABELS)},
            "spec": {"schedule": SCHEDULE, "jobTemplate": nightly_job_spec()}}


# The CronJob's pod runs this (bash, in registry.k8s.io/kubectl). Tonight's RayJob is named after the
# UTC date, so a retried creator pod cannot make a second one; it is not created while the previous
# run is still going: a RayJob of this schedule that has not ended, or a RayCluster of one (a failed run's
# cluster is kept an hour, and a run past its activeDeadlineSeconds still runs until its cluster goes).
# Exit 3: skipped (the Job fails at once, visibly, without retries).
CREATE_SCRIPT = """\
set -euo pipefail
sel='{selector}'
slot="$(date -u +%Y%m%d)"
name="transcribe-nightly-$slot"
if [ -n "$(kubectl get rayjob "$name" --ignore-not-found -o name)" ]; then
  echo "$name exists: tonight's run was created already"
  exit 0
fi
jobs="$(kubectl get rayjobs -l "$sel" \\
  -o jsonpath='{{range .items[*]}}{{.metadata.name}}={{.status.jobDeploymentStatus}}{{"\\n"}}{{end}}')"
going="$(printf '%s\\n' "$jobs" | grep -v -E '^$|=(Complete|Failed)$' || true)"
clusters="$(kubectl get rayclusters -l "$sel" -o name)"
if [ -n "$going$clusters" ]; then
  echo "skipped $slot: the previous run is still going:" $going $clusters
  exit 3
fi
sed "s/__SLOT__/$slot/g" /template/rayjob.yaml | kubectl create -f -
""".format(selector=",".join(f"{k}={v}" for k, v in SCHEDULE_LABEL.items()))


def cronjob_documents() -> list[dict]:
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob",
              "metadata": {"name": "transcribe-nightly-__SLOT__", "labels": {**LABELS, **SCHEDULE_LABEL}},
              "spec": nightly_job_spec()}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "transcribe-scheduler"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "transcribe-scheduler"},
         "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]},
                   {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "transcribe-scheduler"},
         "subjects": [{"kind": "ServiceAccount", "name": "transcribe-scheduler"}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "transcribe-scheduler"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "transcribe-nightly-rayjob"},
         "data": {"rayjob.yaml": _dump(rayjob), "create-rayjob.sh": CREATE_SCRIPT}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "transcribe-nightly"},
         "spec": {
             "schedule": SCHEDULE,
             "timeZone": "Etc/UTC",            # the slot date the script and `@daily` use
             "concurrencyPolicy": "Forbid",    # one creator pod at a time; the script forbids the rest
             "startingDeadlineSeconds": STARTING_DEADLINE_S,
             "successfulJobsHistoryLimit": 3,
             "failedJobsHistoryLimit": 3,
             "jobTemplate": {"spec": {
                 "backoffLimit": 2,
                 "activeDeadlineSeconds": 600,
                 "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                     "containerName": "create-rayjob", "operator": "In", "values": [3]}}]},
                 "template": {"spec": {
                     "serviceAccountName": "transcribe-scheduler",
                     "restartPolicy": "Never",
                     "containers": [{
                         "name": "create-rayjob", "image": KUBECTL_IMAGE,
                         "command": ["/bin/bash", "/template/create-rayjob.sh"],
                         "volumeMounts": [{"name": "template", "mountPath": "/template"}]}],
                     "volumes": [{"name": "template", "configMap": {"name": "transcribe-nightly-rayjob"}}]}}}},
         }},
    ]


GENERATED = "# Generated by infra/kuberay/render.py from one spec: edit that file and run it, not this one.\n"

HEADERS = {
    "serviceaccount.yaml": """\
# The ServiceAccount of every Ray pod here (head and workers). Apply it first: KubeRay binds the
# autoscaler's Role to the head pod's ServiceAccount but does not create one it did not name itself.
# For IRSA (EKS) or workload identity (GKE), annotate it, and the pods need no transcribe-s3 secret:
#   kubectl annotate serviceaccount transcribe-ray eks.amazonaws.com/role-arn=arn:aws:iam::ACCOUNT:role/ROLE
#   kubectl annotate serviceaccount transcribe-ray iam.gke.io/gcp-service-account=NAME@PROJECT.iam.gserviceaccount.com
""",
    "raycluster.yaml": """\
# A long-lived cluster for archive runs: CPU head (driver only), a CPU worker group for decode, an H100
# group with one GPU actor per GPU, autoscaler v2. Submit jobs to it with `ray job submit` (README).
""",
    "rayjob-archive.yaml": """\
# One archive run: KubeRay creates the cluster, submits the job, deletes the cluster when it succeeds
# (a failed run's cluster after an hour) and the RayJob days later. A failed attempt is retried on a
# fresh cluster (backoffLimit) and resumes: ids already written are skipped. Each attempt may wait an
# hour for its cluster (preRunningDeadlineSeconds) and take a day (activeDeadlineSeconds): 3 days at most.
# To run it again after it ended: kubectl replace --force -f rayjob-archive.yaml (same command: resumes).
""",
    "raycronjob.yaml": """\
# Nightly re-transcription with KubeRay's RayCronJob (KubeRay >= 1.6, alpha: start the operator with the
# RayCronJob feature gate, e.g. helm --set featureGates[0].name=RayCronJob,featureGates[0].enabled=true).
# Each night a RayJob creates its own cluster, runs the job and deletes the cluster; a failed attempt is
# retried on a fresh cluster (backoffLimit) with the same `--schedule-slot @daily` run id and continues.
# RayCronJob has no concurrencyPolicy (KubeRay 1.6, 1.7): it creates a RayJob at every tick, whatever
# still runs. So a run is made to end before the next tick: 3 attempts x 7 h (activeDeadlineSeconds,
# the 1 h wait for capacity included) + 1 h a failed cluster is kept = 22 h < 24 h. Its schedule is in the
# operator's time zone (spec.timeZone needs KubeRay 1.7).
""",
    "cronjob-rayjob.yaml": """\
# The same schedule without the RayCronJob gate: a Kubernetes CronJob whose pod creates tonight's RayJob
# (transcribe-nightly-YYYYMMDD, UTC) from the ConfigMap. concurrencyPolicy: Forbid alone would not stop
# an overlap (the pod ends once the RayJob exists), so the pod skips the night (exit 3, the Job fails)
# while a RayJob of this schedule has not ended or a RayCluster of one still exists; the deadlines also
# end every run before the next 02:00 (see raycronjob.yaml). Retries continue a killed run as there.
""",
}


def documents() -> dict[str, list[dict]]:
    return {"serviceaccount.yaml": [service_account()], "raycluster.yaml": [raycluster()],
            "rayjob-archive.yaml": [archive_rayjob()], "raycronjob.yaml": [raycronjob()],
            "cronjob-rayjob.yaml": cronjob_documents()}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, text: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _str)


def _dump(doc: dict) -> str:
    return yaml.dump(copy.deepcopy(doc), Dumper=_Dumper, sort_keys=False, width=200, default_flow_style=False)


def render() -> dict[str, str]:
    return {name: GENERATED + HEADERS[name] + "---\n".join(_dump(d) for d in docs)
            for name, docs in documents().items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    args = p.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"out of date (run python infra/kuberay/render.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote infra/kuberay/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
