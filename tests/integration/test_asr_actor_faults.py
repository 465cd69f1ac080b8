"""A sticky device error inside an ASR actor on the real local Ray cluster: the stage ends the actor
process, Ray Data starts a fresh actor and retries the batches it had, and the job finishes with every
input id exactly once, all ok. The test backend is a plugin (`module:Class`), imported by the workers
from this file."""

from __future__ import annotations

import os
import time

import pytest

from operators.asr.base import Transcript
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = pytest.mark.integration

BACKEND = f"{__name__}:StickyOnce"


class StickyOnce:
    """Transcribes every clip as `pid<its process id>`; the first actor to make its second model call
    while no marker file exists creates the marker (with its pid) and raises the CUDA runtime's
    illegal-memory-access error, once across all processes. asr.model.options.marker: the file."""

    name, max_clip_s = "sticky-once", 240.0

    def __init__(self, cfg):
        self.marker = cfg.options["marker"]
        self.model_id, self.revision = self.identity(cfg)
        self.calls = 0

    @staticmethod
    def identity(cfg):
        return "sticky-once", "1"

    def transcribe(self, audios, languages):
        self.calls += 1
        if self.calls >= 2:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel "
                                   "errors might be asynchronously reported at some other API call")
        time.sleep(0.02)
        return [Transcript(text=f"pid{os.getpid()}") for _ in audios]


def test_a_sticky_device_error_replaces_the_actor_and_the_job_finishes(s3, ray_cluster, prefix, tmp_path):
    from pipelines.transcribe import run

    rows = [{"audio_id": e["audio_id"], "uri": e["uri"]} for e in corpus(12)]
    for e in corpus(12):
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))
    marker = tmp_path / "faulted.pid"
    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", f"asr.backend={BACKEND}",
                     f"asr.model.options.marker={marker}", "asr.num_cpus=0.5", "asr.concurrent_batches=1",
                     "asr.files_per_batch=2", "decode.batch_size=2", "write.rows_per_file=4", "segment.vad=none")
    t0 = time.time()
    summary = run(cfg)
    took = time.time() - t0

    assert marker.exists(), "the fault never happened"
    dead = int(marker.read_text())
    out = read_output(s3, f"{prefix}/out")
    assert sorted(r["audio_id"] for r in out) == sorted(r["audio_id"] for r in rows), "ids missing or duplicated"
    assert all(r["status"] == "ok" for r in out), [(r["audio_id"], r["error"]) for r in out if r["status"] != "ok"]
    served = {int(r["text"].removeprefix("pid")) for r in out}
    assert served - {dead}, "no row was served by a fresh actor"
    assert dead in served, "the faulting actor served nothing before the fault (the fault was not mid-run)"
    actors = summary["asr_actors"]                       # node/host:pid of each actor that wrote rows
    assert len(actors) >= 2 and any(a.endswith(f":{dead}") for a in actors), actors
    assert summary["ok"] == len(rows)
    print(f"sticky device error: actor pid {dead} replaced by {sorted(served - {dead})}; job {took:.1f} s")


class AlwaysFails:
    """Every call raises the same error, whatever the clips (a kernel missing from the image)."""

    name, max_clip_s = "always-fails", 240.0

    def __init__(self, cfg):
        self.model_id, self.revision = self.identity(cfg)

    @staticmethod
    def identity(cfg):
        return "always-fails", "1"

    def transcribe(self, audios, languages):
        raise ValueError("no kernel image is available for execution on the device")


def test_a_backend_failing_every_clip_alike_ends_the_job_in_one_line(s3, ray_cluster, prefix):
    from pipelines.transcribe import JobFailed, run

    entries = corpus(4)
    for e in entries:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl([{"audio_id": e["audio_id"], "uri": e["uri"]} for e in entries]))
    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", f"asr.backend={__name__}:AlwaysFails",
                     "asr.num_cpus=0.5", "asr.files_per_batch=4", "decode.batch_size=4", "segment.vad=none")
    with pytest.raises(JobFailed) as info:
        run(cfg)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("the always-fails backend failed on every clip of a batch of "), message
    assert message.endswith("ValueError: no kernel image is available for execution on the device"), message
    assert read_output(s3, f"{prefix}/out") == []          # no error rows claimed done
