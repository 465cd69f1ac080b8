"""Revision diff: what changed between two model revisions' transcripts of the same audio.

    python -m pipelines.revdiff --old OUTPUT/<backend>/<model>/<rev-A> --new OUTPUT/<backend>/<model>/<rev-B> \
        [--top 20] [--json report.json]

A Ray Data hash join on audio_id; each block scores its rows (normalised text changed or not, word
errors of the new transcript against the old one) and returns counts plus its own top rows, so the
driver only merges small results. Reports rows in both, only in one, changed, the WER between
revisions, status changes, and the rows that changed most.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys

import pyarrow as pa

from operators.output.report import normalize, word_errors
from pipelines.cluster import ray_session, read_transcripts, transcript_files

COLUMNS = ["audio_id", "text", "status", "language"]
BLOCK_SCHEMA = pa.schema([("n", pa.int64()), ("changed", pa.int64()), ("errors", pa.int64()),
                          ("words", pa.int64()), ("became_error", pa.int64()), ("recovered", pa.int64()),
                          ("top", pa.string())])


def score_pairs(batch: pa.Table, top: int) -> pa.Table:
    n = changed = errors = words = became_error = recovered = 0
    heap: list = []
    for r in batch.to_pylist():
        n += 1
        old_ok, new_ok = r["status_old"] == "ok", r["status_new"] == "ok"
        became_error += int(old_ok and not new_ok)
        recovered += int(new_ok and not old_ok)
        lang = r.get("language_new") or r.get("language_old")
        old, new = r["text_old"] or "", r["text_new"] or ""
        if normalize(old, lang) == normalize(new, lang) and old_ok == new_ok:
            continue
        changed += 1
        e, w = word_errors(old, new, lang)
        errors, words = errors + e, words + w
        score = e / w if w else float(bool(normalize(new, lang)))
        item = (score, e, r["audio_id"], old, new)
        if len(heap) < top:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)
    return pa.Table.from_pylist([{
        "n": n, "changed": changed, "errors": errors, "words": words, "became_error": became_error,
        "recovered": recovered, "top": json.dumps(sorted(heap, reverse=True))}], schema=BLOCK_SCHEMA)


def _read(files: list[str], storage_options: dict | None, suffix: str):
    ds = read_transcripts(files, storage_options, COLUMNS)
    return ds.rename_columns({c: f"{c}_{suffix}" for c in COLUMNS if c != "audio_id"})


def run_diff(old: str, new: str, top: int = 20, storage_options: dict | None = None,
             address: str | None = None) -> dict:
    old_files, new_files = transcript_files(old, storage_options), transcript_files(new, storage_options)
    with ray_session(address):
        old_ds, new_ds = _read(old_files, storage_options, "old"), _read(new_files, storage_options, "new")
        n_old, n_new = old_ds.count(), new_ds.count()
        joined = old_ds.join(new_ds, join_type="inner", on=("audio_id",),
                             num_partitions=max(1, min(64, len(old_files) + len(new_files))))
        scored = joined.map_batches(score_pairs, fn_kwargs={"top": top}, batch_format="pyarrow",
                                    batch_size=None, num_cpus=0.5)
        totals = dict.fromkeys(["n", "changed", "errors", "words", "became_error", "recovered"], 0)
        best: list = []
        for b in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            for r in b.to_pylist():
                for k in totals:
                    totals[k] += r[k]
                best += [tuple(x) for x in json.loads(r["top"])]
    best = sorted(best, reverse=True)[:top]
    return {
        "old": old, "new": new, "rows_old": n_old, "rows_new": n_new, "rows_in_both": totals["n"],
        "only_in_old": n_old - totals["n"], "only_in_new": n_new - totals["n"],
        "rows_changed": totals["changed"], "became_error": totals["became_error"],
        "recovered_from_error": totals["recovered"],
        "wer_new_vs_old": totals["errors"] / totals["words"] if totals["words"] else 0.0,
        "most_changed": [{"audio_id": a, "wer": s, "word_errors": e, "old": o, "new": n}
                         for s, e, a, o, n in best],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.revdiff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", help="write the full report here (local path)")
    args = p.parse_args(argv)
    try:
        r = run_diff(args.old, args.new, args.top)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k in ("rows_old", "rows_new", "rows_in_both", "only_in_old", "only_in_new", "rows_changed",
              "became_error", "recovered_from_error"):
        print(f"{k:<22} {r[k]}")
    print(f"{'wer_new_vs_old':<22} {r['wer_new_vs_old']:.4f}")
    for m in r["most_changed"]:
        print(f"\n{m['audio_id']}  WER {m['wer']:.3f}\n  old: {m['old'][:160]}\n  new: {m['new'][:160]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
