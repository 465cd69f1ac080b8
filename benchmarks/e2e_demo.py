"""End-to-end RTFx of the demo corpus with the Whisper backend, side by side with the model alone.

    python benchmarks/e2e_demo.py [--long-seconds 240] [--repeat 1]

e2e:   the whole job (local S3 server, local Ray cluster, decode tasks, ASR actor, Parquet writes),
       wall time from listing to the last file written, audio seconds / wall seconds.
model: the same backend and batch size on the same segments in one process, no Ray, no I/O.
The ratio e2e/model is the share of the model's speed the pipeline keeps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.asr import load_backend  # noqa: E402
from operators.config import load_config  # noqa: E402
from operators.audio.segment import plan_segments  # noqa: E402
from pipelines import demo_corpus  # noqa: E402
from pipelines.demo import BUCKET, CONFIG, stage_corpus  # noqa: E402
from pipelines.local_s3 import LocalS3  # noqa: E402
from pipelines.transcribe import run  # noqa: E402


def model_only(cfg, long_s: float) -> tuple[float, float]:
    clips = [demo_corpus.load(e) for e in demo_corpus.entries()]
    import io

    import soundfile as sf

    long_audio, _ = sf.read(io.BytesIO(demo_corpus.build_long_file(long_s)[0]), dtype="float32")
    segs = []
    for audio in clips + [long_audio]:
        starts, ends = plan_segments(audio, cfg.segment)
        segs += [audio[s:e] for s, e in zip(starts, ends)]
    segs.sort(key=len)
    backend = load_backend(cfg.asr.backend, cfg.asr.model)
    backend.transcribe(segs[:2], [None, None])  # warm
    t = time.perf_counter()
    for i in range(0, len(segs), cfg.asr.batch_size):
        chunk = segs[i:i + cfg.asr.batch_size]
        backend.transcribe(chunk, [None] * len(chunk))
    return sum(map(len, segs)) / 16000, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long-seconds", type=float, default=240.0)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    cfg = load_config(CONFIG, ["ray.progress_bars=false", *args.overrides])
    audio_s, model_t = model_only(cfg, args.long_seconds)
    with LocalS3() as s3:
        os.environ.update(s3.env)
        s3.make_bucket(BUCKET)
        manifest = stage_corpus(s3, f"s3://{BUCKET}/corpus", args.long_seconds)
        job = load_config(CONFIG, ["ray.progress_bars=false", *args.overrides], **{
            "input.uri": manifest, "output.uri": f"s3://{BUCKET}/bench", "output.overwrite": True})
        result = run(job)
    print(f"\ndemo corpus: {result['files']} files, {result['audio_seconds']:.1f} s of audio, "
          f"{result['segments']} segments; backend {result['backend']} {result['model']}; "
          f"asr.batch_size={cfg.asr.batch_size}; {os.cpu_count()} CPUs, no GPU")
    print(f"{'':<8} {'wall s':>8} {'RTFx':>8}")
    print(f"{'e2e':<8} {result['wall_seconds']:8.2f} {result['rtfx']:8.1f}   (includes Ray start-up)")
    print(f"{'model':<8} {model_t:8.2f} {audio_s / model_t:8.1f}")
    print(f"e2e / model: {result['rtfx'] / (audio_s / model_t):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
