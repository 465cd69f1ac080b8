"""Each of the four input forms, from a real S3 server, through the job on a local Ray cluster."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from operators.output.report import wer
from pipelines.transcribe import run
from tests.integration.conftest import clip_bytes, corpus, job_config, jsonl, put, read_output

pytestmark = pytest.mark.integration


def _check(rows: list[dict], expected: dict[str, str]) -> None:
    """Every expected id exactly once, ok, with a transcript close to its reference."""
    ids = [r["audio_id"] for r in rows]
    assert sorted(ids) == sorted(expected), f"ids differ: {sorted(ids)} vs {sorted(expected)}"
    for r in rows:
        assert r["status"] == "ok", r
        assert r["reference"] == expected[r["audio_id"]]
        assert wer(r["reference"], r["text"]) <= 0.34, (r["audio_id"], r["text"], r["reference"])
        assert r["segments"] and r["segments"][0]["start_s"] == 0.0
        assert r["model"] and r["model_revision"] and r["processed_at"] is not None


def _encode(entry: dict, fmt: str) -> bytes:
    audio, sr = sf.read(io.BytesIO(clip_bytes(entry)), dtype="float32")
    buf = io.BytesIO()
    if fmt == "m4a":
        import av

        with av.open(buf, "w", format="ipod") as out:
            stream = out.add_stream("aac", rate=sr)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
            frame.rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        return buf.getvalue()
    if fmt == "wav44k":  # a different source rate exercises resampling
        import soxr

        sf.write(buf, soxr.resample(audio, sr, 44100), 44100, format="WAV", subtype="PCM_16")
        return buf.getvalue()
    kinds = {"wav": ("WAV", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III"),
             "opus": ("OGG", "OPUS")}
    f, sub = kinds[fmt]
    if fmt == "opus":
        import soxr

        audio, sr = soxr.resample(audio, sr, 48000), 48000
    sf.write(buf, audio, sr, format=f, subtype=sub)
    return buf.getvalue()


def test_manifest_jsonl_nemo_rows(s3, ray_cluster, prefix):
    items = corpus(4)
    for e in items:
        put(s3, f"{prefix}/in/clips/{e['uri']}", clip_bytes(e))
    rows = [{"audio_filepath": f"clips/{e['uri']}", "duration": e["duration"], "text": e["text"]}
            for e in items]
    put(s3, f"{prefix}/in/train_manifest.jsonl", jsonl(rows))
    result = run(job_config(f"{prefix}/in/train_manifest.jsonl", f"{prefix}/out"))
    assert result["files"] == 4 and result["ok"] == 4
    assert result["wer"] is not None and result["wer"] <= 0.1
    _check(read_output(s3, result["output"]), {f"clips/{e['uri']}": e["text"] for e in items})


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_plain_rows(s3, ray_cluster, prefix, kind):
    items = corpus(3)
    for e in items:
        put(s3, f"{prefix}/audio/{e['uri']}", clip_bytes(e))
    table = pa.table({"audio_id": [f"id-{i}" for i in range(3)],
                      "uri": [f"{prefix}/audio/{e['uri']}" for e in items],
                      "text": [e["text"] for e in items], "language": ["en"] * 3})
    buf = io.BytesIO()
    if kind == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    else:
        pq.write_table(table, buf)
    put(s3, f"{prefix}/manifest.{kind}", buf.getvalue())
    result = run(job_config(f"{prefix}/manifest.{kind}", f"{prefix}/out", "input.format=auto"))
    _check(read_output(s3, result["output"]), {f"id-{i}": e["text"] for i, e in enumerate(items)})


def test_audio_prefix_every_codec(s3, ray_cluster, prefix):
    fmts = ["flac", "wav", "ogg", "opus", "mp3", "m4a", "wav44k"]
    items = corpus(len(fmts))
    expected = {}
    for fmt, e in zip(fmts, items):
        ext = {"wav44k": "wav"}.get(fmt, fmt)
        name = f"sub/{fmt}-{e['uri'].split('.')[0]}.{ext}"
        put(s3, f"{prefix}/in/{name}", clip_bytes(e) if fmt == "flac" else _encode(e, fmt))
        expected[name] = e["text"]
    put(s3, f"{prefix}/in/_notes.txt", "not audio, not listed")
    result = run(job_config(f"{prefix}/in/", f"{prefix}/out", "input.format=auto"))
    rows = read_output(s3, result["output"])
    assert sorted(r["audio_id"] for r in rows) == sorted(expected)
    for r in rows:  # no references in this form: check against the known text directly
        assert r["status"] == "ok", r
        assert wer(expected[r["audio_id"]], r["text"]) <= 0.34, (r["audio_id"], r["text"])
        assert abs(r["duration_s"] - r["segments"][-1]["end_s"]) < 0.01


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_webdataset_shards(s3, ray_cluster, prefix):
    items = corpus(5)
    shard0 = [(f"spk1/{e['uri'][:-5]}", {"flac": clip_bytes(e), "txt": e["text"].encode()})
              for e in items[:3]]
    shard1 = [(e["uri"][:-5], {"flac": clip_bytes(e),
                               "json": f'{{"text": "{e["text"]}", "language": "en"}}'.encode()})
              for e in items[3:]]
    put(s3, f"{prefix}/shards/shard-000000.tar", _tar(shard0))
    put(s3, f"{prefix}/shards/shard-000001.tar", _tar(shard1))
    result = run(job_config(f"{prefix}/shards/", f"{prefix}/out", "input.format=auto"))
    expected = {f"shard-000000/{k}": items[i]["text"] for i, (k, _) in enumerate(shard0)}
    expected |= {f"shard-000001/{k}": items[3 + i]["text"] for i, (k, _) in enumerate(shard1)}
    _check(read_output(s3, result["output"]), expected)


def test_hf_parquet_embedded_bytes(s3, ray_cluster, prefix):
    items = corpus(4)
    audio = pa.array([{"bytes": clip_bytes(e), "path": e["uri"]} for e in items],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"audio": audio, "text": [e["text"] for e in items]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put(s3, f"{prefix}/hf/data/train-00000-of-00001.parquet", buf.getvalue())
    result = run(job_config(f"{prefix}/hf/data/", f"{prefix}/out", "input.format=auto"))
    _check(read_output(s3, result["output"]),
           {f"train-00000-of-00001.parquet/{e['uri']}": e["text"] for e in items})


def test_corrupt_shard_is_an_error_row(s3, ray_cluster, prefix):
    items = corpus(2)
    put(s3, f"{prefix}/shards/good.tar", _tar([(e["uri"][:-5], {"flac": clip_bytes(e)}) for e in items]))
    put(s3, f"{prefix}/shards/bad.tar", np.random.default_rng(0).bytes(5000))
    result = run(job_config(f"{prefix}/shards/", f"{prefix}/out", "input.format=webdataset"))
    rows = {r["audio_id"]: r for r in read_output(s3, result["output"])}
    assert rows["bad"]["status"] == "error" and rows["bad"]["error"].startswith("source:")
    assert {f"good/{e['uri'][:-5]}" for e in items} <= set(rows)
    assert result["errors_by_kind"] == {"source": 1}
