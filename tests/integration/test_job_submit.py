"""`ray job submit`, as the README documents it, against a real head started with `ray start --head`
on 127.0.0.1 (dashboard and job server included; Ray 2.60's token authentication on): the job reads
from and writes to the real S3 server. Without the token the submission is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, clip_bytes, corpus, jsonl, put, read_output

pytestmark = pytest.mark.integration
VENV_BIN = str(Path(sys.executable).parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(s3):
    # every port its own: the session's other local cluster already holds Ray's default agent ports
    gcs, dash, agent, agent_grpc, runtime_env, metrics = (_free_port() for _ in range(6))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([f"{VENV_BIN}/ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                             "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
                             f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
                             f"--metrics-export-port={metrics}", "--block"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dash), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the head's job server did not come up")
    yield f"http://127.0.0.1:{dash}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _submit(address: str, auth: bool, *job: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "token" if auth else "disabled"
    runtime_env = {"env_vars": {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                           "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
    deadline = time.time() + 120
    while True:  # the job server answers before its agent is up: "No available agent ... try again later"
        r = subprocess.run([f"{VENV_BIN}/ray", "job", "submit", "--address", address, "--working-dir", ".",
                            "--runtime-env-json", json.dumps(runtime_env), "--", *job],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in r.stdout + r.stderr or time.time() > deadline:
            return r
        time.sleep(3)


def test_documented_submit_with_token_auth(head, s3, prefix):
    rows = []
    for e in corpus(6):
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"]})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))
    job = ["python", "-m", "pipelines.transcribe", "--config", "configs/demo.yaml", "--input",
           f"{prefix}/in/manifest.jsonl", "--output", f"{prefix}/out", "--set", "ray.progress_bars=false"]

    refused = _submit(head, False, *job)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()

    r = _submit(head, True, *job)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "succeeded" in r.stdout + r.stderr
    out = read_output(s3, f"{prefix}/out")
    assert sorted(x["audio_id"] for x in out) == sorted(x["audio_id"] for x in rows)
    assert all(x["status"] == "ok" and x["text"] for x in out)     # the real (whisper) demo model
