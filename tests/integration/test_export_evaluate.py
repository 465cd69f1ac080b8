"""Labeling exports and evaluation over a real job's output on the S3 server and local Ray."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from operators.labeling.filters import FilterRules
from pipelines.evaluate import run_evaluate
from pipelines.export import run_export
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put
from tests.unit import audio_fixtures as af

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def transcribed(s3, ray_cluster):
    """A job over 6 speech clips (two 'datasets' by id prefix), a tar shard of 2 more, one bad file."""
    prefix = "s3://itest/export-eval"
    items = corpus(8)
    rows = []
    for i, e in enumerate(items[:6]):
        put(s3, f"{prefix}/in/{e['uri']}", clip_bytes(e))
        rows.append({"audio_id": f"{'setA' if i < 3 else 'setB'}/{e['uri']}", "uri": e["uri"],
                     "text": e["text"], "language": "en"})
    put(s3, f"{prefix}/in/bad.wav", af.text_as_wav())
    rows.append({"audio_id": "setB/bad.wav", "uri": "bad.wav", "text": "never heard"})
    put(s3, f"{prefix}/in/manifest.jsonl", jsonl(rows))
    result = run(job_config(f"{prefix}/in/manifest.jsonl", f"{prefix}/out", "output.overwrite=true"))
    return prefix, result


def test_exports_each_format_with_filter_counts(s3, transcribed):
    prefix, result = transcribed
    fs = s3.filesystem()
    rules = FilterRules(max_duration_s=3.3)  # drops the longer clips by duration
    expected_kept = sum(1 for e in corpus(6) if e["duration"] <= 3.3)

    nemo = run_export(result["output"], "nemo", f"{prefix}/nemo", rules)
    assert nemo["kept"] == expected_kept
    assert nemo["dropped"] == {"error": 1, "duration": 6 - expected_kept}
    lines = [json.loads(line) for p in fs.find(f"{prefix.removeprefix('s3://')}/nemo")
             if p.endswith(".jsonl") for line in fs.cat(p).decode().splitlines()]
    assert len(lines) == expected_kept
    assert all(set(l) >= {"audio_filepath", "duration", "text"} and l["duration"] <= 3.3 for l in lines)
    assert all(fs.exists(l["audio_filepath"].removeprefix("s3://")) for l in lines)

    hf = run_export(result["output"], "hf", f"{prefix}/hf", FilterRules())
    assert hf["kept"] == 6 and hf["dropped"] == {"error": 1}
    [part] = [p for p in fs.find(f"{prefix.removeprefix('s3://')}/hf") if p.endswith(".parquet")]
    table = pq.read_table(io.BytesIO(fs.cat(part)))
    audio, sr = sf.read(io.BytesIO(table["audio"][0].as_py()["bytes"]))
    assert sr == 16000 and len(audio) > 16000 and table["text"][0].as_py()

    wds = run_export(result["output"], "wds", f"{prefix}/wds", FilterRules(), rows_per_file=4)
    assert wds["kept"] == 6 and wds["files_written"] == 2
    names = []
    for p in fs.find(f"{prefix.removeprefix('s3://')}/wds"):
        if p.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(fs.cat(p))) as tar:
                names += tar.getnames()
    assert len([n for n in names if n.endswith(".flac")]) == 6
    assert len([n for n in names if n.endswith(".txt")]) == 6


def test_evaluate_table_and_plots(s3, transcribed, tmp_path):
    prefix, result = transcribed
    r = run_evaluate(f"{prefix}/out", str(tmp_path / "report"))
    [(system, m)] = r["metrics"].items()
    assert system.startswith("whisper:")
    assert m["setA|en"]["files"] == 3 and m["setB|en"]["files"] == 3  # the error row is not scored
    assert 0 <= m["ALL|*"]["wer"] <= 0.3 and 0 <= m["ALL|*"]["cer"] <= m["ALL|*"]["wer"] + 0.05
    assert "setA en" in r["table"] and "RTFx" in r["table"]
    pngs = sorted(p.name.split("_")[0] for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["duration", "throughput", "wer"]
    assert all(p.stat().st_size > 5000 for p in (tmp_path / "report").glob("*.png"))


def _version(tmp_path, name: str, rows: list[dict]) -> str:
    import pyarrow as pa

    from operators.schema import OUTPUT_SCHEMA
    from operators.output.write import write_table

    full = [{"audio_id": r[0], "text": r[1], "status": r[2], "language": "en", "model": "m",
             "model_revision": name, "backend": "b"} for r in rows]
    d = tmp_path / name
    write_table(pa.Table.from_pylist(full[:2], schema=OUTPUT_SCHEMA), str(d / "part-a.parquet"))
    write_table(pa.Table.from_pylist(full[2:], schema=OUTPUT_SCHEMA), str(d / "part-b.parquet"))
    return str(d)


def test_revision_diff(ray_cluster, tmp_path):
    from pipelines.revdiff import run_diff

    old = _version(tmp_path, "r1", [("a", "the cat sat on the mat", "ok"), ("b", "hello world", "ok"),
                                    ("c", None, "error"), ("d", "the quick brown fox", "ok"),
                                    ("gone", "x", "ok")])
    new = _version(tmp_path, "r2", [("a", "The cat sat on the mat.", "ok"),  # same after normalising
                                    ("b", "hello there world", "ok"), ("c", "recovered text", "ok"),
                                    ("d", "the quick crown", "ok"), ("new", "y", "ok")])
    r = run_diff(old, new, top=2)
    assert (r["rows_in_both"], r["only_in_old"], r["only_in_new"]) == (4, 1, 1)
    assert r["rows_changed"] == 3 and r["recovered_from_error"] == 1 and r["became_error"] == 0
    # b: 1 insertion / 2 words; d: 1 sub + 1 del / 4 words; c: no old text -> no reference words
    assert r["wer_new_vs_old"] == pytest.approx(3 / 6)
    # ranked by WER, ties by word errors: c (all new), then d (2 errors) before b (1 error)
    assert [m["audio_id"] for m in r["most_changed"]] == ["c", "d"]
