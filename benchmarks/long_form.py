"""Long recordings: WER and model time with each way of cutting, side by side on the same files.

    python benchmarks/long_form.py [--minutes 5] [--recordings 2] [--nar]

The recordings are what archives hold (pipelines.demo_corpus.build_recording): the espeak-ng corpus's
sentences in a seeded order with uneven pauses (0.3-2.5 s), a long silence (6-15 s) every sixth
sentence, 20 s of synthetic music in the middle of every second recording, a faint noise floor, 44.1 kHz
stereo Ogg Vorbis. The same sentences as short clips (the corpus itself) give the clip WER next to it.

The long recordings and the clips run as separate jobs (so model seconds are the long files' own).
Each recording goes through the whole job (local Ray, Ray Data decode actors, the ASR actor, Parquet)
with `segment.vad` none (today's cutter: all audio, cut at the quietest point before 30 s), energy,
and silero (`--modes`; `silero@actor`: silero on the ASR actor, segment.vad_on actor), printing per mode:
corpus WER, model_busy_seconds (time inside the model), the audio the model heard, segments, and the
decode CPU and the VAD CPU (wherever it ran) per audio-hour.

Models: the offline Whisper tiny.en (the demo's model) for WER; with --nar also granite-nar on a tiny
random checkpoint for the model seconds only (its text is noise).

    python benchmarks/long_form.py --dense [--minutes 5] [--recordings 2] [--set ...]

Dense speech (issue 18; pipelines.demo_corpus.build_dense_recording): the same sentences, their own
silence trimmed, with pauses of 0.4-1.0 s (none reaches segment.min_silence_s, so voice activity sees
one long region), the second recording with a 20 s stretch of no pause at all; 44.1 kHz stereo Ogg.
Side by side in one run on the same files: the job (silero, the shipped defaults), faster-whisper's own
long-form decoding of the file (`WhisperModel.transcribe`: its defaults, temperature fallback,
conditioned on the previous text), and the same sentences as clips (a clips job, each clip counted as
often as the recording holds it), each with the same beam size (`--job-beams`, default 1 (the demo's
greedy decoding) and 5 (faster-whisper's default)). Per recording: WER,
sentences missing (more than half of a sentence's words deleted in the alignment: left out), sentences
garbled (fewer than a quarter of its words right: left out or misrecognised), the job's segments,
segments re-decoded and the extra model audio seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.config import load_config  # noqa: E402
from operators.output.report import word_errors  # noqa: E402
from pipelines import demo_corpus  # noqa: E402
from pipelines.cluster import init_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "energy", "silero")


def job(input_uri: str, out: Path, backend_sets: list[str], mode: str) -> tuple[dict, dict]:
    from pipelines.transcribe import run

    import pyarrow.parquet as pq

    method, _, where = mode.partition("@")   # silero@actor: segment.vad silero, segment.vad_on actor
    place = [f"segment.vad_on={where}"] if where else []
    cfg = load_config(ROOT / "configs" / "demo.yaml", [*backend_sets, f"segment.vad={method}", *place,
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


def fw_long_form(path: Path, beam_size: int) -> str:
    """faster-whisper's own long-form decoding of the whole file (the model the job uses)."""
    import faster_whisper

    from operators.asr.whisper import _bundled_model_dir

    global _FW
    if _FW is None:
        _FW = faster_whisper.WhisperModel(str(_bundled_model_dir()), device="cpu", compute_type="int8")
    segs, _ = _FW.transcribe(str(path), language="en", beam_size=beam_size)
    return " ".join(s.text.strip() for s in segs)


_FW = None


def dense(args, tmp: Path) -> int:
    import soundfile as sf

    inp = tmp / "dense"
    inp.mkdir()
    pools = {"corpus": [(demo_corpus.load(e), e["text"]) for e in demo_corpus.entries()],
             "heldout": demo_corpus.held_out_clips()}
    recs, lines, clip_lines, clip_id = {}, [], [], {}
    for voices in args.voices.split(","):
        pool = pools[voices]
        for k in range(args.recordings):
            data, sentences, _ = demo_corpus.build_dense_recording(
                args.minutes * 60, seed=100 + k, no_pause_s=20.0 if k % 2 else 0.0, clips=pool)
            name = f"{voices}{k}"
            (inp / f"{name}.ogg").write_bytes(data)
            recs[name] = sentences
            lines.append({"audio_id": name, "uri": f"{name}.ogg", "text": " ".join(sentences), "language": "en"})
        for j, (audio, text) in enumerate(pool):  # the same sentences as clips (16 kHz FLAC)
            clip_id[text] = f"{voices}-clip{j:02d}"
            sf.write(inp / f"{clip_id[text]}.flac", audio, demo_corpus.SR, format="FLAC", subtype="PCM_16")
            clip_lines.append({"audio_id": clip_id[text], "uri": f"{clip_id[text]}.flac", "text": text,
                               "language": "en"})
    (inp / "long.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (inp / "clips.jsonl").write_text("\n".join(json.dumps(x) for x in clip_lines) + "\n")
    init_ray()
    jobs = {}
    for beam in (int(b) for b in args.job_beams.split(",")):
        sets = [*args.overrides, f"asr.model.options.beam_size={beam}"]
        summary, rows = job(str(inp / "long.jsonl"), tmp / f"out-dense-{beam}", sets, "silero")
        _, clip_rows = job(str(inp / "clips.jsonl"), tmp / f"clips-dense-{beam}", sets, "silero")
        jobs[beam] = summary, rows, {t: clip_rows[i]["text"] or "" for t, i in clip_id.items()}
    print(f"{args.recordings} dense recordings of {args.minutes:g} min per voice set ({args.voices}; pauses "
          f"0.4-1.0 s; odd ones with a 20 s stretch of no pause), 44.1 kHz stereo Ogg; 2-core CPU box")
    print(f"{'recording':<10}{'decoding':<36}{'WER':>8}{'errors':>10}{'missing':>9}{'garbled':>9}{'segments':>9}")
    totals: dict[str, list[int]] = {}

    def line(rec: str, name: str, hyp: str, extra: str = "") -> None:
        ref = " ".join(recs[rec])
        e, n = word_errors(ref, hyp)
        miss = demo_corpus.missing_sentences(recs[rec], hyp)
        garbled = demo_corpus.garbled_sentences(recs[rec], hyp)
        t = totals.setdefault(name, [0, 0, 0, 0])
        t[0], t[1], t[2], t[3] = t[0] + e, t[1] + n, t[2] + len(miss), t[3] + len(garbled)
        print(f"{rec:<10}{name:<36}{e / max(1, n):>8.4f}{f'{e}/{n}':>10}{len(miss):>9}{len(garbled):>9}{extra}")

    for rec in recs:
        for beam, (_, rows, by_text) in jobs.items():
            r = rows[rec]
            cov = r.get("coverage")
            line(rec, f"job (silero) beam {beam}", r["text"] or "",
                 f"{len(r['segments'] or []):>9}" + (f"   coverage {cov:.3f}" if cov is not None else ""))
        for beam in jobs:
            line(rec, f"faster-whisper long-form beam {beam}", fw_long_form(inp / f"{rec}.ogg", beam))
        for beam, (_, _, by_text) in jobs.items():
            line(rec, f"same sentences as clips beam {beam}", " ".join(by_text[s] for s in recs[rec]))
    print("all recordings:")
    for name, (e, n, miss, garbled) in totals.items():
        print(f"{'':<10}{name:<36}{e / max(1, n):>8.4f}{f'{e}/{n}':>10}{miss:>9}{garbled:>9}")
    for beam, (summary, _, _) in jobs.items():
        print(f"job beam {beam}: model_busy_seconds {summary.get('model_busy_seconds') or 0:.1f}, segments "
              f"{summary.get('segments')}, re-decoded segments {summary.get('redecoded_segments')}, "
              f"extra model audio s {summary.get('redecode_audio_seconds')}, "
              f"low-coverage rows {summary.get('low_coverage_rows')}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--recordings", type=int, default=2)
    ap.add_argument("--nar", action="store_true", help="also time granite-nar (tiny random checkpoint)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides, every run")
    ap.add_argument("--modes", default=",".join(MODES), help="segment.vad values to compare; METHOD@actor "
                    "runs it on the ASR actor (segment.vad_on), e.g. silero,silero@actor")
    ap.add_argument("--voices", default="corpus,heldout", help="--dense: corpus (the committed clips' "
                    "voice) and/or heldout (other espeak-ng voices and sentences, spoken at run time)")
    ap.add_argument("--job-beams", default="1,5", help="--dense: beam sizes to run the job (and "
                    "faster-whisper's long form, and the clips) with")
    ap.add_argument("--dense", action="store_true", help="dense speech (issue 18): the job against "
                    "faster-whisper's own long-form decoding and the clips, on the same files")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="long_form_"))
    if args.dense:
        return dense(args, tmp)
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
    header = (f"{'model':<18}{'cutting':<14}{'long WER':>10}{'clip WER':>10}{'model s':>9}{'heard s':>9}"
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
            vad_cpu = (cpu.get("vad") or 0) + (cpu.get("asr_actor_vad") or 0)   # wherever it ran
            print(f"{name:<18}{mode:<14}{lw:>10.4f}{cw:>10.4f}{busy:>9.1f}{heard:>9.1f}{heard / audio:>10.2f}"
                  f"{segs:>9}{cpu.get('decode') or 0:>13.2f}{vad_cpu:>10.2f}"
                  f"   model time {busy / base:.2f} of none's; long {le}/{ln} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
