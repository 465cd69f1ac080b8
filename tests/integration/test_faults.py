"""The job through the faults storage has: a fault-injecting front (tests/fault_proxy.py) before the
real S3 server, and the server itself killed and started again. Each test ends with every input id
exactly once in the output and every good file `ok`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from pipelines.local_s3 import READ_ONLY_KEY, READ_ONLY_SECRET
from pipelines.transcribe import JobFailed, run
from tests.fault_proxy import FaultProxy
from tests.integration.conftest import ROOT, job_config, read_output, upload_corpus

pytestmark = pytest.mark.integration


def _exactly_once_all_ok(s3, out_uri: str, ids: list[str]) -> list[dict]:
    out = read_output(s3, out_uri)
    got = [r["audio_id"] for r in out]
    assert sorted(got) == sorted(ids), "ids missing or duplicated"
    bad = [(r["audio_id"], r["error"]) for r in out if r["status"] != "ok"]
    assert not bad, bad
    return out


def _cfg(prefix, *overrides, **fields):
    return job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "asr.backend=simulated",
                      "asr.num_cpus=0.5", *overrides, **fields)


def test_thirty_percent_of_gets_answered_503_slowdown(s3, ray_cluster, prefix):
    ids = upload_corpus(s3, prefix, copies=3)                       # 60 files
    with FaultProxy(s3.endpoint, seed=1) as proxy:
        proxy.add("slowdown", fraction=0.3, methods=("GET", "HEAD"))
        result = run(_cfg(prefix, f"input.storage_options.endpoint_url={proxy.endpoint}",
                          "retry.base_delay_s=0.1"))
        assert proxy.counts["slowdown"] > 20                  # the faults really hit the job
    _exactly_once_all_ok(s3, result["output"], ids)
    assert result["ok"] == len(ids) and result["errors"] == 0
    print(f"30% SlowDown: {dict(proxy.counts)}, job {result['wall_seconds']:.1f} s, retries {result['retries']}")


def test_s3_server_down_for_20_s_mid_run(s3, ray_cluster, prefix):
    """SIGKILL the S3 server once the first files are written, start it again 20 s later (same data
    and ports; it takes ~15 s more to answer): fetches and writes wait it out, the job finishes."""
    ids = upload_corpus(s3, prefix)
    events: dict = {}

    def outage():
        fs = s3.filesystem()
        root = f"{prefix}/out".removeprefix("s3://")
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if any(p.endswith(".parquet") for p in fs.find(root)):
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.2)
        events["down"] = time.time()
        s3.kill()
        time.sleep(20)
        events["restart"] = time.time()   # the server answers from some point inside start()
        s3.start()
        events["up"] = time.time()

    t = threading.Thread(target=outage)
    t.start()
    try:
        result = run(_cfg(prefix, "asr.model.options.rtfx=4", "asr.files_per_batch=2", "decode.batch_size=2",
                          "write.rows_per_file=2"))
        ended = time.time()
    finally:
        t.join()
    assert "down" in events and "up" in events, "the outage must land mid-run"
    _exactly_once_all_ok(s3, result["output"], ids)
    # the job waited the outage out: it ended after the server was started again (on a loaded box the
    # model may have heard every file before the first write landed, so only the writes were left to
    # wait). Not after start() returns: the job's retries can land before start()'s own readiness poll
    # sees the server (CI once ended the job 0.09 s before it).
    assert ended > events["restart"] >= events["down"] + 20
    assert result["retries"]["fetch"] + result["retries"]["write"] > 0
    print(f"S3 down {events['up'] - events['down']:.1f} s (20 s stopped + restart); job ended "
          f"{result['wall_seconds'] - (events['up'] - events['down']):.1f} s of its {result['wall_seconds']:.1f} s "
          f"outside the outage; retries {result['retries']}")


def test_output_refusing_writes_fails_in_one_line_then_a_rerun_completes(s3, ray_cluster, prefix):
    ids = upload_corpus(s3, prefix)
    read_only = {"key": READ_ONLY_KEY, "secret": READ_ONLY_SECRET}
    bad = _cfg(prefix, **{"output.storage_options": read_only})
    with pytest.raises(JobFailed) as info:
        run(bad)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot write s3://") and "PermissionError" in message
    assert READ_ONLY_SECRET not in message
    assert read_output(s3, f"{prefix}/out") == []                  # nothing half-written claimed done
    result = run(_cfg(prefix))                                      # the fix: credentials that may write
    _exactly_once_all_ok(s3, result["output"], ids)


def test_wrong_credentials_exit_2_before_ray_naming_their_source(s3, prefix):
    upload_corpus(s3, prefix)
    secret = "wrong-secret-do-not-print-4242"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "WRONGKEY9876", "AWS_SECRET_ACCESS_KEY": secret}
    r = subprocess.run([sys.executable, "-m", "pipelines.transcribe", "--config", "configs/demo.yaml",
                        "--input", f"{prefix}/in/manifest.jsonl", "--output", f"{prefix}/out",
                        "--backend", "simulated"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "access denied" in errors[0], out
    assert "the environment (AWS_ACCESS_KEY_ID ...9876)" in errors[0]
    assert secret not in out and "Traceback" not in out and "Ray instance" not in out


def test_transient_rows_are_retried_by_a_plain_rerun(s3, ray_cluster, prefix):
    """Every GET refused past a tiny retry budget: rows become `transient` errors, not done; once
    the storage is back, the same command transcribes them, each id still once."""
    ids = upload_corpus(s3, prefix)
    with FaultProxy(s3.endpoint) as proxy:
        proxy.add("refuse", methods=("GET", "HEAD"), paths=(".flac",))
        first = run(_cfg(prefix, f"input.storage_options.endpoint_url={proxy.endpoint}",
                         "retry.attempts=2", "retry.base_delay_s=0.01", "retry.budget_s=1"))
    assert first["errors_by_kind"] == {"transient": len(ids)}
    again = run(_cfg(prefix))
    assert again["skipped_already_done"] == 0 and again["transient_rows_to_retry"] == len(ids)
    _exactly_once_all_ok(s3, again["output"], ids)
