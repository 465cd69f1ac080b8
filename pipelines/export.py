"""Labeling exports: transcripts (one model revision's Parquet output) -> training data.

    python -m pipelines.export --input OUTPUT/whisper/<model>/<revision> --format nemo|hf|wds|srt|vtt|rttm \
        --output URI [--audio-dir URI] [--min-duration 1 --max-duration 30 --min-cps 2 --max-cps 25 \
        --min-agreement 0.9 --languages en,fr ...]

Streams on Ray Data: each block is filtered and written by a task (one file per block) that returns
counts; the driver only sums them. Prints what each filter removed and writes `_export_summary.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from operators import storage
from operators.labeling.export import EXPORT_STATS, WRITERS
from operators.labeling.filters import REASONS, FilterRules
from operators.output.write import write_json
from pipelines.cluster import ray_session, read_transcripts, transcript_files


def run_export(input_dir: str, fmt: str, output: str, rules: FilterRules, audio_dir: str | None = None,
               rows_per_file: int = 1000, storage_options: dict | None = None,
               address: str | None = None) -> dict:
    files = transcript_files(input_dir, storage_options)
    with ray_session(address):
        t0 = time.time()
        ds = read_transcripts(files, storage_options)
        kwargs = {"out_dir": output, "rules": rules, "storage_options": storage_options}
        if fmt == "nemo":
            kwargs["audio_dir"] = audio_dir
        ds = ds.map_batches(WRITERS[fmt], fn_kwargs=kwargs, batch_size=rows_per_file,
                            batch_format="pyarrow", num_cpus=0.5)
        kept, audio_s, files_out, dropped = 0, 0.0, 0, Counter()
        for stats in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for r in stats.cast(EXPORT_STATS).to_pylist():
                kept += r["kept"]
                audio_s += r["audio_s"]
                files_out += 1 if r["path"] else 0
                dropped.update(json.loads(r["dropped"]))
    order = list(REASONS) + sorted(set(dropped) - set(REASONS))
    summary = {"format": fmt, "input": input_dir, "output": output, "kept": kept,
               "kept_audio_hours": audio_s / 3600, "dropped": {k: dropped[k] for k in order if dropped[k]},
               "files_written": files_out, "rules": rules.model_dump(), "wall_seconds": time.time() - t0}
    write_json(summary, storage.join(output, "_export_summary.json"), storage_options)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="a model revision's output directory")
    p.add_argument("--format", required=True, choices=sorted(WRITERS))
    p.add_argument("--output", required=True)
    p.add_argument("--audio-dir", help="nemo: where to write audio that lives inside tar/Parquet containers")
    p.add_argument("--rows-per-file", type=int, default=1000)
    p.add_argument("--min-duration", type=float, default=0.0)
    p.add_argument("--max-duration", type=float)
    p.add_argument("--min-cps", type=float, default=0.0, help="min characters per second")
    p.add_argument("--max-cps", type=float, help="max characters per second")
    p.add_argument("--min-agreement", type=float)
    p.add_argument("--languages", help="comma-separated allowlist, e.g. en,fr")
    p.add_argument("--max-compression-ratio", type=float, default=2.4)
    p.add_argument("--max-ngram-repeats", type=int, default=4)
    p.add_argument("--keep-loops", action="store_true",
                   help="keep rows the backend flagged loop_suspected (dropped by default)")
    p.add_argument("--keep-empty", action="store_true")
    p.add_argument("--keep-suspect-tags", action="store_true",
                   help="keep rows whose word/speaker tags needed repairs (granite-plus tags_suspect)")
    p.add_argument("--no-timestamp-check", action="store_true",
                   help="keep rows whose word times fail the sanity check (monotonic, inside the segment)")
    p.add_argument("--max-words-per-s", type=float, default=8.0,
                   help="word timestamps with more words per second of segment audio are implausible")
    args = p.parse_args(argv)
    rules = FilterRules(min_duration_s=args.min_duration, max_duration_s=args.max_duration,
                        min_chars_per_s=args.min_cps, max_chars_per_s=args.max_cps,
                        min_agreement=args.min_agreement,
                        languages=args.languages.split(",") if args.languages else None,
                        max_compression_ratio=args.max_compression_ratio,
                        max_ngram_repeats=args.max_ngram_repeats, keep_empty=args.keep_empty,
                        drop_loop_suspected=not args.keep_loops, drop_tags_suspect=not args.keep_suspect_tags,
                        check_timestamps=not args.no_timestamp_check, max_words_per_s=args.max_words_per_s)
    try:
        s = run_export(args.input, args.format, args.output, rules, args.audio_dir, args.rows_per_file)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"kept {s['kept']} rows ({s['kept_audio_hours']:.3f} h) in {s['files_written']} files -> {s['output']}")
    for reason, n in s["dropped"].items():
        print(f"  dropped {n:>8}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
