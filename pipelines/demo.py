"""`make demo`: the whole job on embedded defaults.

Starts a local S3-compatible server (SeaweedFS) on loopback, uploads the committed espeak-ng corpus
plus one long file built from it, runs the transcription job on a local Ray cluster with the demo
profile, and prints the summary and the first transcripts with their WER.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from operators.config import load_config
from operators.output.report import format_summary, wer
from pipelines import demo_corpus
from pipelines.local_s3 import LocalS3
from pipelines.transcribe import run

BUCKET = "demo"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def stage_corpus(s3: LocalS3, prefix: str, long_s: float) -> str:
    """Upload clips, the long file and a manifest; return the manifest URI."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in demo_corpus.entries():
            rows.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
            s3.upload(demo_corpus.CORPUS_DIR / e["uri"], f"{prefix}/{e['uri']}")
        data, text = demo_corpus.build_long_file(long_s)
        long_path = Path(tmp) / "long.flac"
        long_path.write_bytes(data)
        s3.upload(long_path, f"{prefix}/long.flac")
        rows.append({"audio_id": "demo/long", "uri": "long.flac", "text": text, "language": "en"})
        manifest = Path(tmp) / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        s3.upload(manifest, f"{prefix}/manifest.jsonl")
    return f"{prefix}/manifest.jsonl"


def show_transcripts(s3: LocalS3, out_dir: str, n: int) -> None:
    fs = s3.filesystem()
    files = sorted(p for p in fs.find(out_dir.removeprefix("s3://")) if p.endswith(".parquet"))
    rows = []
    for p in files:
        with fs.open(p, "rb") as f:
            rows += pq.read_table(f, columns=["audio_id", "status", "error", "duration_s", "text",
                                              "reference", "segments"]).to_pylist()
    rows.sort(key=lambda r: (r["audio_id"] != "demo/long", r["audio_id"]))
    print(f"\nfirst {n} transcripts (of {len(rows)}):")
    for r in rows[:n]:
        if r["status"] != "ok":
            print(f"  {r['audio_id']:<12} ERROR {r['error']}")
            continue
        w = wer(r["reference"] or "", r["text"] or "")
        text = r["text"] if len(r["text"]) < 110 else r["text"][:107] + "..."
        print(f"  {r['audio_id']:<12} {r['duration_s']:7.1f}s  segs={len(r['segments'] or []):<3} "
              f"WER={w:.3f}  {text}")


def granite_overrides(download: bool) -> list[str] | None:
    """--set overrides that run the demo on granite-nar (the published checkpoint at its pinned
    revision) when its weights are on this machine, or `download` asks for them; None otherwise."""
    try:
        from huggingface_hub import snapshot_download

        from operators.asr.granite_nar.backend import DEFAULT_MODEL, DEFAULT_REVISION
        from operators.asr.granite_nar.loader import DOWNLOAD_PATTERNS

        path = snapshot_download(DEFAULT_MODEL, revision=DEFAULT_REVISION, allow_patterns=DOWNLOAD_PATTERNS,
                                 local_files_only=not download)
    except Exception as e:  # noqa: BLE001 - any failure means: fall back
        why = "not in the local Hugging Face cache" if not download else f"{type(e).__name__}: {e}"
        print(f"granite-nar: weights {why}; using the offline whisper backend instead "
              "(make demo DEMO_ARGS=--granite downloads them, several GB)")
        return None
    print(f"granite-nar: using {DEFAULT_MODEL}@{DEFAULT_REVISION[:10]} from {path}")
    return ["asr.backend=granite-nar", f"asr.model.id={path}", f"asr.model.revision={DEFAULT_REVISION}",
            "asr.batch_size=8", "asr.model.language=en"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--long-seconds", type=float, default=240.0, help="length of the stitched long file")
    p.add_argument("--show", type=int, default=8, help="transcripts to print")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--granite", action="store_true",
                   help="run granite-nar, downloading its weights if they are not cached")
    p.add_argument("--whisper", action="store_true", help="run the offline whisper backend")
    args = p.parse_args(argv)
    backend = [] if args.whisper else (granite_overrides(args.granite) or [])
    with LocalS3() as s3:
        os.environ.update(s3.env)  # s3fs in the driver and in Ray workers reads the standard AWS_* vars
        s3.make_bucket(BUCKET)
        manifest = stage_corpus(s3, f"s3://{BUCKET}/corpus", args.long_seconds)
        print(f"S3 server {s3.endpoint}: uploaded {len(demo_corpus.entries()) + 1} files and {manifest}")
        cfg = load_config(args.config, backend + args.overrides, **{
            "input.uri": manifest, "output.uri": f"s3://{BUCKET}/transcripts", "output.overwrite": True})
        result = run(cfg)
        print(format_summary(result))
        show_transcripts(s3, result["output"], args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
