"""The decode actor pool grows to what the cluster's CPUs hold, on a real local Ray cluster (2 CPUs).

decode_placement lets the pool autoscale from decode.min_actors up to the CPUs left after the ASR actors;
Ray Data's resource allocator decides whether it may. With an uncapped write stage the allocator handed
the write operator (the most downstream, with no upper bound) every CPU the others left, the decode
pool's budget stayed under a second actor, and one of the two cores sat ~40 % idle through the whole
job (benchmarks/RESULTS.md, issue 19: 1176 audio-s per s with one decode actor, 1669 with two).
write.max_tasks bounds the write stage, so the leftover reaches decode."""

from __future__ import annotations

import pytest

from pipelines.transcribe import run
from tests.integration.conftest import job_config, read_output, upload_corpus

pytestmark = pytest.mark.integration


def _decode_actors_created() -> int:
    """Decode actors this cluster has started, dead ones included. From the GCS's actor table: the
    public ray.util.state API needs the dashboard, which the test cluster does not run."""
    from ray._private import state

    return sum("MapBatches(Decoder)" in a["ActorClassName"] for a in state.actors().values())


def test_the_decode_pool_grows_to_the_cores_left_after_the_asr_actor(s3, ray_cluster, prefix):
    ids = upload_corpus(s3, prefix, copies=4)           # 80 files, 20 decode calls of 4
    before = _decode_actors_created()
    # the capacity benchmark's sizes: two decode actors (0.75 CPU each) fit beside the ASR actor (0.25)
    # and write tasks (0.1) on 2 CPUs; decode_placement's limit is 2
    result = run(job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "asr.backend=simulated",
                            "decode.num_cpus=0.75", "decode.batch_size=4", "asr.num_cpus=0.25",
                            "write.num_cpus=0.1", "write.rows_per_file=0"))
    created = _decode_actors_created() - before
    out = read_output(s3, result["output"])
    assert sorted(r["audio_id"] for r in out) == sorted(ids)
    assert result["ok"] == len(ids)
    assert created == 2, f"{created} decode actor(s) started for 20 decode calls on 2 CPUs"
