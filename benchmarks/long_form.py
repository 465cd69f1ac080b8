"""Long recordings: WER and model time with each way of cutting, side by side on the same files.

    python benchmarks/long_form.py [--minutes 5] [--recordings 2] [--nar]

The recordings are what archives hold (pipelines.demo_corpus.build_recording): the espeak-ng corpus's
sentences in a seeded order with uneven pauses (0.3-2.5 s), a long silence (6-15 s) every sixth
sentence, 20 s of synthetic music in the middle of every second recording, a faint noise floor, 44.1 kHz
stereo Ogg Vorbis. The same sentences as short clips (the corpus itself) give the clip WER next to it.

The long recordings and the clips run as separate jobs (so model seconds are the long files' own).
Each recording goes through the whole job (local Ray, Ray Data decode actors, the ASR actor, Parquet)
with `segment.vad` none (today's cutter: all audio, cut at the quietest point before 30 s), energy,
and silero, printing per mode: corpus WER, model_busy_seconds (time inside the model), the audio the
model heard, segments, and the decode/VAD CPU per audio-hour.

Models: the offline Whisper tiny.en (the demo's model) for WER; with --nar also granite-nar on a tiny
random checkpoint for the model seconds only (its text is noise).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.config import load_config  # noqa: E402
from operators.report import word_errors  # noqa: E402
from pipelines import demo_corpus  # noqa: E402
from pipelines.cluster import init_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "energy", "silero")


def job(input_uri: str, out: Path, backend_sets: list[str], mode: str) -> tuple[dict, dict]:
    from pipelines.transcribe import run

    import pyarrow.parquet as pq

    cfg = load_config(ROOT / "configs" / "demo.yaml", [*backend_sets, f"segment.vad={mode}",
                                                         "output.overwrite=true"],
                      input={"uri": input_uri}, output={"uri": str(out)})
    summary = run(cfg)
    rows = {}
    for p in Path(summary["output"]).rglob("*.parquet"):
        for r in pq.read_table(p).to_pylist():
            rows[r["audio_id"]] = r
    return summary, rows


def corpus_wer(rows: dict, refs: dict) -> tuple[float, int, int]:
    errors = words = 0
    for k, ref in refs.items():
        e, n = word_errors(ref, rows[k]["text"] or "")
        errors, words = errors + e, words + n
    return errors / max(1, words), errors, words


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--recordings", type=int, default=2)
    ap.add_argument("--nar", action="store_true", help="also time granite-nar (tiny random checkpoint)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides, every run")
    ap.add_argument("--modes", default=",".join(MODES), help="segment.vad values to compare")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="long_form_"))
    inp = tmp / "in"
    inp.mkdir()
    refs, lines = {}, []
    for k in range(args.recordings):
        data, text, speech, tunes = demo_corpus.build_recording(
            args.minutes * 60, seed=k + 1, music_s=20.0 if k % 2 else 0.0)
        (inp / f"rec{k}.ogg").write_bytes(data)
        refs[f"rec{k}"] = text
        lines.append({"audio_id": f"rec{k}", "uri": f"rec{k}.ogg", "text": text, "language": "en"})
    (inp / "long.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    clip_refs, lines = {}, []
    for e in demo_corpus.entries():
        (inp / e["uri"]).write_bytes((demo_corpus.CORPUS_DIR / e["uri"]).read_bytes())
        clip_refs[e["audio_id"]] = e["text"]
        lines.append({"audio_id": e["audio_id"], "uri": e["uri"], "text": e["text"], "language": "en"})
    (inp / "clips.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    init_ray()
    backends = [("whisper tiny.en", list(args.overrides))]
    if args.nar:
        from operators.asr.granite_nar.tiny import build_tiny_checkpoint

        ckpt = build_tiny_checkpoint(tmp / "nar-tiny", seed=0)
        backends.append(("granite-nar tiny", ["asr.backend=granite-nar", f"asr.model.id={ckpt}",
                                              "asr.model.device=cpu", *args.overrides]))
    print(f"{args.recordings} recordings of {args.minutes:g} min (44.1 kHz stereo Ogg) + "
          f"{len(clip_refs)} clips; 2-core CPU box")
    header = (f"{'model':<18}{'cutting':<8}{'long WER':>10}{'clip WER':>10}{'model s':>9}{'heard s':>9}"
              f"{'of audio':>10}{'segments':>9}{'decode cpu/h':>13}{'vad cpu/h':>10}")
    print(header)
    for name, sets in backends:
        base = None
        for mode in args.modes.split(","):
            summary, long_rows = job(str(inp / "long.jsonl"), tmp / f"out-{name[:4]}-{mode}", sets, mode)
            _, clip_rows = job(str(inp / "clips.jsonl"), tmp / f"clips-{name[:4]}-{mode}", sets, mode)
            lw, le, ln = corpus_wer(long_rows, refs)
            cw, _, _ = corpus_wer(clip_rows, clip_refs)
            busy = summary.get("model_busy_seconds") or 0.0
            heard = summary.get("speech_seconds_kept") or 0.0
            audio = summary["audio_seconds"]
            cpu = summary.get("cpu_seconds_per_audio_hour") or {}
            segs = sum(len(r["segments"] or []) for r in long_rows.values())
            base = base or busy
            print(f"{name:<18}{mode:<8}{lw:>10.4f}{cw:>10.4f}{busy:>9.1f}{heard:>9.1f}{heard / audio:>10.2f}"
                  f"{segs:>9}{cpu.get('decode') or 0:>13.2f}{cpu.get('vad') or 0:>10.2f}"
                  f"   model time {busy / base:.2f} of none's; long {le}/{ln} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
