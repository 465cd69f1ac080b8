"""The transcription job: object storage in, Ray Data CPU decode, ASR actor pool, Parquet out.

    python -m pipelines.transcribe --config configs/demo.yaml --input s3://bucket/audio/ \
        --output s3://bucket/transcripts/ [--backend whisper] [--set asr.batch_size=8] [--overwrite]

Locally it starts a Ray cluster on loopback; under `ray job submit` (RAY_ADDRESS set) it joins that
cluster. The graph: source rows -> decode (tasks) -> ASR (actor pool) -> write (tasks) -> stats.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import resource
import sys
import threading
import time
from typing import Any

import pyarrow as pa
import yaml

from operators import retry, storage
from operators.audio import vad
from operators.io import runs, selection, sources
from operators.output import write
from operators.asr import check_model, resolve_identity, segment_lengths
from operators.asr.checks import ModelCheckError
from operators.asr.stage import ASRStage, BackendLoadError
from operators.audio.decode import Decoder, decode_task
from operators.config import ConfigError, JobConfig, SegmentConfig, load_config
from operators.output.report import STATS_SCHEMA, Summary, format_summary
from operators.schema import SOURCE_SCHEMA
from pipelines.cluster import ray_session

log = logging.getLogger("pipelines.transcribe")

MAX_SOURCE_BLOCKS = 512


def _split(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]


def _expand_units(batch: pa.Table, source: sources.Source) -> pa.Table:
    """Ray task: container units (tar shards, HF Parquet files) -> source rows; a unit that cannot be
    read becomes one error row (audio_id = the unit's id) instead of failing the job."""
    out = []
    for unit in batch["unit"].to_pylist():
        try:
            out.append(source.expand(unit))
        except Exception as e:  # noqa: BLE001 - reported as an error row
            out.append(sources.source_table([source.unit_id(unit)], [unit],
                                            errors=[f"{type(e).__name__}: {e}"]))
    return pa.concat_tables(out) if out else SOURCE_SCHEMA.empty_table()


def _resolve(ref: Any) -> Any:
    import ray

    return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref


def _drop_done(batch: pa.Table, done: Any) -> pa.Table:
    return sources.drop_done(batch, _resolve(done))


def _keep_only(batch: pa.Table, ids: Any) -> pa.Table:
    return selection.keep_only(batch, _resolve(ids))


class JobFailed(RuntimeError):
    """The job cannot go on (its workers cannot run the model): one line for the user."""


def actor_failure(error: BaseException) -> str | None:
    """The one-line BackendLoadError inside whatever Ray raised on the driver, if that is the cause."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (BackendLoadError, storage.OutputError)):
            return str(e).splitlines()[0]
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    found = re.search(r"(?:BackendLoadError|OutputError): (.+)", str(error))
    return found.group(1).strip() if found else None


class PeakMemory:
    """The driver's peak private (anonymous) memory, sampled twice a second: unlike peak RSS it leaves
    out the pages of Ray's shared-memory object store that the driver happens to touch."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak_kib = interval_s, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-memory")

    @staticmethod
    def private_kib() -> int:
        try:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak_kib = max(self.peak_kib, self.private_kib())

    def start(self) -> "PeakMemory":
        self.peak_kib = self.private_kib()
        self._thread.start()
        return self

    def stop(self) -> float:
        self._done.set()
        self.peak_kib = max(self.peak_kib, self.private_kib())
        return self.peak_kib / 1024


class _HideActorFailureTrace(logging.Filter):
    """Ray Data logs the driver-side stack of a failed execution; when the cause is a backend that could
    not load, the job reports it in one line instead (JobFailed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not (error is not None and actor_failure(error))


def plan(cfg: JobConfig) -> dict:
    """Everything decided on the driver before any audio is read."""
    model_id, revision = resolve_identity(cfg.asr.backend, cfg.asr.model)
    out_dir = write.version_dir(cfg.output.uri, cfg.asr.backend, model_id, revision)
    return {"backend": cfg.asr.backend, "model": model_id, "model_revision": revision, "output": out_dir}


def describe(cfg: JobConfig, info: dict, source: sources.Source, units: pa.Table) -> dict:
    """The resolved plan (`--plan`): inputs, stages, resources, batch sizes, output; no audio read."""
    done = 0 if cfg.output.overwrite else len(write.done_ids(info["output"], cfg.output.storage_options))
    a, seg = cfg.asr, segment_config(cfg)
    inputs = {"uri": cfg.input.uri, "form": type(source).__name__, "listed": units.num_rows,
              "listed_as": "containers (rows known once read)" if source.expands else "files",
              "already_written_for_this_revision": done}
    # every file the listing saw and what it left out (other extensions, hidden names), by reason
    inputs.update({k.removeprefix("input_"): v for k, v in source.listing_report().items()})
    if not source.expands:
        inputs["to_transcribe"] = max(0, min(units.num_rows - done, cfg.input.limit or units.num_rows))
    return {
        "job": cfg.name, "run_id": info.get("run_id"), "schedule_slot": info.get("schedule_slot"),
        "input": inputs,
        "stages": [
            {"stage": "decode", "kind": "actor pool" if cfg.decode.min_actors else "ray tasks",
             "actors": f"{cfg.decode.min_actors}..{cfg.decode.max_actors or 'cluster CPUs'}"
             if cfg.decode.min_actors else None, "num_cpus": cfg.decode.num_cpus,
             "files_per_call": cfg.decode.batch_size, "max_duration_s": cfg.decode.max_duration_s,
             "vad": seg.vad, "vad_on": (seg.vad_on if seg.vad_on == segment_config(cfg, cpus_per_gpu=0).vad_on
                                        else f"{seg.vad_on}, or actor where decode shares GPU nodes with under "
                                        f"{vad.ACTOR_BELOW_CPUS_PER_GPU:g} CPUs per GPU (auto: decided when "
                                        "the job starts)"),
             "segment_target_s": seg.target_segment_s,
             "segment_max_s": seg.max_segment_s},
            {"stage": "asr", "kind": "actor pool", "backend": a.backend, "model": info["model"],
             "model_revision": info["model_revision"],
             "actors": a.num_actors if not a.max_actors else f"{a.num_actors}..{a.max_actors}",
             "num_gpus_per_actor": a.num_gpus, "num_cpus_per_actor": a.num_cpus,
             "files_per_batch": a.files_per_batch, "segments_per_model_call": a.batch_size,
             "concurrent_batches_per_actor": a.concurrent_batches, "max_tasks_in_flight_per_actor": a.tasks_in_flight},
            {"stage": "write", "kind": "ray tasks", "num_cpus": cfg.write.num_cpus, "max_tasks": cfg.write.tasks(a),
             "format": f"parquet ({cfg.write.compression})", "rows_per_file": cfg.write.rows_per_file},
        ],
        "output": {"dir": info["output"], "overwrite": cfg.output.overwrite},
    }


def build(cfg: JobConfig, info: dict, source: sources.Source, units: pa.Table):
    """The Ray Data graph over the listed `units`; `info` receives listing counts."""
    import ray

    done = pa.array([], pa.string())
    sel, opts = cfg.select, cfg.output.storage_options
    if cfg.output.overwrite or sel.mode == "all":
        info["removed_parquet_files"] = write.clear(info["output"], opts)
    else:
        done, info["transient_rows_to_retry"] = write.resume(info["output"], opts)
    info["skipped_already_done"] = 0
    info["select"] = sel.mode
    if sel.previous and storage.join(sel.previous, "") == storage.join(info["output"], ""):
        raise ConfigError("select.previous is this run's own output directory; point it at the earlier "
                          "revision's directory (a new revision writes beside it)")
    wanted = selection.weak_ids(sel, opts) if sel.mode == "weak" else None
    if wanted is not None:
        info["selected_weak_in_previous"] = len(wanted)

    if source.expands:
        info["inputs_listed"] = f"{units.num_rows} {type(source).__name__} units"
        ds = ray.data.from_arrow(_split(units, 1))
        ds = ds.map_batches(_expand_units, fn_kwargs={"source": source}, batch_size=1,
                            batch_format="pyarrow", num_cpus=cfg.decode.num_cpus)
        if sel.mode == "changed":
            raise ConfigError("select.mode=changed needs object sizes/ETags from the listing: use an "
                              "audio glob or prefix as input (tar shards and Parquet do not carry them)")
        if wanted is not None:
            ds = ds.map_batches(_keep_only, fn_kwargs={"ids": ray.put(wanted)}, batch_format="pyarrow",
                                batch_size=None, num_cpus=0.1)
        if len(done):
            info["skipped_already_done"] = f"{len(done)} ids written before (filtered while reading)"
            ds = ds.map_batches(_drop_done, fn_kwargs={"done": ray.put(done)}, batch_format="pyarrow",
                                batch_size=None, num_cpus=0.1)
        if cfg.input.limit:
            ds = ds.limit(cfg.input.limit)
    else:
        info["inputs_listed"] = units.num_rows
        units, dups = sources.dedupe(units)
        info["duplicate_ids_dropped"] = dups
        if dups:
            log.warning("%d rows repeat an audio_id already listed; the first of each is kept", dups)
        if wanted is not None:
            units = selection.keep_only(units, wanted)
        elif sel.mode == "changed":
            listed = units.num_rows
            units = selection.changed_rows(units, sel, opts)
            info["unchanged_since_previous"] = listed - units.num_rows
        before = units.num_rows
        units = sources.drop_done(units, done)
        info["skipped_already_done"] = before - units.num_rows
        if cfg.input.limit:
            units = units.slice(0, cfg.input.limit)
        if units.num_rows == 0:
            return None
        per_block = max(cfg.decode.batch_size, math.ceil(units.num_rows / MAX_SOURCE_BLOCKS))
        ds = ray.data.from_arrow(_split(units, per_block))

    nodes = _nodes()
    cfg = cfg.model_copy(update={"segment": segment_config(cfg, decode_apart(cfg, nodes), cpus_per_gpu(nodes[0]))})
    if cfg.decode.min_actors:
        compute, remote_args = decode_placement(cfg, nodes)
        ds = ds.map_batches(Decoder, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.decode.batch_size,
                            batch_format="pyarrow", num_cpus=cfg.decode.num_cpus, compute=compute,
                            **remote_args)
    else:
        ds = ds.map_batches(decode_task, fn_kwargs={"cfg": cfg}, batch_size=cfg.decode.batch_size,
                            batch_format="pyarrow", num_cpus=cfg.decode.num_cpus)
    ds = ds.map_batches(
        ASRStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.asr.files_per_batch,
        batch_format="pyarrow", num_cpus=cfg.asr.num_cpus, num_gpus=cfg.asr.num_gpus or None,
        compute=asr_compute(cfg))
    ds = ds.map_batches(
        write.write_block, fn_kwargs={
            "out_dir": info["output"], "storage_options": cfg.output.storage_options,
            "compression": cfg.write.compression, "job": cfg.name, "retry": cfg.retry.policy()},
        batch_size=cfg.write.rows_per_file or None, batch_format="pyarrow", num_cpus=cfg.write.num_cpus,
        # a bounded write stage: uncapped, Ray Data's allocator hands it every CPU the others leave
        # (the most downstream operator takes the leftover) and the decode pool is never let grow
        compute=ray.data.TaskPoolStrategy(size=cfg.write.tasks(cfg.asr)))
    return ds


def segment_config(cfg: JobConfig, decode_apart: bool = False, cpus_per_gpu: float | None = None) -> SegmentConfig:
    """cfg.segment with the backend's segment lengths where the user left them empty and the voice
    activity method and place resolved here, on the driver (`auto`: silero where installed, else
    energy; vad_on `auto`: the ASR actors where they take GPUs, decode shares their nodes and those
    are short of CPUs, vad.resolve_where; `decode_apart`: decode runs on CPU-only nodes, decode_apart();
    `cpus_per_gpu`: the GPU nodes' CPUs per GPU, cpus_per_gpu())."""
    try:
        method = vad.resolve_method(cfg.segment.vad)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    where = vad.resolve_where(cfg.segment.vad_on, method, cfg.asr.num_gpus, cfg.asr.model.device,
                              decode_apart, cpus_per_gpu)
    target, longest = segment_lengths(cfg.asr.backend)
    return cfg.segment.for_backend(target, longest).model_copy(update={"vad": method, "vad_on": where})


def _nodes() -> tuple[list, list]:
    """(the alive GPU nodes, the alive CPU-only nodes) of the running cluster, as ray.nodes() gives them."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpu_nodes = [n for n in nodes if n["Resources"].get("GPU", 0) > 0]
    cpu_only = [n for n in nodes if not n["Resources"].get("GPU", 0) and n["Resources"].get("CPU", 0) > 0]
    return gpu_nodes, cpu_only


def cpus_per_gpu(gpu_nodes: list) -> float | None:
    """The GPU nodes' CPUs over their GPUs (`_nodes()[0]`; None where the cluster has no GPU node yet)."""
    res = [n["Resources"] for n in gpu_nodes]
    return sum(r.get("CPU", 0.0) for r in res) / sum(r["GPU"] for r in res) if res else None


def decode_apart(cfg: JobConfig, nodes: tuple[list, list] | None = None) -> bool:
    """Whether decode runs apart from the GPU ASR actors, on CPU-only nodes (decode.avoid_gpu_nodes,
    where the cluster has both kinds); `nodes`: `_nodes()` where the caller has them."""
    gpu_nodes, cpu_only = nodes or _nodes()
    return bool(cfg.decode.avoid_gpu_nodes and cfg.asr.num_gpus and gpu_nodes and cpu_only)


def decode_placement(cfg: JobConfig, nodes: tuple[list, list] | None = None) -> tuple:
    """(actor pool strategy, ray remote args) of the decode stage: decode.min_actors..max_actors (empty
    max: what the eligible nodes' CPUs hold after the ASR actors' share). Where the ASR actors take
    GPUs and the cluster also has CPU-only nodes, decode actors stay off the GPU nodes
    (decode.avoid_gpu_nodes) so they never hold the CPUs an ASR actor needs: unlike short tasks, an
    actor keeps its CPUs for the whole job. `nodes`: `_nodes()` where the caller has them (the listing
    the segment config was resolved from)."""
    import ray

    d, a = cfg.decode, cfg.asr
    gpu_nodes, cpu_only = nodes = nodes or _nodes()
    remote_args: dict = {}
    if decode_apart(cfg, nodes):  # the same listing the selector below is built from
        remote_args["label_selector"] = {"ray.io/node-id": f"!in({','.join(n['NodeID'] for n in gpu_nodes)})"}
        cpus = sum(n["Resources"]["CPU"] for n in cpu_only)
    else:
        cpus = ray.cluster_resources().get("CPU", 1.0) - a.num_cpus * (a.max_actors or a.num_actors)
    longest = d.max_actors or int(cpus // d.num_cpus)
    longest = max(d.min_actors, longest)
    return ray.data.ActorPoolStrategy(min_size=d.min_actors, max_size=longest), remote_args


def asr_compute(cfg: JobConfig, size: int | None = None):
    """The ASR actor pool: asr.num_actors..max_actors actors (or `size`), each running
    asr.concurrent_batches calls at once in threads with one more batch queued."""
    import ray

    a = cfg.asr
    return ray.data.ActorPoolStrategy(
        min_size=size or a.num_actors, max_size=size or a.max_actors or a.num_actors,
        max_tasks_in_flight_per_actor=a.tasks_in_flight, max_concurrent_calls_per_actor=a.concurrent_batches,
        enable_true_multi_threading=a.concurrent_batches > 1)


def prepare(cfg: JobConfig, schedule_slot: str | None = None, check: bool = True):
    """Driver-side decisions, no Ray: identity, output location, run id, the checkpoint check, listing."""
    if not cfg.input.uri or not cfg.output.uri:
        raise ConfigError("input.uri and output.uri are required: pass --input URI --output URI")
    if check and cfg.asr.check_model:  # a missing or broken checkpoint is one line here, not a traceback
        log.info("model check: %s", check_model(cfg.asr.backend, cfg.asr.model))
    info = {"job": cfg.name, **plan(cfg)}
    if schedule_slot:
        info["schedule_slot"] = runs.resolve_slot(schedule_slot)
        info["run_id"] = runs.run_id(cfg, info["schedule_slot"])
    source = sources.make_source(cfg.input)
    try:
        # on the driver, before Ray starts: a bad input fails fast; a storage hiccup is retried
        units = retry.call(source.list_units, cfg.retry.policy())
    except retry.RetriesExhausted as e:
        raise sources.InputError(f"input {cfg.input.uri}: the storage did not answer ({e}); run the same "
                                 "command again when it does") from None
    except Exception as e:
        if storage.protocol_of(cfg.input.uri) != "file" and storage.is_auth_error(e):
            raise sources.InputError(
                f"input {cfg.input.uri}: access denied with the credentials from "
                f"{storage.credential_source(cfg.input.storage_options, 'input')}; check them (or "
                "input.storage_options)") from None
        raise
    info.update(source.listing_report())  # files seen / left out by reason: --plan and the summary
    if source.left_out.total:
        log.warning("the listing of %s left out %s; input.extensions lists what is taken",
                    cfg.input.uri, source.left_out.describe())
    return info, source, units


def run(cfg: JobConfig, schedule_slot: str | None = None) -> dict:
    """Run the job to the end; returns (and writes next to the output) the summary."""
    t0 = time.time()
    info, source, units = prepare(cfg, schedule_slot)
    if schedule_slot:
        runs.begin(info["output"], info["run_id"], info["schedule_slot"], cfg.output.storage_options)
    memory = PeakMemory().start()
    with ray_session(cfg.ray.address):
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.progress_bars
        ds = build(cfg, info, source, units)
        summary = Summary()
        if ds is not None:
            quiet = _HideActorFailureTrace()
            ray_data_log = logging.getLogger("ray.data.exceptions")
            ray_data_log.addFilter(quiet)
            try:
                for stats in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    summary.add(stats.cast(STATS_SCHEMA))
            except Exception as e:
                reason = actor_failure(e)
                if reason:
                    raise JobFailed(reason) from None
                raise
            finally:
                ray_data_log.removeFilter(quiet)
        result = summary.as_dict(time.time() - t0, job_started=t0, **info)  # excludes shutting Ray down
        result["driver_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["driver_peak_private_mib"] = memory.stop()
    write.write_json(result, storage.join(info["output"], write.SUMMARY_NAME), cfg.output.storage_options)
    if schedule_slot:
        runs.finish(info["output"], info["run_id"], info["schedule_slot"], result, cfg.output.storage_options)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.transcribe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="job profile YAML (configs/*.yaml)")
    p.add_argument("--input", help="manifest, audio glob/prefix, tar shards or HF Parquet (input.uri)")
    p.add_argument("--output", help="output directory (output.uri)")
    p.add_argument("--backend", help="ASR backend (asr.backend)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set asr.batch_size=8 (repeatable)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="redo every input of this model revision instead of resuming")
    p.add_argument("--limit", type=int, help="take only the first N inputs (input.limit)")
    p.add_argument("--schedule-slot", metavar="SLOT",
                   help="scheduled runs: @hourly, @daily, @weekly, @monthly (the current UTC period) or "
                        "a literal name; a run that completed for this config and slot is not repeated")
    p.add_argument("--select", choices=["missing", "all", "weak", "changed"],
                   help="which inputs to transcribe (select.mode; default missing = resume)")
    p.add_argument("--previous", metavar="DIR",
                   help="an earlier revision's output directory, for --select weak/changed (select.previous)")
    p.add_argument("--plan", action="store_true",
                   help="print the resolved plan (inputs, stages, resources, output) and exit; reads no audio")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, **{
            "input.uri": args.input, "output.uri": args.output, "asr.backend": args.backend,
            "output.overwrite": args.overwrite, "input.limit": args.limit, "select.mode": args.select,
            "select.previous": args.previous})
        if args.plan:
            info, source, units = prepare(cfg, args.schedule_slot, check=False)
            doc = describe(cfg, info, source, units)
            try:
                doc["stages"][1]["model_check"] = "ok: " + check_model(cfg.asr.backend, cfg.asr.model)
            except ModelCheckError as e:
                doc["stages"][1]["model_check"] = f"error: {e}"
            print(yaml.safe_dump(doc, sort_keys=False))
            return 0
        result = run(cfg, args.schedule_slot)
    except (ConfigError, sources.InputError, FileNotFoundError, ModelCheckError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"error: {e} (the workers' logs: the Ray session's logs folder, /tmp/ray/session_latest/logs "
              "on a local run)", file=sys.stderr)
        return 1
    except runs.AlreadyRan as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 0
    print(format_summary(result))
    print(f"summary: {storage.join(result['output'], write.SUMMARY_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
