"""Tasks around the granite-ar backend: config validation at load, manifest task columns carried through
sources and decode, and the ASR stage with per-row overrides, translation columns and joiners (tiny
random checkpoint; structure is checked, not words)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import audio_fixtures as af
from operators.asr.base import TaskSpec, normalize_keywords, parse_task
from operators.config import ConfigError, InputConfig, JobConfig, SegmentConfig, load_config
from operators.audio.decode import decode_batch, to_pcm16
from operators.schema import DECODED_SCHEMA, ERROR, OK, OUTPUT_SCHEMA, SCHEMA_VERSION
from operators.audio.segment import plan_segments
from operators.io.sources import ManifestSource

ROOT = Path(__file__).resolve().parents[2]
SR = 16_000

# ------------------------------------------------------------------ config


def test_task_names_and_lists_are_canonical():
    assert parse_task("transcribe") == "transcribe"
    assert parse_task("translate+transcribe") == "transcribe+translate"
    assert parse_task(["translate", "transcribe_raw"]) == "transcribe_raw+translate"
    for bad in ("translation", "transcribe+transcribe_raw", "", ["translate", "translate"]):
        with pytest.raises(ValueError, match="task"):
            parse_task(bad)
    assert normalize_keywords("IBM, Ray Data,, IBM ") == ("IBM", "Ray Data")
    assert normalize_keywords(["a<|audio|>b", "<|end_of_text|>"]) == ("a b",)  # no smuggled control tokens


def test_granite_ar_profiles_load():
    tr = load_config(ROOT / "configs" / "ar-transcribe.yaml")
    assert (tr.asr.backend, tr.asr.task, tr.asr.target_language) == ("granite-ar", "transcribe", None)
    tl = load_config(ROOT / "configs" / "ar-translate.yaml")
    assert (tl.asr.task, tl.asr.model.language, tl.asr.target_language) == ("transcribe+translate", "fr", "en")


def test_task_fields_parse_and_normalise():
    cfg = load_config(None, ["asr.backend=granite-ar", "asr.task=[translate, transcribe]",
                             "asr.target_language=Japanese", "asr.keywords=Granite, Ray"])
    assert cfg.asr.task == "transcribe+translate"
    assert cfg.asr.target_language == "ja"
    assert cfg.asr.keywords == ["Granite", "Ray"]
    assert load_config(None, ["asr.backend=granite-ar", "asr.model.language=fr", "asr.task=translate",
                              "asr.target_language=en"]).asr.target_language == "en"


@pytest.mark.parametrize("overrides,field,words", [
    (["asr.task=translate", "asr.target_language=fr"], "asr.task",
     ["whisper", "cannot do 'translate'", "granite-ar"]),
    (["asr.task=transcribe_raw"], "asr.task", ["whisper", "transcribe_raw"]),
    (["asr.keywords=[IBM]"], "asr.keywords", ["whisper", "does not take keywords"]),
    (["asr.backend=granite-ar", "asr.task=translate"], "asr.target_language", ["needs asr.target_language"]),
    (["asr.backend=granite-ar", "asr.task=translate", "asr.target_language=en"], "asr.target_language",
     ["en->en", "supported pairs"]),
    (["asr.backend=granite-ar", "asr.model.language=fr", "asr.task=translate", "asr.target_language=de"],
     "asr.target_language", ["fr->de", "fr->en"]),
    (["asr.backend=granite-ar", "asr.task=translate", "asr.target_language=ko"], "asr.target_language", ["en->ko"]),
    (["asr.backend=granite-ar", "asr.target_language=ko"], "asr.target_language", ["does not translate into 'ko'"]),
    (["asr.backend=granite-ar", "asr.model.language=it"], "asr.model", ["asr.model.language", "'it'"]),
    (["asr.backend=granite-ar", "asr.task=summarise"], "asr.task", ["unknown task"]),
])
def test_config_errors_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    assert f"  {field}: " in msg, msg
    for w in words:
        assert w in msg, msg


def test_granite_nar_cannot_translate():
    from operators.asr import available_backends

    if "granite-nar" not in available_backends():
        pytest.skip("granite-nar is not registered in this checkout")
    with pytest.raises(ConfigError, match=r"asr\.task: .*granite-nar.*cannot do 'translate'"):
        load_config(None, ["asr.backend=granite-nar", "asr.task=translate", "asr.target_language=en"])


def test_cli_rejects_an_impossible_task_before_reading_anything(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipelines.transcribe", "--config", "configs/demo.yaml",
                        "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out"),
                        "--set", "asr.task=translate", "--set", "asr.target_language=de"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "asr.task" in r.stderr and "whisper" in r.stderr
    assert "does not exist" not in r.stderr  # the config failed first, the input was never looked at
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ sources and decode


def test_manifest_task_columns(tmp_path):
    rows = [
        {"audio_id": "a", "uri": "a.wav", "task": "translate", "target_language": "fr", "keywords": ["IBM", "Ray"]},
        {"audio_id": "b", "uri": "b.wav", "task": "transcribe+translate", "keywords": []},
        {"audio_id": "c", "uri": "c.wav"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = ManifestSource(InputConfig(uri=str(tmp_path / "m.jsonl"))).list_units()
    assert t["task"].to_pylist() == ["translate", "transcribe+translate", None]
    assert t["target_language"].to_pylist() == ["fr", None, None]
    assert t["keywords"].to_pylist() == [["IBM", "Ray"], [], None]  # [] = none for this row; null = job's
    (tmp_path / "l.jsonl").write_text(json.dumps({"uri": "l.wav", "task": ["translate", "transcribe"]}) + "\n")
    assert ManifestSource(InputConfig(uri=str(tmp_path / "l.jsonl"))).list_units()["task"].to_pylist() == \
        ["translate+transcribe"]  # the stage canonicalises

    (tmp_path / "m.csv").write_text("audio_id,uri,task,tgt_lang,keywords\n"
                                    "x,x.wav,transcribe,,\"Granite, watsonx\"\n"
                                    "y,y.wav,,ja,\n")
    t = ManifestSource(InputConfig(uri=str(tmp_path / "m.csv"))).list_units()
    assert t.to_pylist()[0] | {"source_uri": None} == {
        "audio_id": "x", "source_uri": None, "audio_bytes": None, "reference": None, "language": None,
        "source_error": None, "source_version": None, "task": "transcribe", "target_language": None,
        "keywords": ["Granite", "watsonx"]}
    assert (t["task"][1].as_py(), t["target_language"][1].as_py(), t["keywords"][1].as_py()) == (None, "ja", None)


def test_decode_carries_task_columns():
    from operators.io.sources import source_table

    wav = af.encode(af.tone(1.0), SR, "wav")
    table = source_table(["a", "b"], ["mem://a.wav", "mem://b.wav"], blobs=[wav, b""],
                         tasks={"task": ["translate", None], "target_language": ["de", None],
                                "keywords": [["kw"], None]})
    out = decode_batch(table, JobConfig()).to_pylist()
    assert [(r["task"], r["target_language"], r["keywords"], r["status"]) for r in out] == [
        ("translate", "de", ["kw"], OK), (None, None, None, ERROR)]


# ------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from operators.asr.granite_ar import random_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield random_checkpoint(tmp_path_factory.mktemp("granite-ar-tiny"))
    torch.set_num_threads(threads)


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * (120 + 30 * seed) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _row(audio_id, audio, language=None, seg=None, **task):
    starts, ends = plan_segments(audio, seg)
    return {"audio_id": audio_id, "source_uri": f"mem://{audio_id}.wav", "reference": None,
            "language": language, "task": task.get("task"), "target_language": task.get("target_language"),
            "keywords": task.get("keywords"), "duration_s": len(audio) / SR, "pcm16": to_pcm16(audio),
            "seg_start": starts, "seg_end": ends, "status": OK, "error": None}


SEG = SegmentConfig(max_segment_s=3.0, min_segment_s=1.0, search_window_s=1.5)


@pytest.fixture(scope="module")
def stage(ckpt):
    from operators.asr.stage import ASRStage

    cfg = load_config(None, ["asr.backend=granite-ar", f"asr.model.id={ckpt}", "asr.model.device=cpu",
                             "asr.task=transcribe+translate", "asr.target_language=ja", "asr.batch_size=4"])
    st = ASRStage(cfg)
    calls = []
    real = st.backend.transcribe

    def spy(audios, languages, tasks=None):
        calls.append(list(tasks))
        return real(audios, languages, tasks)

    st.backend.transcribe = spy
    st.calls = calls
    return st


@pytest.fixture(scope="module")
def result(stage):
    rows = [
        _row("default", _audio(7.0, 1), seg=SEG),                                    # job: +translate -> ja
        _row("fr-to-en", _audio(2.0, 2), "fr", task="translate", target_language="en"),
        _row("keywords", _audio(1.5, 3), task="transcribe", keywords=["Kubernetes", "IBM"]),
        _row("raw", _audio(2.5, 4), task="transcribe_raw"),
        _row("bad-pair", _audio(1.0, 5), "ja", task="translate", target_language="fr"),
        _row("bad-task", _audio(1.0, 6), task="summarise"),
        {**_row("broken", _audio(1.0, 7)), "pcm16": None, "seg_start": [], "seg_end": [], "status": ERROR,
         "error": "undecodable: nope"},
        _row("silent", np.zeros(SR, np.float32)),
    ]
    stage.calls.clear()
    table = pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)
    return rows, stage(table).to_pylist()


def test_stage_output_schema_and_order(result):
    rows, out = result
    assert [r["audio_id"] for r in out] == [r["audio_id"] for r in rows]
    assert OUTPUT_SCHEMA.metadata[b"granite_transcribe.schema_version"] == SCHEMA_VERSION.encode() == b"5"
    for r in out:
        assert r["backend"] == "granite-ar" and r["model_revision"].startswith("local-")
        assert (r["raw_text"], r["words"], r["speakers"], r["tags_suspect"]) == (None,) * 4  # granite-plus only


def test_job_default_transcribe_and_translate_into_japanese(result):
    rows, out = result
    r = out[0]
    assert r["status"] == OK, r["error"]
    assert (r["task"], r["target_language"], r["language"]) == ("transcribe+translate", "ja", "en")
    assert len(r["segments"]) == 3  # 7 s cut at <= 3 s
    assert [(s["start_s"], s["end_s"]) for s in r["segments"]] == \
        [(round(s / SR, 3), round(e / SR, 3)) for s, e in zip(rows[0]["seg_start"], rows[0]["seg_end"])]
    assert all(s["text"] is not None and s["translation"] is not None for s in r["segments"])
    assert r["text"] == " ".join(s["text"] for s in r["segments"] if s["text"])
    assert r["translation"] == "".join(s["translation"] for s in r["segments"])  # ja: no spaces


def test_row_overrides(result, stage):
    _, out = result
    by_id = {r["audio_id"]: r for r in out}
    fr = by_id["fr-to-en"]
    assert fr["status"] == OK and fr["task"] == "translate" and fr["target_language"] == "en"
    assert fr["text"] is None and fr["translation"] is not None
    assert all(s["text"] is None and s["translation"] is not None for s in fr["segments"])
    kw = by_id["keywords"]
    assert kw["status"] == OK and kw["task"] == "transcribe"
    assert kw["translation"] is None and kw["target_language"] is None and kw["text"] is not None
    assert by_id["raw"]["task"] == "transcribe_raw" and by_id["raw"]["translation"] is None
    # what the backend was asked, and the prompts that makes
    sent = [t for call in stage.calls for t in call]
    assert TaskSpec("transcribe", None, ("Kubernetes", "IBM")) in sent
    assert TaskSpec("translate", "en") in sent
    assert TaskSpec("transcribe+translate", "ja") in sent
    assert TaskSpec("transcribe_raw") in sent
    prompt = stage.backend.prompt_text("transcribe", TaskSpec(keywords=("Kubernetes", "IBM")))
    assert "transcribe the speech to text. Keywords: Kubernetes, IBM" in prompt
    assert len(sent) == 3 + 1 + 1 + 1  # 3 segments + one clip each; error and silent rows send nothing


def test_impossible_rows_are_task_errors(result):
    _, out = result
    by_id = {r["audio_id"]: r for r in out}
    assert by_id["bad-pair"]["status"] == ERROR and by_id["bad-pair"]["error"].startswith("task: ")
    assert "ja->fr" in by_id["bad-pair"]["error"]
    assert by_id["bad-task"]["status"] == ERROR and "unknown task" in by_id["bad-task"]["error"]
    assert by_id["broken"]["status"] == ERROR and by_id["broken"]["error"] == "undecodable: nope"
    silent = by_id["silent"]
    assert silent["status"] == OK and silent["text"] == "" and silent["translation"] == ""
    assert silent["segments"] == []


def test_backend_without_tasks_keeps_the_old_call(monkeypatch):
    """A backend whose transcribe has no `tasks` parameter (whisper, granite-nar) is called as before;
    a row asking it to translate becomes a task error row."""
    import operators.asr.stage as stage_mod
    from operators.asr.base import Transcript

    class Old:
        name, model_id, revision, max_clip_s = "old", "m", "r", 30.0

        def transcribe(self, audios, languages):
            return [Transcript(text=f"n={len(a)}") for a in audios]

    monkeypatch.setattr(stage_mod, "load_backend", lambda name, model: Old())
    st = stage_mod.ASRStage(JobConfig())
    rows = [_row("a", _audio(1.0, 1)), _row("b", _audio(1.0, 2), task="translate", target_language="fr")]
    out = st(pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)).to_pylist()
    assert out[0]["status"] == OK and out[0]["text"] == f"n={SR}" and out[0]["task"] == "transcribe"
    assert out[1]["status"] == ERROR and out[1]["error"].startswith("task: ") and "'old'" in out[1]["error"]
