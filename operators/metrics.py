"""Job metrics through ray.util.metrics (exported by each node's metrics agent to Prometheus and the
Ray dashboard's Metrics view). Names are prefixed `transcribe_`; every metric carries the `job` tag.

- transcribe_audio_seconds_total      counter   audio seconds written (ok rows)
- transcribe_rows_total{status}       counter   rows written, by status (ok / error)
- transcribe_asr_batch_seconds        histogram model call latency per sub-batch
- transcribe_asr_batch_fill           histogram segments per model call / asr.batch_size
- transcribe_asr_segment_seconds_total counter  audio seconds sent to the model
- transcribe_asr_oom_total            counter   device out-of-memory errors caught by the ASR stage

Outside a Ray worker (unit tests, plain scripts) recording is a no-op.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
_FILL_BOUNDARIES = [0.125, 0.25, 0.5, 0.75, 0.9, 1.0]


class JobMetrics:
    def __init__(self, job: str):
        self.job = job
        self._m = None
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return
            tags = ("job",)
            self._m = {
                "audio": metrics.Counter("transcribe_audio_seconds_total",
                                         "Audio seconds transcribed (ok rows written).", tag_keys=tags),
                "rows": metrics.Counter("transcribe_rows_total", "Rows written, by status.",
                                        tag_keys=("job", "status")),
                "latency": metrics.Histogram("transcribe_asr_batch_seconds", "Model call latency per "
                                             "sub-batch.", boundaries=_LATENCY_BOUNDARIES, tag_keys=tags),
                "fill": metrics.Histogram("transcribe_asr_batch_fill", "Segments per model call divided "
                                          "by asr.batch_size.", boundaries=_FILL_BOUNDARIES, tag_keys=tags),
                "segment_audio": metrics.Counter("transcribe_asr_segment_seconds_total",
                                                 "Audio seconds sent to the model.", tag_keys=tags),
                "oom": metrics.Counter("transcribe_asr_oom_total", "Device out-of-memory errors caught "
                                       "by the ASR stage (the batch was run in halves).", tag_keys=tags),
            }
        except Exception as e:  # noqa: BLE001 - metrics must never fail a job
            log.debug("metrics disabled: %s", e)
            self._m = None

    @property
    def enabled(self) -> bool:
        """True inside a Ray worker, where values are recorded."""
        return self._m is not None

    def _tags(self, **extra) -> dict:
        return {"job": self.job, **extra}

    def model_call(self, seconds: float, clips: int, batch_size: int, audio_s: float) -> None:
        if self._m:
            self._m["latency"].observe(seconds, tags=self._tags())
            self._m["fill"].observe(clips / max(1, batch_size), tags=self._tags())
            self._m["segment_audio"].inc(audio_s, tags=self._tags())

    def out_of_memory(self) -> None:
        if self._m:
            self._m["oom"].inc(1, tags=self._tags())

    def written(self, ok: int, errors: int, audio_s: float) -> None:
        if self._m:
            if ok:
                self._m["rows"].inc(ok, tags=self._tags(status="ok"))
            if errors:
                self._m["rows"].inc(errors, tags=self._tags(status="error"))
            if audio_s:
                self._m["audio"].inc(audio_s, tags=self._tags())
