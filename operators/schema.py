"""Row layouts between stages and the versioned output schema (one row per input file)."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "5"  # 2: task, target_language, translation; segments[].translation; source_version
#                       3: loop_suspected
#                       4: raw_text, words, speakers, tags_suspect (granite-plus); older files read
#                          with these as nulls
#                       5: coverage, segment_coverage (operators.asr.coverage); older files read with
#                          these as nulls

SEGMENT_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string()),
                          ("translation", pa.string())])

# granite-plus word timestamps / speaker turns, file times; speaker labels are per segment
# (`seg<j>-spk<n>`, operators.asr.words); start_s/end_s null where the task gives no times
WORD_TYPE = pa.struct([("word", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                       ("speaker", pa.string())])

# Per-row task overrides (null: the job's asr.task / asr.target_language / asr.keywords), carried from
# the manifest through decode to the ASR stage.
TASK_COLUMNS = ("task", "target_language", "keywords")

# Source rows: small, one per input file. audio_bytes is set only where the bytes come embedded
# (tar members, HF Parquet); otherwise decode fetches source_uri.
SOURCE_SCHEMA = pa.schema([
    ("audio_id", pa.string()),
    ("source_uri", pa.string()),
    ("audio_bytes", pa.binary()),
    ("reference", pa.string()),
    ("language", pa.string()),
    ("source_error", pa.string()),  # set when the container itself could not be read
    ("source_version", pa.string()),  # "size:ETag" from the listing (audio globs), for change detection
    ("task", pa.string()),
    ("target_language", pa.string()),
    ("keywords", pa.list_(pa.string())),
])

# Timing carried with the rows from decode through ASR to the writer, never written to Parquet. Each
# stage spreads its batch's figures over the batch's rows, so sums stay right however Ray Data cuts
# blocks; times are wall-clock epoch seconds.
DECODE_PERF = [
    ("perf_read_at", pa.float64()),        # the decode batch started (min over rows: first input read)
    ("perf_decode_cpu_s", pa.float64()),   # decode CPU seconds (fetch, decode, resample, plan)
    ("perf_decode_node", pa.string()),     # the Ray node that decoded the row
    ("perf_vad_cpu_s", pa.float64()),      # of which voice-activity detection
    ("perf_vad", pa.string()),             # the detector and where it ran ("silero on decode CPU")
    ("perf_speech_s", pa.float64()),       # seconds of audio kept for the model (speech and pads)
    ("perf_carried_bytes", pa.int64()),    # pcm16 bytes the row carried from decode to the ASR actors
    ("perf_fetch_retries", pa.int64()),    # transient fetch failures retried for this block, spread
]
ASR_PERF = [
    ("perf_asr_busy_s", pa.float64()),     # wall seconds inside backend calls
    ("perf_asr_cpu_s", pa.float64()),      # the actor's CPU seconds outside backend calls
    ("perf_asr_vad_cpu_s", pa.float64()),  # of which voice activity (segment.vad_on actor)
    ("perf_asr_vad_s", pa.float64()),      # wall seconds the actor spent finding speech
    ("perf_actor", pa.string()),           # node/host:pid of the ASR actor
    ("perf_actor_started", pa.float64()),  # it began loading its model
    ("perf_actor_ready", pa.float64()),    # its model was loaded
    ("perf_call_first", pa.float64()),     # its batch's first model call began
    ("perf_call_last", pa.float64()),      # its batch's last model call ended
    ("perf_asr_ooms", pa.float64()),       # device out-of-memory errors caught (batch figure, spread)
    ("perf_asr_splits", pa.float64()),     # batches halved: after one, or before a call over the cap
    ("perf_asr_cost_cap", pa.int64()),     # the actor's cap on a call's padded samples (null: none)
    ("perf_redecoded_segments", pa.int64()),  # the row's segments decoded a second time (lost speech)
    ("perf_redecode_audio_s", pa.float64()),  # the audio seconds those second tries gave the model
]
PERF_COLUMNS = tuple(name for name, _ in DECODE_PERF + ASR_PERF)
DECODE_PERF_COLUMNS = tuple(name for name, _ in DECODE_PERF)

# Decoded rows: 16 kHz mono 16-bit PCM plus planned segment boundaries (sample offsets).
DECODED_SCHEMA = pa.schema([
    ("audio_id", pa.string()),
    ("source_uri", pa.string()),
    ("source_version", pa.string()),
    ("reference", pa.string()),
    ("language", pa.string()),
    ("task", pa.string()),
    ("target_language", pa.string()),
    ("keywords", pa.list_(pa.string())),
    ("duration_s", pa.float64()),
    ("pcm16", pa.binary()),
    ("seg_start", pa.list_(pa.int64())),
    ("seg_end", pa.list_(pa.int64())),
    ("speech_start", pa.list_(pa.int64())),   # the kept file ranges (samples); pcm16 is them joined
    ("speech_end", pa.list_(pa.int64())),
    ("status", pa.string()),
    ("error", pa.string()),
    *DECODE_PERF,
])

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("audio_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string()),
        pa.field("source_version", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("language", pa.string()),
        pa.field("text", pa.string()),
        pa.field("segments", pa.list_(SEGMENT_TYPE)),
        pa.field("task", pa.string()),
        pa.field("target_language", pa.string()),
        pa.field("translation", pa.string()),
        pa.field("reference", pa.string()),
        pa.field("model", pa.string()),
        pa.field("model_revision", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("ctc_text", pa.string()),
        pa.field("agreement", pa.float64()),
        pa.field("loop_suspected", pa.bool_()),   # null where the backend does not detect loops
        pa.field("raw_text", pa.list_(pa.string())),  # granite-plus: output as generated, one per segment
        pa.field("words", pa.list_(WORD_TYPE)),        # granite-plus speakers/timestamps tasks
        pa.field("speakers", pa.list_(pa.list_(pa.string()))),  # speaker labels per segment
        pa.field("tags_suspect", pa.bool_()),          # the tags needed repairs (null: no tags asked)
        pa.field("coverage", pa.float64()),            # share of the speech the transcript covers (null: unknown)
        pa.field("segment_coverage", pa.list_(pa.float64())),  # the same per segment (aligned with segments)
        pa.field("processed_at", pa.timestamp("ms", tz="UTC")),
    ],
    metadata={b"granite_transcribe.schema_version": SCHEMA_VERSION.encode()},
)

# what the ASR stage hands the writer: the output row plus the timing above
ASR_OUT_SCHEMA = pa.schema(list(OUTPUT_SCHEMA) + [pa.field(n, t) for n, t in DECODE_PERF + ASR_PERF],
                           metadata=OUTPUT_SCHEMA.metadata)

OK = "ok"
ERROR = "error"
# an ok row whose `coverage` is below this is flagged: the summary's low_coverage_rows and the default of
# FilterRules.min_coverage (operators.asr.coverage computes it and re-exports this)
COVERAGE_FLAG_BELOW = 0.9


def error_text(kind: str, message: str) -> str:
    """The `error` column: 'kind: message' with a short, single-line message."""
    message = " ".join(str(message).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{kind}: {message}"


def error_kind(error: str | None) -> str | None:
    return None if error is None else error.split(":", 1)[0]
