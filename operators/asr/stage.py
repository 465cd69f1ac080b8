"""The ASR operator: a callable class for a Ray Data actor pool, wrapping any ASRBackend.

It receives a batch of decoded files, cuts their planned segments, sorts all segments by length and
runs them through the backend in sub-batches (cross-file batching), then stitches text back per file.
One output row per input row, in order. A failing sub-batch is retried clip by clip so only the
clips that really fail become error rows.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from operators.asr import load_backend
from operators.config import JobConfig
from operators.decode import from_pcm16
from operators.schema import ERROR, OK, OUTPUT_SCHEMA, error_text
from operators.segment import stitch

log = logging.getLogger(__name__)

NO_SPACE_LANGUAGES = {"ja", "zh", "th", "lo", "my", "km"}


class ASRStage:
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.backend = load_backend(cfg.asr.backend, cfg.asr.model)
        self.batch_size = cfg.asr.batch_size
        self.default_language = cfg.asr.model.language

    def _run(self, clips: list[np.ndarray], langs: list[str | None]) -> list:
        """Transcripts or exceptions, one per clip; a failed batch is retried one by one."""
        try:
            return list(self.backend.transcribe(clips, langs))
        except Exception as batch_error:  # noqa: BLE001
            if len(clips) == 1:
                return [batch_error]
            log.warning("batch of %d clips failed (%s); retrying one by one", len(clips), batch_error)
            return [self._run([c], [l])[0] for c, l in zip(clips, langs)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        clips: list[tuple[int, int, np.ndarray]] = []
        for i, r in enumerate(rows):
            if r["status"] != OK:
                continue
            audio = from_pcm16(r["pcm16"])
            for j, (s, e) in enumerate(zip(r["seg_start"], r["seg_end"])):
                clips.append((i, j, audio[s:e]))
        order = sorted(range(len(clips)), key=lambda k: len(clips[k][2]))
        results: list = [None] * len(clips)
        for at in range(0, len(order), self.batch_size):
            chunk = order[at:at + self.batch_size]
            langs = [rows[clips[k][0]]["language"] or self.default_language for k in chunk]
            for k, res in zip(chunk, self._run([clips[k][2] for k in chunk], langs)):
                results[k] = res
        per_row: dict[int, list] = {}
        for (i, j, _), res in zip(clips, results):
            per_row.setdefault(i, []).append(res)

        now = datetime.now(timezone.utc)
        out = []
        for i, r in enumerate(rows):
            lang = r["language"] or self.default_language
            rec = {
                "audio_id": r["audio_id"], "source_uri": r["source_uri"], "duration_s": r["duration_s"],
                "language": lang, "text": None, "segments": None, "reference": r["reference"],
                "model": self.backend.model_id, "model_revision": self.backend.revision,
                "backend": self.backend.name, "status": r["status"], "error": r["error"],
                "ctc_text": None, "agreement": None, "processed_at": now,
            }
            if r["status"] == OK:
                res = per_row.get(i, [])
                failed = [x for x in res if isinstance(x, Exception)]
                if failed:
                    rec.update(status=ERROR, error=error_text("asr", f"{type(failed[0]).__name__}: {failed[0]}"))
                else:
                    joiner = "" if (lang or "").split("-")[0] in NO_SPACE_LANGUAGES else " "
                    rec["text"], rec["segments"] = stitch([x.text for x in res], r["seg_start"],
                                                          r["seg_end"], joiner)
                    ctc = [x.ctc_text for x in res if x.ctc_text is not None]
                    if ctc:
                        rec["ctc_text"] = joiner.join(t for t in ctc if t)
                    scores = [(x.agreement, e - s) for x, s, e in zip(res, r["seg_start"], r["seg_end"])
                              if x.agreement is not None]
                    if scores:  # duration-weighted over segments
                        total = sum(w for _, w in scores) or 1
                        rec["agreement"] = float(sum(a * w for a, w in scores) / total)
            out.append(rec)
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)
