"""granite-plus end to end on the local Ray cluster and the S3 server: a tiny random Plus checkpoint
(tag soup from random weights), per-row tasks from the manifest (timestamps, speakers, transcribe, and
a translate row the backend cannot do), a long file cut into several segments; then the subtitle,
RTTM and NeMo exports from transcripts carrying word times. Random weights: structure is asserted,
not words."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from operators.labeling.filters import FilterRules
from pipelines.export import run_export
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = pytest.mark.integration

pytest.importorskip("torch")
pytest.importorskip("transformers")

SMALL = ["asr.model.options.transcribe_tokens_per_60s=60", "asr.model.options.speakers_tokens_per_60s=60",
         "asr.model.options.timestamps_tokens_per_60s=90"]


@pytest.fixture(scope="module")
def tiny_plus(tmp_path_factory):
    from operators.asr.granite_plus import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("granite-plus-job"))


def _long_flac(items: list[dict]) -> bytes:
    from pipelines import demo_corpus

    audio = np.concatenate([np.concatenate([demo_corpus.load(e), np.zeros(8000, np.float32)]) for e in items])
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC")
    return buf.getvalue()


def test_granite_plus_job_writes_words_speakers_and_raw_text(s3, ray_cluster, prefix, tiny_plus):
    items = corpus(4)
    rows = []
    for e in items:
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "language": "en"})
    put(s3, f"{prefix}/in/long.flac", _long_flac(corpus(8)))
    rows.append({"audio_id": "long", "uri": "long.flac", "language": "en", "task": "speakers"})
    rows[1]["task"] = "speakers"
    rows[2]["task"] = "transcribe"
    rows[3].update(task="translate", target_language="de")   # granite-plus cannot: an error row
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))

    cfg = job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "asr.backend=granite-plus",
                     f"asr.model.id={tiny_plus}", "asr.model.device=cpu", "asr.task=timestamps",
                     "asr.batch_size=4", "asr.num_cpus=0.5", "segment.max_segment_s=6", *SMALL)
    result = run(cfg)
    assert result["files"] == len(rows) and result["ok"] == len(rows) - 1, result

    out = read_output(s3, result["output"])
    assert sorted(r["audio_id"] for r in out) == sorted(r["audio_id"] for r in rows)  # each id once
    by_id = {r["audio_id"]: r for r in out}
    bad = by_id[items[3]["audio_id"]]
    assert bad["status"] == "error" and bad["error"].startswith("task:") and "translate" in bad["error"]
    for row in rows:
        if row is rows[3]:
            continue
        r = by_id[row["audio_id"]]
        task = row.get("task") or "timestamps"
        assert r["status"] == "ok" and r["backend"] == "granite-plus" and r["task"] == task, r["error"]
        segs = r["segments"]
        assert len(r["raw_text"]) == len(segs) and all(isinstance(x, str) for x in r["raw_text"])
        assert "[T:" not in r["text"] and "[Speaker" not in r["text"]
        assert isinstance(r["tags_suspect"], bool)
        if task == "transcribe":
            assert r["words"] is None and r["speakers"] is None
            continue
        assert len(r["speakers"]) == len(segs)
        prev = 0.0
        for w in r["words"]:
            if task == "timestamps" and w["end_s"] is not None:
                assert prev - 1e-6 <= w["end_s"] and any(
                    s["start_s"] - 1e-6 <= w["start_s"] <= w["end_s"] <= s["end_s"] + 1e-6 for s in segs)
                prev = w["end_s"]
            if task == "speakers":
                assert w["start_s"] is None and w["end_s"] is None
        if task == "speakers":  # labels per segment, listed per segment
            for j, labels in enumerate(r["speakers"]):
                assert all(lab.startswith(f"seg{j + 1}-spk") for lab in labels)
    assert len(by_id["long"]["segments"]) >= 2  # not vacuous: stitched across segments

    import pyarrow.parquet as pq

    from operators.schema import SCHEMA_VERSION, WORD_TYPE

    fs = s3.filesystem()
    part = next(p for p in fs.find(result["output"].removeprefix("s3://")) if p.endswith(".parquet"))
    with fs.open(part, "rb") as f:
        schema = pq.read_schema(f)
    assert schema.metadata[b"granite_transcribe.schema_version"] == SCHEMA_VERSION.encode() == b"5"
    assert schema.field("words").type.value_type == WORD_TYPE


def _tagged_rows():
    """v4 rows as the stage builds them (operators.asr.words.attach over parsed Plus output)."""
    from types import SimpleNamespace

    from operators.asr.words import attach, parse

    def res(raw, dur):
        p = parse(raw, dur)
        return SimpleNamespace(raw_text=raw, tags_suspect=p.suspect, words=p.word_dicts())

    base = {"source_version": None, "language": "en", "target_language": None, "translation": None,
            "reference": None, "model": "m", "model_revision": "r", "backend": "granite-plus", "status": "ok",
            "error": None, "ctc_text": None, "agreement": None, "loop_suspected": False}
    out = []
    specs = [
        ("ts-a", "timestamps", [(0.0, 6.0, "hello [T:45] world [T:82] _ [T:300] again [T:350]"),
                                (6.0, 12.0, "good [T:40] morning [T:95]")]),
        ("ts-bad", "timestamps", [(0.0, 6.0, "x [T:50] y [T:40] z [T:45]")]),          # decreasing: flagged
        ("spk", "speakers", [(0.0, 5.0, "[Speaker 1]: yes we can [Speaker 2]: no"),
                             (5.0, 9.0, "[Speaker 1]: okay then")]),
    ]
    for audio_id, task, segs in specs:
        rec = {**base, "audio_id": audio_id, "source_uri": f"s3://x/{audio_id}.wav", "duration_s": segs[-1][1],
               "task": task, "segments": [{"start_s": a, "end_s": b, "text": None, "translation": None}
                                          for a, b, _ in segs]}
        results = [res(raw, b - a) for a, b, raw in segs]
        for seg, r in zip(rec["segments"], results):
            seg["text"] = " ".join(w["word"] for w in r.words if w["word"] != "_")
        rec["text"] = " ".join(s["text"] for s in rec["segments"])
        attach(rec, results)
        out.append(rec)
    return out


def test_subtitle_rttm_and_nemo_exports(s3, ray_cluster, prefix):
    import pyarrow as pa

    from operators.schema import OUTPUT_SCHEMA
    from operators.output.write import part_name, write_table

    import pyarrow.parquet as pq

    rows = _tagged_rows()
    src = f"{prefix}/transcripts"
    write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), f"{src}/{part_name([r['audio_id'] for r in rows])}")
    fs = s3.filesystem()
    # a file written before schema 4 (no raw_text / words / speakers / tags_suspect) in the same directory
    old = {**rows[0], "audio_id": "v3-row", "text": "an older transcript", "segments": rows[0]["segments"][:1]}
    v3 = pa.Table.from_pylist([old], schema=OUTPUT_SCHEMA).drop_columns(
        ["raw_text", "words", "speakers", "tags_suspect"]).replace_schema_metadata(
        {b"granite_transcribe.schema_version": b"3"})
    with fs.open(f"{src}/{part_name(['v3-row'])}".removeprefix("s3://"), "wb") as f:
        pq.write_table(v3, f)

    def read(uri):
        return fs.cat(uri.removeprefix("s3://")).decode()

    srt = run_export(src, "srt", f"{prefix}/srt", FilterRules())
    assert srt["kept"] == 1 and srt["dropped"] == {"tags": 1, "no_word_times": 2}
    text = read(f"{prefix}/srt/ts-a.srt")
    assert text.startswith("1\n00:00:00,000 --> 00:00:00,820\nhello world\n")
    assert "00:00:06,000 --> 00:00:06,950\ngood morning" in text   # second segment: file time
    vtt = run_export(src, "vtt", f"{prefix}/vtt", FilterRules(drop_tags_suspect=False))
    assert vtt["kept"] == 2   # the flagged row kept on request; its times were clamped monotonic
    assert read(f"{prefix}/vtt/ts-a.vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.820\nhello world")

    rttm = run_export(src, "rttm", f"{prefix}/rttm", FilterRules())
    assert rttm["kept"] == 1 and rttm["files_written"] == 1 and rttm["dropped"]["no_speakers"] == 2
    [path] = [p for p in fs.find(f"{prefix}/rttm".removeprefix("s3://")) if p.endswith(".rttm")]
    lines = [ln.split() for ln in fs.cat(path).decode().splitlines()]
    assert [ln[7] for ln in lines] == ["seg1-spk1", "seg1-spk2", "seg2-spk1"]
    assert float(lines[0][3]) == 0.0 and float(lines[2][3]) == 5.0
    assert abs(float(lines[1][3]) + float(lines[1][4]) - 5.0) < 1e-3   # turns tile each segment

    nemo = run_export(src, "nemo", f"{prefix}/nemo", FilterRules())
    assert nemo["kept"] == 3
    manifest = {}
    for path in [p for p in fs.find(f"{prefix}/nemo".removeprefix("s3://")) if p.endswith(".jsonl")]:
        manifest.update({json.loads(ln)["audio_id"]: json.loads(ln) for ln in fs.cat(path).decode().splitlines()})
    assert "words" not in manifest["v3-row"] and manifest["v3-row"]["text"] == "an older transcript"
    assert [(w["word"], w["start"], w["end"]) for w in manifest["ts-a"]["words"]][-1] == ("morning", 6.4, 6.95)
    assert {w["speaker"] for w in manifest["spk"]["words"]} == {"seg1-spk1", "seg1-spk2", "seg2-spk1"}
