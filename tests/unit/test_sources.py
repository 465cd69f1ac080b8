"""operators.io.sources on local temp dirs: manifests, audio files, tar shards, HF Parquet, dedupe/resume."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import audio_fixtures as af
from operators.config import InputConfig
from operators.audio.decode import decode_audio
from operators.schema import SOURCE_SCHEMA
from operators.io.sources import (AudioFilesSource, HFParquetSource, InputError, ManifestSource,
                               WebDatasetSource, dedupe, detect_format, drop_done, make_source,
                               source_table)


def _cfg(uri, **kw) -> InputConfig:
    return InputConfig(uri=str(uri), **kw)


# ------------------------------------------------------------------ manifests


def test_nemo_jsonl_manifest(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = [
        {"audio_filepath": "clips/a.wav", "duration": 1.5, "text": "hello world"},
        {"audio_filepath": "/abs/b.flac", "duration": 2.0, "text": "second"},
        {"audio_filepath": "s3://bucket/c.wav", "duration": 3.0, "text": "third"},
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    src = ManifestSource(_cfg(d / "train.jsonl"))
    t = src.list_units()
    assert t.schema.equals(SOURCE_SCHEMA)
    assert t["source_uri"].to_pylist() == [f"{d}/clips/a.wav", "/abs/b.flac", "s3://bucket/c.wav"]
    assert t["audio_id"].to_pylist() == ["clips/a.wav", "/abs/b.flac", "bucket/c.wav"]
    assert t["reference"].to_pylist() == ["hello world", "second", "third"]
    assert t["language"].to_pylist() == [None, None, None]
    assert t["audio_bytes"].null_count == 3
    assert not src.expands


def test_plain_csv_manifest(tmp_path):
    (tmp_path / "m.csv").write_text(
        "audio_id,uri,text,language\n"
        "utt-a,audio/a.wav,\"hello, there\",en\n"
        "utt-b,s3://bk/b.flac,bonjour,fr\n")
    t = ManifestSource(_cfg(tmp_path / "m.csv")).list_units()
    assert t.to_pylist() == [
        {"audio_id": "utt-a", "source_uri": f"{tmp_path}/audio/a.wav", "audio_bytes": None,
         "reference": "hello, there", "language": "en", "source_error": None,
         "source_version": None, "task": None, "target_language": None, "keywords": None},
        {"audio_id": "utt-b", "source_uri": "s3://bk/b.flac", "audio_bytes": None,
         "reference": "bonjour", "language": "fr", "source_error": None,
         "source_version": None, "task": None, "target_language": None, "keywords": None},
    ]


def test_tsv_manifest(tmp_path):
    (tmp_path / "m.tsv").write_text("id\tpath\tsentence\tlocale\nx1\tx1.mp3\tguten tag\tde\n")
    [row] = ManifestSource(_cfg(tmp_path / "m.tsv")).list_units().to_pylist()
    assert (row["audio_id"], row["source_uri"], row["reference"], row["language"]) == \
        ("x1", f"{tmp_path}/x1.mp3", "guten tag", "de")


def test_csv_manifest_keeps_ids_as_written(tmp_path):
    (tmp_path / "m.csv").write_text("audio_id,uri,text\n0001,a.wav,one\n0002,b.wav,two\n")
    t = ManifestSource(_cfg(tmp_path / "m.csv")).list_units()
    assert t["audio_id"].to_pylist() == ["0001", "0002"]


def test_parquet_manifest(tmp_path):
    pq.write_table(pa.table({"audio_id": ["p1", "p2"], "uri": ["x/p1.wav", "/data/p2.wav"],
                             "text": ["one", None], "language": ["en", "es"]}),
                   tmp_path / "m.parquet")
    t = ManifestSource(_cfg(tmp_path / "m.parquet")).list_units()
    assert t["audio_id"].to_pylist() == ["p1", "p2"]
    assert t["source_uri"].to_pylist() == [f"{tmp_path}/x/p1.wav", "/data/p2.wav"]
    assert t["reference"].to_pylist() == ["one", None]
    assert t["language"].to_pylist() == ["en", "es"]


def test_manifest_directory_concatenates_sorted_files(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"audio_filepath": "b.wav"}) + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"audio_filepath": "a.wav"}) + "\n")
    (tmp_path / "_skip.jsonl").write_text(json.dumps({"audio_filepath": "z.wav"}) + "\n")
    t = ManifestSource(_cfg(tmp_path, format="manifest")).list_units()
    assert t["audio_id"].to_pylist() == ["a.wav", "b.wav"]


def test_manifest_id_column(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"key2": "k", "audio_filepath": "a.wav"}) + "\n")
    t = ManifestSource(_cfg(tmp_path / "m.jsonl", id_column="key2")).list_units()
    assert t["audio_id"].to_pylist() == ["k"]
    with pytest.raises(InputError, match="id_column='nope'"):
        ManifestSource(_cfg(tmp_path / "m.jsonl", id_column="nope")).list_units()


def test_manifest_without_path_column_names_columns(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"name": "a", "transcript": "t"}) + "\n")
    with pytest.raises(InputError) as info:
        ManifestSource(_cfg(tmp_path / "m.jsonl")).list_units()
    msg = str(info.value)
    assert "audio_filepath" in msg and "uri" in msg  # what it expected
    assert "'name'" in msg and "'transcript'" in msg  # what it found


def test_manifest_empty_path_is_an_input_error(tmp_path):
    (tmp_path / "m.csv").write_text("uri,text\na.wav,x\n,y\n")
    with pytest.raises(InputError, match="row 1"):
        ManifestSource(_cfg(tmp_path / "m.csv")).list_units()


def test_invalid_jsonl_is_an_input_error(tmp_path):
    (tmp_path / "m.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="not valid JSON Lines"):
        ManifestSource(_cfg(tmp_path / "m.jsonl")).list_units()


# ------------------------------------------------------------------ audio files


def _touch(root, names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"RIFF")


def test_audio_files_ids_sorted_relative_filtered(tmp_path):
    root = tmp_path / "corpus"
    _touch(root, ["b.wav", "a.FLAC", "sub/c.mp3", "sub/deeper/d.opus", ".hidden.wav", "_tmp.wav",
                  "sub/.x.wav", "notes.txt", "cover.jpg"])
    for uri in (root, f"{root}/"):
        src = AudioFilesSource(_cfg(uri))
        t = src.list_units()
        assert t["audio_id"].to_pylist() == ["a.FLAC", "b.wav", "sub/c.mp3", "sub/deeper/d.opus"]
        assert t["source_uri"].to_pylist() == [f"{root}/{i}" for i in t["audio_id"].to_pylist()]
        assert t["audio_bytes"].null_count == 4
        # nothing skipped silently: what was left out, by reason, with example keys
        assert src.listing_report() == {
            "input_files_seen": 9, "input_files_left_out": 5, "input_left_out_by": {
                "hidden": {"files": 3, "examples": [".hidden.wav", "_tmp.wav", "sub/.x.wav"]},
                ".jpg": {"files": 1, "examples": ["cover.jpg"]},
                ".txt": {"files": 1, "examples": ["notes.txt"]}}}


def test_audio_files_extension_filter(tmp_path):
    _touch(tmp_path, ["a.wav", "b.flac", "c.mp3"])
    src = AudioFilesSource(_cfg(tmp_path, extensions=[".flac", ".MP3"]))
    t = src.list_units()
    assert t["audio_id"].to_pylist() == ["b.flac", "c.mp3"]
    assert src.listing_report()["input_left_out_by"] == {".wav": {"files": 1, "examples": ["a.wav"]}}


def test_audio_files_glob(tmp_path):
    _touch(tmp_path, ["x/a.wav", "x/b.wav", "y/c.wav", "x/d.flac"])
    t = AudioFilesSource(_cfg(f"{tmp_path}/x/*.wav")).list_units()
    assert t["audio_id"].to_pylist() == ["a.wav", "b.wav"]
    t = AudioFilesSource(_cfg(f"{tmp_path}/*/*.wav")).list_units()
    assert t["audio_id"].to_pylist() == ["x/a.wav", "x/b.wav", "y/c.wav"]


def test_audio_files_none_found(tmp_path):
    _touch(tmp_path, ["readme.md"])
    with pytest.raises(InputError, match="no audio files"):
        AudioFilesSource(_cfg(tmp_path)).list_units()


def test_missing_input_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        AudioFilesSource(_cfg(tmp_path / "nope")).list_units()


# ------------------------------------------------------------------ webdataset


def _tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard(tmp_path):
    flac = af.encode(af.tone(1.0), af.SR, "flac")
    wav = af.encode(af.tone(0.5), af.SR, "wav")
    root = tmp_path / "shards"
    root.mkdir()
    path = root / "shard-000.tar"
    _tar(path, [
        ("a/x.flac", flac),
        ("a/x.txt", b"  the x transcript \n"),
        ("y.wav", wav),
        ("y.json", json.dumps({"text": "the y transcript", "language": "fr"}).encode()),
        ("meta.json", b'{"only": "metadata"}'),      # no audio member: no row
        ("._y.wav", b"apple double junk"),            # hidden: skipped
        ("v1.0/z.wav", wav),                          # dots in a directory name
    ])
    return root, path, flac, wav


def test_webdataset_expand(shard):
    root, path, flac, wav = shard
    src = WebDatasetSource(_cfg(path))
    assert src.expands
    assert src.list_units()["unit"].to_pylist() == [str(path)]
    t = src.expand(str(path))
    assert t.schema.equals(SOURCE_SCHEMA)
    assert t["audio_id"].to_pylist() == ["shard-000/a/x", "shard-000/y", "shard-000/v1.0/z"]
    assert t["source_uri"].to_pylist() == [f"{path}#a/x.flac", f"{path}#y.wav", f"{path}#v1.0/z.wav"]
    assert t["reference"].to_pylist() == ["the x transcript", "the y transcript", None]
    assert t["language"].to_pylist() == [None, "fr", None]
    assert t["audio_bytes"].to_pylist() == [flac, wav, wav]
    assert len(decode_audio(t["audio_bytes"][0].as_py())) == af.SR


def test_webdataset_directory_of_shards(shard):
    root, path, flac, wav = shard
    (root / "sub").mkdir()
    _tar(root / "sub" / "shard-001.tar",
         [("k.wav", wav), ("k.json", json.dumps({"audio_id": "explicit-id"}).encode())])
    src = WebDatasetSource(_cfg(root))
    units = src.list_units()["unit"].to_pylist()
    assert units == [f"{root}/shard-000.tar", f"{root}/sub/shard-001.tar"]
    t = src.expand(units[1])
    assert t["audio_id"].to_pylist() == ["explicit-id"]
    t = src.expand(units[0])
    assert t["audio_id"].to_pylist()[0] == "shard-000/a/x"


# ------------------------------------------------------------------ HF parquet


def _hf_parquet(path, blobs, paths, texts, extra=None):
    audio = pa.array([{"bytes": b, "path": p} for b, p in zip(blobs, paths)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    cols = {"audio": audio, "text": pa.array(texts, pa.string())}
    cols.update(extra or {})
    pq.write_table(pa.table(cols), path)


def test_hf_parquet_expand(tmp_path):
    a = af.encode(af.tone(1.0), af.SR, "flac")
    b = af.encode(af.tone(0.25), af.SR, "wav")
    root = tmp_path / "hf"
    root.mkdir()
    f = root / "train-00000.parquet"
    _hf_parquet(f, [a, b, a], ["clip0.flac", "clip1.wav", None], ["zero", "one", None],
                {"language": pa.array(["en", "de", None])})
    src = HFParquetSource(_cfg(root))
    assert src.expands
    assert src.list_units()["unit"].to_pylist() == [str(f)]
    t = src.expand(str(f))
    assert t.schema.equals(SOURCE_SCHEMA)
    assert t["audio_id"].to_pylist() == ["train-00000.parquet/clip0.flac", "train-00000.parquet/clip1.wav",
                                         "train-00000.parquet#2"]
    assert t["source_uri"].to_pylist() == [f"{f}#clip0.flac", f"{f}#clip1.wav", f"{f}#2"]
    assert t["reference"].to_pylist() == ["zero", "one", None]
    assert t["language"].to_pylist() == ["en", "de", None]
    assert t["audio_bytes"].to_pylist() == [a, b, a]


def test_hf_parquet_without_audio_struct(tmp_path):
    pq.write_table(pa.table({"audio": ["not a struct"], "text": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match="audio"):
        HFParquetSource(_cfg(tmp_path)).expand(str(tmp_path / "x.parquet"))


# ------------------------------------------------------------------ detect_format


def test_detect_format_each_form(tmp_path, shard):
    root, tar_path, flac, wav = shard
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "a.wav"}) + "\n")
    audio_dir = tmp_path / "audio"
    _touch(audio_dir, ["a.wav", "b/c.flac"])
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    _hf_parquet(hf_dir / "p.parquet", [wav], ["a.wav"], ["t"])
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"uri": ["a.wav"], "text": ["t"]}), plain)

    assert detect_format(_cfg(tmp_path / "m.jsonl")) == "manifest"
    assert detect_format(_cfg(audio_dir)) == "audio"
    assert detect_format(_cfg(f"{audio_dir}/*.wav")) == "audio"
    assert detect_format(_cfg(tar_path)) == "webdataset"
    assert detect_format(_cfg(root)) == "webdataset"
    assert detect_format(_cfg(hf_dir / "p.parquet")) == "hf_parquet"
    assert detect_format(_cfg(hf_dir)) == "hf_parquet"
    assert detect_format(_cfg(plain)) == "manifest"
    assert detect_format(_cfg(audio_dir, format="webdataset")) == "webdataset"

    assert type(make_source(_cfg(hf_dir))) is HFParquetSource
    assert type(make_source(_cfg(audio_dir))) is AudioFilesSource
    assert type(make_source(_cfg(tar_path))) is WebDatasetSource
    assert type(make_source(_cfg(tmp_path / "m.jsonl"))) is ManifestSource


def test_detect_format_unknown(tmp_path):
    _touch(tmp_path / "x", ["a.bin", "b.doc"])
    with pytest.raises(InputError, match="input.format"):
        detect_format(_cfg(tmp_path / "x"))


def test_make_source_without_uri():
    with pytest.raises(InputError, match="no input"):
        make_source(InputConfig())


# ------------------------------------------------------------------ dedupe / resume


def test_dedupe_keeps_first_and_counts():
    t = source_table(["a", "b", "a", "c", "b", "a"], ["u0", "u1", "u2", "u3", "u4", "u5"])
    out, dups = dedupe(t)
    assert dups == 3
    assert out["audio_id"].to_pylist() == ["a", "b", "c"]
    assert out["source_uri"].to_pylist() == ["u0", "u1", "u3"]
    same, none = dedupe(out)
    assert none == 0 and same.equals(out)


def test_drop_done():
    t = source_table(["a", "b", "c", "d"], ["u0", "u1", "u2", "u3"])
    out = drop_done(t, pa.array(["b", "d", "zzz"]))
    assert out["audio_id"].to_pylist() == ["a", "c"]
    assert out["source_uri"].to_pylist() == ["u0", "u2"]
    assert drop_done(t, pa.array([], pa.string())).equals(t)
    assert drop_done(t, None).equals(t)


def test_listing_skips_hidden_and_underscore_directories_but_not_a_named_file(tmp_path):
    from operators.storage import list_files

    for rel in ("a/x.wav", ".ipynb_checkpoints/x.wav", "_temporary/0/y.wav", "b/_y.wav", "_named.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert list_files(str(tmp_path)) == [f"{tmp_path}/a/x.wav"]
    assert list_files(str(tmp_path / "_named.wav")) == [f"{tmp_path}/_named.wav"]


def test_audio_listing_records_size_and_mtime_as_the_source_version(tmp_path):
    from operators.config import InputConfig
    from operators.io.sources import AudioFilesSource

    (tmp_path / "a.wav").write_bytes(b"x" * 10)
    [row] = AudioFilesSource(InputConfig(uri=str(tmp_path))).list_units().to_pylist()
    size, tag = row["source_version"].split(":", 1)
    assert size == "10" and tag
