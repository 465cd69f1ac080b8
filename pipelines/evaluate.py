"""Evaluation of transcripts that have references: WER/CER per model, dataset and language, a table in
the style of the Open ASR leaderboard, and a report folder with plots.

    python -m pipelines.evaluate --input OUTPUT [--report DIR] [--dataset-from prefix|column:NAME]

OUTPUT may hold several backends/models/revisions (the job's layout); each is a row of the table.
Scores are computed per row in Ray tasks (jiwer on normalised text: Whisper's English normaliser for
English, its basic normaliser otherwise); only numbers reach the driver.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from operators import storage
from operators.output.report import normalize
from pipelines.cluster import ray_session, read_transcripts, transcript_files

SCORE_SCHEMA = pa.schema([
    ("system", pa.string()), ("dataset", pa.string()), ("language", pa.string()),
    ("duration_s", pa.float64()), ("word_errors", pa.int64()), ("words", pa.int64()),
    ("char_errors", pa.int64()), ("chars", pa.int64()), ("processed_at", pa.timestamp("ms", tz="UTC")),
])
DURATION_BUCKETS = [0, 5, 10, 20, 30, 60, 300, float("inf")]


def _dataset_of(row: dict, dataset_from: str) -> str:
    if dataset_from.startswith("column:"):
        return str(row.get(dataset_from.split(":", 1)[1]) or "unknown")
    return row["audio_id"].split("/", 1)[0] if "/" in row["audio_id"] else "default"


def score_rows(batch: pa.Table, dataset_from: str = "prefix") -> pa.Table:
    """Ray task: transcript rows with a reference -> one row of error counts each."""
    import jiwer

    out = []
    for r in batch.to_pylist():
        if r.get("status") != "ok" or not r.get("reference"):
            continue
        lang = r.get("language") or "en"
        ref, hyp = normalize(r["reference"], lang), normalize(r.get("text") or "", lang)
        if not ref:
            continue
        if hyp:
            w = jiwer.process_words(ref, hyp)
            c = jiwer.process_characters(ref, hyp)
            werr, words = w.substitutions + w.deletions + w.insertions, w.substitutions + w.deletions + w.hits
            cerr, chars = c.substitutions + c.deletions + c.insertions, c.substitutions + c.deletions + c.hits
        else:
            werr = words = len(ref.split())
            cerr = chars = len(ref)
        out.append({"system": f"{r.get('backend')}:{r.get('model')}@{r.get('model_revision')}",
                    "dataset": _dataset_of(r, dataset_from), "language": lang,
                    "duration_s": r.get("duration_s") or 0.0, "word_errors": werr, "words": words,
                    "char_errors": cerr, "chars": chars, "processed_at": r.get("processed_at")})
    return pa.Table.from_pylist(out, schema=SCORE_SCHEMA)


def _summaries(root: str, storage_options: dict | None) -> dict[str, dict]:
    """RTFx per system from the run summaries next to the output."""
    out = {}
    fs, path = storage.filesystem(root, storage_options)
    for p in fs.find(path):
        if p.endswith("/_summary.json"):
            with fs.open(p, "r") as f:
                s = json.load(f)
            out[f"{s.get('backend')}:{s.get('model')}@{s.get('model_revision')}"] = s
    return out


def aggregate(scores: list[dict]) -> dict:
    groups: dict = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0, 0, 0.0]))
    for s in scores:
        for key in ((s["dataset"], s["language"]), ("ALL", "*")):
            g = groups[s["system"]][key]
            g[0] += s["word_errors"]; g[1] += s["words"]; g[2] += s["char_errors"]  # noqa: E702
            g[3] += s["chars"]; g[4] += 1; g[5] += s["duration_s"]  # noqa: E702
    return {system: {f"{d}|{lang}": {"wer": g[0] / g[1] if g[1] else None, "cer": g[2] / g[3] if g[3] else None,
                                     "files": g[4], "hours": g[5] / 3600}
                     for (d, lang), g in keys.items()}
            for system, keys in groups.items()}


def leaderboard(metrics: dict, summaries: dict) -> str:
    datasets = sorted({k for m in metrics.values() for k in m if not k.startswith("ALL|")})
    head = ["system"] + [d.replace("|", " ") for d in datasets] + ["average WER", "corpus WER", "RTFx"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, m in sorted(metrics.items()):
        wers = [m[d]["wer"] for d in datasets if d in m and m[d]["wer"] is not None]
        cells = [f"{100 * m[d]['wer']:.2f}" if d in m and m[d]["wer"] is not None else "-" for d in datasets]
        rtfx = summaries.get(system, {}).get("rtfx")
        cells += [f"{100 * sum(wers) / len(wers):.2f}" if wers else "-",
                  f"{100 * m['ALL|*']['wer']:.2f}" if m["ALL|*"]["wer"] is not None else "-",
                  f"{rtfx:.1f}" if rtfx else "-"]
        lines.append("| " + " | ".join([system] + cells) + " |")
    return "\n".join(lines)


def plots(scores: list[dict], report: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    made = []
    for system in sorted({s["system"] for s in scores}):
        rows = [s for s in scores if s["system"] == system]
        tag = "".join(c if c.isalnum() or c in "-._" else "_" for c in system)[:80]
        durations = np.array([r["duration_s"] for r in rows])

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(durations, bins=min(40, max(5, len(rows) // 5)), color="#3b75af")
        ax.set(title=f"Duration of evaluated files\n{system}", xlabel="seconds", ylabel="files")
        fig.tight_layout()
        fig.savefig(report / f"duration_hist_{tag}.png", dpi=110)
        plt.close(fig)

        labels, wers, counts = [], [], []
        for lo, hi in zip(DURATION_BUCKETS, DURATION_BUCKETS[1:]):
            b = [r for r in rows if lo <= r["duration_s"] < hi]
            if b:
                labels.append(f"{lo:g}-{hi:g}s" if hi != float("inf") else f">{lo:g}s")
                wers.append(100 * sum(r["word_errors"] for r in b) / max(1, sum(r["words"] for r in b)))
                counts.append(len(b))
        fig, ax = plt.subplots(figsize=(7, 4))
        bars = ax.bar(labels, wers, color="#c8553d")
        for bar, n in zip(bars, counts):
            ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        ax.set(title=f"WER by duration\n{system}", xlabel="file duration", ylabel="WER %")
        fig.tight_layout()
        fig.savefig(report / f"wer_by_duration_{tag}.png", dpi=110)
        plt.close(fig)

        stamps = sorted((r["processed_at"], r["duration_s"]) for r in rows if r["processed_at"] is not None)
        if len(stamps) >= 2:
            t0 = stamps[0][0]
            secs = np.array([(t - t0).total_seconds() for t, _ in stamps])
            audio = np.cumsum([d for _, d in stamps])
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot(secs, audio / 60, drawstyle="steps-post", marker=".", color="#2e8540")
            span = max(secs[-1], 1e-3)
            ax.set(title=f"Throughput over the run: {audio[-1] / span:.1f} audio-s per s\n{system}",
                   xlabel="seconds since the first row was transcribed", ylabel="audio minutes done")
            fig.tight_layout()
            fig.savefig(report / f"throughput_{tag}.png", dpi=110)
            plt.close(fig)
        made += sorted(p.name for p in report.glob(f"*_{tag}.png"))
    return made


def run_evaluate(input_uri: str, report_dir: str | None = None, dataset_from: str = "prefix",
                 storage_options: dict | None = None, address: str | None = None) -> dict:
    files = transcript_files(input_uri, storage_options)
    with ray_session(address):
        ds = read_transcripts(files, storage_options)
        ds = ds.map_batches(score_rows, fn_kwargs={"dataset_from": dataset_from}, batch_format="pyarrow",
                            num_cpus=0.5)
        scores = []
        for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            scores += b.cast(SCORE_SCHEMA).to_pylist()
    metrics = aggregate(scores)
    summaries = _summaries(input_uri, storage_options)
    result = {"metrics": metrics, "table": leaderboard(metrics, summaries),
              "rtfx": {k: v.get("rtfx") for k, v in summaries.items()}}
    if report_dir:
        report = Path(report_dir)
        report.mkdir(parents=True, exist_ok=True)
        result["plots"] = plots(scores, report)
        (report / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (report / "table.md").write_text(result["table"] + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="the job's output (one or many model revisions)")
    p.add_argument("--report", help="folder for table.md, metrics.json and PNG plots (local)")
    p.add_argument("--dataset-from", default="prefix",
                   help="'prefix' (first path component of audio_id) or 'column:NAME'")
    args = p.parse_args(argv)
    try:
        r = run_evaluate(args.input, args.report, args.dataset_from)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(r["table"])
    for system, m in sorted(r["metrics"].items()):
        for key, v in sorted(m.items()):
            d, lang = key.split("|")
            wer = "-" if v["wer"] is None else f"{100 * v['wer']:.2f}"
            cer = "-" if v["cer"] is None else f"{100 * v['cer']:.2f}"
            print(f"{system}  {d:<20} {lang:<4} files={v['files']:<6} hours={v['hours']:.3f} WER={wer} CER={cer}")
    if args.report:
        print(f"report: {args.report} ({', '.join(r.get('plots', []))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
