"""One prepared device check for a GPU machine lent for a few minutes, with no network and no index.

On such a machine (torch, transformers, safetensors, tokenizers, numpy, pyarrow and pytest present;
no Ray, no soundfile/soxr), with the wheels that `make gpu-deps` (benchmarks/gpu_deps.sh) put in
.gpu_deps beforehand, from the repository root:

    python -m pip install --no-index --find-links .gpu_deps --target /tmp/gd pydantic pyyaml rapidfuzz 2>/dev/null; python -m pip install --no-index --no-deps --find-links .gpu_deps --target /tmp/gd silero-vad 2>/dev/null; PYTHONPATH=/tmp/gd:. python benchmarks/gpu_check.py --out $OUT

Where the project's own dependencies are installed: `python benchmarks/gpu_check.py --out DIR`.
On a CPU, `--dry-run` runs every phase with the tiny random model and small batches (make test does).

Each phase runs in its own subprocess of this script (`--phase NAME`) under its own time cap, so a
hang, an out-of-memory error or a sticky CUDA error in one cannot take the others down; after every
phase DIR/gpu_check.json is rewritten with what is known so far (a phase's partial figures included),
and a short table is printed at the end. Caps sum to 470 s (about 8 minutes on an H100/H200):

    preflight   versions, GPU, memory, TF32 flags, attention kernels, resolve_backend("auto")
    model       the full-size 2.25B NAR, random weights, bf16, batch 128, on production-like (20-32 s)
                and LibriSpeech-like (2-35 s, mean ~12 s) clips, hypotheses forced to ~3 tokens per
                second of audio: RTFx per attention backend, encoder / projector / editor / heads
                split, peak memory
    backend     GraniteNarBackend.transcribe on the same clips: host seconds outside the model per
                batch of 128 (prepare / run / finish)
    long        128 x 60 s and 256 x 60 s through the backend (peak memory or OOM), then the ASR
                stage's out-of-memory halving under a memory cap that 256 x 60 s cannot fit
    invariance  token agreement batched vs alone vs reversed order, per backend, and across backends
    precision   fp32 (TF32 off) vs bf16 token agreement of hypotheses and edits
    tests       python -m pytest -m gpu (the test files that carry the gpu mark)
    stage       operators.asr.stage.ASRStage driven from asr.concurrent_batches threads (no Ray) on a
                few hundred decoded rows: busy fraction and end-to-end RTFx
    vad         silero (gated) and silero_full on one CPU thread and on CUDA over an hour of speech
                with pauses (segment.vad_on actor): seconds and host CPU per audio-hour, the share of a
                GPU at 4000x, regions against the CPU's (needs the silero-vad wheel: make gpu-deps)
    stage_vad   segment.vad_on decode vs actor through the ASR stage on the same two hours of those
                recordings: RTFx over the whole audio, the actor's voice-activity seconds, the decode
                side's planning CPU, same segments and text (decides whether vad_on auto -> actor pays)

Figures to compare with (batch 128): IBM's model card ~1820 RTFx on one H100; the fastest public
port ~3935 on an H100 and ~3951 on an H200 (torch.compile over length buckets).

Needs no Ray and no network; imports no soundfile, soxr, av, ray, fsspec, s3fs or silero_vad (the vad
phase finds the silero-vad package and loads its TorchScript file, nothing more); works
without rapidfuzz (a small Python edit distance instead). Random weights: the text is garbage, the
cost is real; agreement rates are reported, never asserted.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (phase, cap in seconds on a GPU); they sum to 470 s
PHASES = (("preflight", 20), ("model", 95), ("backend", 45), ("long", 60), ("invariance", 45),
          ("precision", 35), ("tests", 40), ("stage", 40), ("vad", 30), ("stage_vad", 60))
DRY_CAP_S = 60          # per phase in --dry-run (the whole dry run takes well under a minute and a half)
BUDGET_S = 500          # the parent never starts a phase past this (caps shrink to what is left)
REFERENCE_RTFX = {
    "ibm_model_card_h100_batch128": 1820,
    "fastest_public_port_h100": 3935,
    "fastest_public_port_h200": 3951,
}
FORBIDDEN = ("ray", "soundfile", "soxr", "av", "fsspec", "s3fs", "silero_vad")
BACKEND_ORDER = ("flash", "varlen", "sdpa_per_sample", "flex")   # flex last: its compile is slow
TOKENS_PER_S = 3.0      # forced hypothesis length: ~3 BPE tokens per second of speech
FRAME_HZ = 50           # encoder frames per second ("nar" features: one per 320 samples)
SR = 16_000
RESULT_FILE = "gpu_check.json"


# ==================================================================================================
# Parent: runs each phase in a subprocess, merges, prints
# ==================================================================================================
def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:] if text else ""


def _child_env() -> dict:
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in [str(Path(p).resolve()) for p in parts]:
        parts.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_parent(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [p for p, _ in PHASES] if not args.phases else [p.strip() for p in args.phases.split(",")]
    unknown = sorted(set(wanted) - {p for p, _ in PHASES})
    if unknown:
        print(f"unknown phases {unknown}; known: {[p for p, _ in PHASES]}", file=sys.stderr)
        return 2
    caps = {p: (DRY_CAP_S if args.dry_run else c) for p, c in PHASES}
    doc = {"meta": {"script": "benchmarks/gpu_check.py", "dry_run": args.dry_run, "seed": args.seed,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                    "host": platform.node(), "caps_s": caps, "budget_s": args.budget,
                    "reference_rtfx": REFERENCE_RTFX},
           "phases": {}}
    path = out / RESULT_FILE
    _atomic_json(path, doc)
    t_start = time.time()
    for name, _ in PHASES:
        if name not in wanted:
            continue
        left = args.budget - (time.time() - t_start)
        cap = min(caps[name], left - 3)
        if cap < 5:
            doc["phases"][name] = {"status": "skipped", "seconds": 0.0, "cap_s": caps[name],
                                   "error": f"budget: {left:.0f} s left of {args.budget} s", "result": {}}
            _atomic_json(path, doc)
            continue
        print(f"[gpu_check] {name} (cap {cap:.0f} s) ...", flush=True)
        doc["phases"][name] = _run_child(name, cap, args, out)
        doc["meta"]["elapsed_s"] = round(time.time() - t_start, 1)
        _atomic_json(path, doc)
    doc["meta"]["elapsed_s"] = round(time.time() - t_start, 1)
    doc["summary"] = summarise(doc)
    _atomic_json(path, doc)
    print_table(doc)
    print(f"[gpu_check] wrote {path}")
    return 0 if all(p["status"] == "ok" for p in doc["phases"].values()) else 1


def _run_child(name: str, cap: float, args, out: Path) -> dict:
    part = out / f"phase_{name}.json"
    log = out / f"phase_{name}.log"
    if part.exists():
        part.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--out", str(out),
           "--deadline", f"{time.time() + cap:.3f}", "--seed", str(args.seed)]
    if args.dry_run:
        cmd.append("--dry-run")
    t0 = time.time()
    status, error = None, None
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_child_env(),
                                cwd=str(ROOT), start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status, error = None, "timeout", f"killed after its {cap:.0f} s cap"
    seconds = round(time.time() - t0, 2)
    child = {}
    if part.exists():
        try:
            child = json.loads(part.read_text())
        except json.JSONDecodeError as e:
            child = {"status": "error", "error": f"unreadable phase file: {e}"}
    log_tail = _tail(log.read_text(errors="replace") if log.exists() else "", 3000)
    if status is None:
        status = child.get("status") if child.get("status") in ("ok", "error") else "error"
        if rc != 0 and status == "ok":
            status = "error"
        if status == "error":
            error = child.get("error") or f"exit status {rc}; log tail:\n{_tail(log_tail, 1500)}"
    entry = {"status": status, "seconds": seconds, "cap_s": round(cap, 1), "rc": rc, "error": error,
             "result": child.get("result", {})}
    if status != "ok":
        entry["log_tail"] = log_tail
    print(f"[gpu_check] {name}: {status} in {seconds:.1f} s" + (f" ({_one_line(error)})" if error else ""),
          flush=True)
    return entry


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _one_line(text, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else "..." + text[-n:]


def summarise(doc: dict) -> dict:
    """The headline figures, flat, for the table and the lead's RESULTS."""
    s: dict = {}
    ph = doc["phases"]
    r = ph.get("preflight", {}).get("result", {})
    s["gpu"] = r.get("gpu_name")
    s["auto_backend"] = r.get("resolve_auto_cuda_bf16")
    for clipset, runs in (ph.get("model", {}).get("result", {}).get("sets") or {}).items():
        for b, fig in (runs.get("backends") or {}).items():
            if isinstance(fig, dict) and fig.get("rtfx"):
                s[f"model_rtfx_{clipset}_{b}"] = fig["rtfx"]
    for clipset, fig in (ph.get("backend", {}).get("result", {}).get("sets") or {}).items():
        if isinstance(fig, dict):
            s[f"backend_host_s_per_128_{clipset}"] = fig.get("host_outside_model_s_per_128")
            s[f"backend_rtfx_{clipset}"] = fig.get("transcribe_rtfx")
    lr = ph.get("long", {}).get("result", {})
    for k in ("b128", "b256"):
        if isinstance(lr.get(k), dict):
            s[f"long_{k}_peak_gib"] = lr[k].get("peak_gib")
            s[f"long_{k}_status"] = lr[k].get("status")
    if isinstance(lr.get("oom_recovery"), dict):
        s["oom_recovery_all_ok"] = lr["oom_recovery"].get("all_ok")
        s["oom_recovery_splits"] = lr["oom_recovery"].get("splits")
    inv = ph.get("invariance", {}).get("result", {})
    for b, fig in (inv.get("backends") or {}).items():
        if isinstance(fig, dict) and "alone" in fig:
            s[f"invariance_exact_{b}"] = fig.get("exact")
    pr = ph.get("precision", {}).get("result", {})
    for b, fig in (pr.get("bf16_vs_fp32") or {}).items():
        if isinstance(fig, dict) and "edits" in fig:
            s[f"precision_edit_agreement_{b}"] = fig["edits"].get("token_agreement")
    s["tests"] = ph.get("tests", {}).get("result", {}).get("summary")
    st = ph.get("stage", {}).get("result", {})
    s["stage_rtfx_e2e"] = st.get("rtfx_e2e")
    s["stage_busy_fraction"] = st.get("busy_fraction")
    for name, fig in (ph.get("vad", {}).get("result", {}).get("runs") or {}).items():
        if isinstance(fig, dict) and "wall_s_per_audio_hour" in fig:
            s[f"vad_{name}_s_per_audio_hour"] = fig["wall_s_per_audio_hour"]
            s[f"vad_{name}_host_cpu_s_per_audio_hour"] = fig["host_cpu_s_per_audio_hour"]
    return s


def print_table(doc: dict) -> None:
    print()
    print(f"{'phase':<11} {'status':<8} {'seconds':>8}  headline")
    for name, p in doc["phases"].items():
        print(f"{name:<11} {p['status']:<8} {p['seconds']:>8.1f}  {_headline(name, p)}")
    print()
    ref = REFERENCE_RTFX
    print(f"compare (batch 128): IBM card ~{ref['ibm_model_card_h100_batch128']} RTFx on one H100; fastest "
          f"public port ~{ref['fastest_public_port_h100']} (H100), ~{ref['fastest_public_port_h200']} (H200), "
          "torch.compile over length buckets")
    if doc["meta"].get("dry_run"):
        print("(dry run: the tiny model on CPU; the figures above exercise the code paths only)")


def _headline(name: str, p: dict) -> str:
    r = p.get("result") or {}
    if p["status"] != "ok" and p.get("error"):
        return _one_line(p["error"], 90)
    try:
        if name == "preflight":
            return f"{r.get('gpu_name') or 'no GPU'}; torch {r.get('torch')}; auto -> {r.get('resolve_auto_cuda_bf16')}"
        if name == "model":
            bits = []
            for cs, runs in (r.get("sets") or {}).items():
                for b, f in (runs.get("backends") or {}).items():
                    if isinstance(f, dict) and f.get("rtfx"):
                        bits.append(f"{cs[:5]}/{b} {f['rtfx']:.0f}")
            return "RTFx " + ", ".join(bits)
        if name == "backend":
            return ", ".join(f"{cs[:5]}: host {f.get('host_outside_model_s_per_128')} s/128, RTFx "
                             f"{f.get('transcribe_rtfx')}" for cs, f in (r.get("sets") or {}).items()
                             if isinstance(f, dict))
        if name == "long":
            rec = r.get("oom_recovery") or {}
            return (f"128x60s {(r.get('b128') or {}).get('status')} {(r.get('b128') or {}).get('peak_gib')} GiB; "
                    f"256x60s {(r.get('b256') or {}).get('status')} {(r.get('b256') or {}).get('peak_gib')} GiB; "
                    f"recovery all ok {rec.get('all_ok')} splits {rec.get('splits')}")
        if name == "invariance":
            return ", ".join(f"{b} exact {f.get('exact')}" for b, f in (r.get("backends") or {}).items()
                             if isinstance(f, dict))
        if name == "precision":
            return ", ".join(f"{b} edits {f['edits'].get('token_agreement')}" for b, f in
                             (r.get("bf16_vs_fp32") or {}).items() if isinstance(f, dict) and "edits" in f)
        if name == "tests":
            return str(r.get("summary"))
        if name == "vad":
            if r.get("skipped"):
                return _one_line(r["skipped"], 90)
            return ", ".join(f"{k} {f['wall_s_per_audio_hour']} s/h (cpu {f['host_cpu_s_per_audio_hour']})"
                             for k, f in (r.get("runs") or {}).items() if "wall_s_per_audio_hour" in f)
        if name == "stage":
            return (f"{r.get('rows_ok')}/{r.get('rows')} rows ok, RTFx {r.get('rtfx_e2e')}, busy "
                    f"{r.get('busy_fraction')}, {r.get('threads')} threads")
    except Exception as e:  # noqa: BLE001 - the table must never fail the run
        return f"(no headline: {e})"
    return ""


# ==================================================================================================
# Child: one phase
# ==================================================================================================
class Ctx:
    """What a phase needs: mode, device, its result dict (saved after every step), its deadline."""

    def __init__(self, args):
        self.name = args.phase
        self.dry = args.dry_run
        self.seed = args.seed
        self.out = Path(args.out)
        self.deadline = args.deadline or (time.time() + (DRY_CAP_S if self.dry else 600))
        self.t0 = time.time()
        self.result: dict = {"mode": "dry-run (tiny model, CPU)" if self.dry else "gpu"}
        self.problems: list[str] = []
        self.api_fallbacks: list[str] = []
        self.path = self.out / f"phase_{self.name}.json"
        self._status = "running"
        self._error = None

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.result["problems"] = self.problems
        self.result["api_fallbacks"] = self.api_fallbacks
        self.result["forbidden_imported"] = [m for m in FORBIDDEN if sys.modules.get(m) is not None]
        _atomic_json(self.path, {"phase": self.name, "status": self._status, "error": self._error,
                                 "seconds": round(time.time() - self.t0, 2), "result": self.result})

    def problem(self, where: str, e: BaseException) -> str:
        text = f"{where}: {type(e).__name__}: {_one_line(e, 300)}"
        self.problems.append(text)
        print(text, file=sys.stderr, flush=True)
        return text


def run_child(args) -> int:
    # as on the device, which has none of them: transformers.audio_utils would import soundfile and soxr
    # where they are installed, and the stage would take operators.audio.decode's PCM conversion
    for name in FORBIDDEN:
        sys.modules.setdefault(name, None)
    ctx = Ctx(args)
    ctx.save()
    fn = globals()[f"phase_{ctx.name}"]
    try:
        fn(ctx)
        ctx._status = "ok"
    except BaseException as e:  # noqa: BLE001 - recorded, the parent reads it
        ctx._status = "error"
        ctx._error = f"{type(e).__name__}: {e}\n{_tail(traceback.format_exc(), 2500)}"
        print(ctx._error, file=sys.stderr, flush=True)
    ctx.save()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if ctx._status == "ok" else 1)  # no interpreter teardown (CUDA, compile workers)


# --------------------------------------------------------------------------------------------------
# Shared helpers (imports inside: the parent never imports torch)
# --------------------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def device(ctx: Ctx):
    torch = _torch()
    if ctx.dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible; on a CPU run with --dry-run")
    return torch.device("cuda")


def model_dtype(ctx: Ctx):
    torch = _torch()
    return torch.float32 if ctx.dry else torch.bfloat16


def cuda_index(dev) -> int:
    """The device's ordinal: some torch.cuda calls (set_per_process_memory_fraction) refuse a bare "cuda"."""
    torch = _torch()
    return dev.index if dev.index is not None else torch.cuda.current_device()


def sync(dev) -> None:
    torch = _torch()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def nar_config(ctx: Ctx):
    if ctx.dry:
        from operators.asr.granite_nar.tiny import tiny_config

        return tiny_config()
    from operators.asr.granite_nar.config import NarConfig

    return NarConfig()


def build_model(ctx: Ctx, cfg, dev, dtype):
    """The tiny random model (dry run) or the full-size one with random weights, on `dev` in `dtype`."""
    torch = _torch()
    if ctx.dry:
        from operators.asr.granite_nar.tiny import random_model

        model = random_model(cfg, ctx.seed)
        if dtype != torch.float32:
            model = model.to(dtype)
            model.reset_buffers(dev)
        return model.to(dev)
    from operators.asr.granite_nar import modeling

    if hasattr(modeling, "build_random"):
        return modeling.build_random(cfg, dev, dtype, ctx.seed)
    ctx.api_fallbacks.append("modeling.build_random missing: built with torch.device + .to + reset_buffers")
    torch.manual_seed(ctx.seed)
    with torch.device(dev):
        model = modeling.GraniteSpeechNar(cfg)
    model = model.to(dtype)
    model.reset_buffers(dev)
    return model.eval().requires_grad_(False)


def cast_copy(model, dev, dtype):
    """The same weights in another dtype, non-persistent buffers re-created (RoPE stays fp32)."""
    other = copy.deepcopy(model).to(dtype)
    other.reset_buffers(dev)
    return other.eval().requires_grad_(False)


class ForcedHypotheses:
    """A forward hook on model.encoder replacing its CTC hypotheses with ~TOKENS_PER_S random ids per
    second of audio (random weights give arbitrary lengths, which would misstate the editor's cost).
    The ids depend only on the clip's frame count, so a clip's hypothesis never depends on its batch.
    `on = False` lets the encoder's own hypotheses through."""

    def __init__(self, model):
        cfg = model.config
        self.hi = int(min(cfg.blank_token_id, cfg.text_config.get("pad_token_id") or cfg.vocab_size,
                          cfg.vocab_size))
        self.on = True
        self._cache: dict[int, list[int]] = {}
        self.handle = model.encoder.register_forward_hook(self)

    def ids(self, frames: int) -> list[int]:
        if frames not in self._cache:
            import numpy as np

            n = max(1, round(TOKENS_PER_S * frames / FRAME_HZ))
            self._cache[frames] = np.random.default_rng(1_000_003 + frames).integers(0, self.hi, n).tolist()
        return self._cache[frames]

    def __call__(self, module, args, output):
        if not self.on:
            return None
        lengths = args[1] if len(args) > 1 else None
        if lengths is None:
            return None
        return dataclasses.replace(output, hypotheses=[self.ids(int(n)) for n in lengths.tolist()])


def tokenizer_for(ctx: Ctx, cfg):
    """The tiny tokenizer (dry run) or a WordLevel one over the full 100352-id vocabulary ("t0"...),
    wrapped in PreTrainedTokenizerFast, so decoding costs what the real fast tokenizer's C code does."""
    if ctx.dry:
        from operators.asr.granite_nar.tiny import tiny_tokenizer

        return tiny_tokenizer()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    v = cfg.vocab_size
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(v)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    text = cfg.text_config
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token=f"t{text['pad_token_id']}",
                                   bos_token=f"t{text['bos_token_id']}", eos_token=f"t{text['eos_token_id']}")


def make_backend(ctx: Ctx, model, tokenizer, **options):
    from operators.asr.granite_nar.backend import GraniteNarBackend

    return GraniteNarBackend.from_model(model, tokenizer, options=options)


def random_backend(ctx: Ctx, max_batch: int):
    """(device, config, model, tokenizer, backend): the full-size (or, dry, tiny) random model with
    forced hypotheses, behind the production backend."""
    dev, dtype = device(ctx), model_dtype(ctx)
    cfg = nar_config(ctx)
    model = build_model(ctx, cfg, dev, dtype)
    ForcedHypotheses(model)
    t = time.perf_counter()
    tok = tokenizer_for(ctx, cfg)
    ctx.result["tokenizer_build_s"] = round(time.perf_counter() - t, 2)
    return dev, cfg, model, tok, make_backend(ctx, model, tok, max_batch=max_batch)


class Audio:
    """Speech-like synthetic clips cut from one long babble() pool (fast to make, different per clip)."""

    def __init__(self, ctx: Ctx, pool_s: float):
        import numpy as np

        from operators.asr.granite_nar.tiny import babble

        self.np = np
        self.pool = babble(pool_s, seed=ctx.seed + 11)
        self.rng = np.random.default_rng(ctx.seed + 12)
        self.scale = 0.05 if ctx.dry else 1.0   # dry run: clip lengths scaled down

    def clip(self, seconds: float):
        n = max(1, int(seconds * SR))
        if n >= len(self.pool):
            reps = -(-n // len(self.pool))
            return self.np.tile(self.pool, reps)[:n].copy()
        off = int(self.rng.integers(0, len(self.pool) - n))
        return self.pool[off:off + n].copy()

    def production(self, n: int):
        return [self.clip(s * self.scale) for s in self.rng.uniform(20.0, 32.0, n)]

    def librispeech(self, n: int):
        # benchmarks/nar_model.py librispeech_lengths: gamma(4, 3) clipped to 2-35 s, mean ~12 s
        lengths = self.np.clip(self.rng.gamma(4.0, 3.0, n), 2.0, 35.0)
        return [self.clip(s * self.scale) for s in lengths]

    def fixed(self, n: int, seconds: float):
        return [self.clip(seconds * self.scale) for _ in range(n)]


def audio_seconds(clips) -> float:
    return float(sum(len(c) for c in clips) / SR)


def resolvable(dev, dtype) -> dict[str, str]:
    """{backend: "ok" | why not} for the four editor attention backends on this device/dtype."""
    from operators.asr.granite_nar import attention

    out = {}
    for b in BACKEND_ORDER:
        try:
            attention.resolve_backend(b, dev, dtype)
            out[b] = "ok"
        except Exception as e:  # noqa: BLE001
            out[b] = _one_line(e, 200)
    return out


def timed(fn, dev, repeats: int) -> tuple[float, object]:
    best, res = float("inf"), None
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        res = fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, res


def reset_peak(dev) -> None:
    torch = _torch()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev):
    torch = _torch()
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


def free_cache(dev) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        _torch().cuda.empty_cache()


def _edit_distance():
    """(function, name): rapidfuzz's Levenshtein if importable, else modeling.edit_distance."""
    try:
        from rapidfuzz.distance import Levenshtein

        return (lambda a, b: Levenshtein.distance(list(a), list(b))), "rapidfuzz"
    except ImportError:
        from operators.asr.granite_nar.modeling import edit_distance

        return edit_distance, "python"


def agreement_rates(ref: list[list[int]], other: list[list[int]]) -> dict:
    """exact_rate: clips whose ids are identical; token_agreement: 1 - sum(edit distance) / sum(longer
    length) over all clips (1.0 when everything is empty)."""
    ed, _ = _edit_distance()
    dist = total = exact = 0
    for a, b in zip(ref, other):
        exact += list(a) == list(b)
        if list(a) != list(b):
            dist += ed(a, b)
        total += max(len(a), len(b))
    n = max(1, len(ref))
    return {"exact_rate": round(exact / n, 4), "token_agreement": round(1.0 - dist / total, 4) if total else 1.0,
            "clips": len(ref)}


def encoder_hypotheses(model, forced: ForcedHypotheses, feats) -> list[list[int]]:
    """The encoder's own CTC hypotheses (not the forced ones) for per-clip features, padded together."""
    x, lengths = pad_features(feats, model.dtype)
    forced.on = False
    try:
        return model.encoder(x, lengths).hypotheses
    finally:
        forced.on = True


def pad_features(feats, dtype):
    torch = _torch()
    lengths = torch.tensor([f.shape[0] for f in feats], device=feats[0].device)
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(dtype), lengths


def pcm16(audio) -> bytes:
    import numpy as np

    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def decoded_table(files: list[tuple[str, object, list[int], list[int]]]):
    """operators.schema.DECODED_SCHEMA rows for (audio_id, audio, seg_start, seg_end)."""
    import pyarrow as pa

    from operators.schema import DECODED_SCHEMA, OK

    rows = [{"audio_id": aid, "source_uri": f"mem://{aid}.wav", "reference": None, "language": None,
             "duration_s": len(audio) / SR, "pcm16": pcm16(audio), "seg_start": starts, "seg_end": ends,
             "status": OK, "error": None} for aid, audio, starts, ends in files]
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def job_config(**asr):
    from operators.config import JobConfig

    return JobConfig.model_validate({"asr": {"backend": "granite-nar", "check_model": False, **asr}})


def make_stage(ctx: Ctx, cfg, backend):
    import inspect

    from operators.asr import stage as stage_mod

    if "backend" in inspect.signature(stage_mod.ASRStage.__init__).parameters:
        return stage_mod.ASRStage(cfg, backend=backend)
    ctx.api_fallbacks.append("ASRStage(cfg, backend=) missing: load_backend patched")
    stage_mod.load_backend = lambda name, model: backend
    return stage_mod.ASRStage(cfg)


def perf_sum(table, column: str):
    if column not in table.column_names:
        return None
    vals = [v for v in table.column(column).to_pylist() if v is not None]
    return round(float(sum(vals)), 4) if vals else 0.0


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------
def phase_preflight(ctx: Ctx) -> None:
    from importlib import metadata

    import torch

    r = ctx.result
    r["python"] = sys.version.split()[0]
    r["platform"] = platform.platform()
    r["torch"] = torch.__version__
    r["torch_cuda"] = torch.version.cuda
    for pkg in ("transformers", "safetensors", "tokenizers", "numpy", "pyarrow", "pytest", "pydantic",
                "pyyaml", "rapidfuzz", "flash-attn"):
        try:
            r[f"version_{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            r[f"version_{pkg}"] = None
    r["importable"] = {m: _importable(m) for m in ("pydantic", "yaml", "rapidfuzz", "flash_attn") + FORBIDDEN}
    r["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(dev)
        r["gpu_name"] = torch.cuda.get_device_name(dev)
        r["gpu_count"] = torch.cuda.device_count()
        r["capability"] = list(torch.cuda.get_device_capability(dev))
        r["bf16_supported"] = torch.cuda.is_bf16_supported()
        free, total = torch.cuda.mem_get_info(dev)
        r["memory_total_gib"] = round(total / 2**30, 2)
        r["memory_free_gib"] = round(free / 2**30, 2)
        r["multiprocessors"] = props.multi_processor_count
        a = torch.randn(1024, 1024, device=dev, dtype=torch.bfloat16)
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        r["bf16_matmul_1024_ms"] = round((time.perf_counter() - t) * 100, 3)
    else:
        r["gpu_name"] = None
    r["tf32"] = {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                 "float32_matmul_precision": torch.get_float32_matmul_precision()}
    ctx.save()
    from operators.asr.granite_nar import attention

    report = getattr(attention, "kernel_report", None)
    if callable(report):
        r["kernels"] = report()
    else:
        ctx.api_fallbacks.append("attention.kernel_report missing: the three *_available() booleans")
        r["kernels"] = {"flash": attention.flash_available(), "varlen": attention.varlen_available(),
                        "flex": attention.flex_available()}
    try:
        r["resolve_auto_cuda_bf16"] = attention.resolve_backend("auto", "cuda", torch.bfloat16)
    except Exception as e:  # noqa: BLE001
        r["resolve_auto_cuda_bf16"] = f"error: {_one_line(e)}"
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    r["resolvable_bf16"] = resolvable(dev, torch.bfloat16)
    ctx.save()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _split_times(model, feats, lengths, backend: str, dev) -> dict:
    """One synchronised pass, piece by piece: encoder (incl. its BPE head + CTC collapse), projector,
    editor input packing, the editor backbone, and the vocabulary head + collapse."""
    t: dict[str, float] = {}

    def lap(key, fn):
        sync(dev)
        s = time.perf_counter()
        out = fn()
        sync(dev)
        t[key] = round(time.perf_counter() - s, 4)
        return out

    cfg = model.config
    enc = lap("encoder_s", lambda: model.encoder(feats, lengths))

    def project():
        audio = model.projector(enc.hidden_states, enc.valid)
        if cfg.scale_projected_embeddings:
            audio = audio / cfg.text_config["embedding_multiplier"]
        return audio

    audio = lap("projector_s", project)
    ds = cfg.projector_config.downsample_rate
    audio_lengths = [int(n) // ds for n in lengths.tolist()]
    if all(hasattr(model, m) for m in ("editor_inputs", "editor_hidden", "edit_ids")):
        inputs = lap("editor_inputs_s", lambda: model.editor_inputs(enc.hypotheses, audio, audio_lengths, backend))
        hidden = lap("editor_s", lambda: model.editor_hidden(inputs))
        lap("heads_s", lambda: model.edit_ids(inputs, hidden))
        t["editor_positions"] = int(inputs.packing.total)
    else:
        lap("editor_s", lambda: model.edit(enc.hypotheses, audio, audio_lengths, backend))
    return t


def phase_model(ctx: Ctx) -> None:
    torch = _torch()
    from operators.asr.features import batch_features

    dev, dtype = device(ctx), model_dtype(ctx)
    cfg = nar_config(ctx)
    r = ctx.result
    batch = 4 if ctx.dry else 128
    repeats = 1 if ctx.dry else 2
    t = time.perf_counter()
    model = build_model(ctx, cfg, dev, dtype)
    forced = ForcedHypotheses(model)
    r["build_s"] = round(time.perf_counter() - t, 2)
    r["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 4)
    r["dtype"], r["device"], r["batch"], r["tokens_per_s"] = str(dtype), str(dev), batch, TOKENS_PER_S
    r["resolvable"] = res = resolvable(dev, dtype)
    backends = [b for b in BACKEND_ORDER if res[b] == "ok"]
    if not ctx.dry and torch.cuda.is_available():
        r["weights_gib"] = round(torch.cuda.memory_allocated(dev) / 2**30, 2)
    audio = Audio(ctx, 600.0 if not ctx.dry else 40.0)
    sets = {"production_20_32s": audio.production(batch), "librispeech_like": audio.librispeech(batch)}
    r["sets"] = {}
    ctx.save()
    inputs = {}
    with torch.inference_mode():
        for name, clips in sets.items():
            secs = audio_seconds(clips)
            r["sets"][name] = {"clips": len(clips), "audio_s": round(secs, 1), "mean_s": round(secs / len(clips), 2),
                               "backends": {}}
            feat_s, (feats, lengths) = timed(lambda: batch_features(clips, "nar", dev), dev, 1)
            r["sets"][name]["features_s"] = round(feat_s, 4)
            inputs[name] = (feats.to(dtype), lengths, secs, feat_s)
        # backend outer, clip sets inner: flex (slow to compile) comes last of all
        for b in backends:
            for name, (feats, lengths, secs, feat_s) in inputs.items():
                entry = r["sets"][name]
                need = (6 if ctx.dry else (30 if b == "flex" else 12))
                if ctx.left() < need:
                    entry["backends"][b] = {"skipped": f"phase time: {ctx.left():.0f} s left"}
                    continue
                try:
                    t = time.perf_counter()
                    model(feats, lengths, backend=b)    # warm-up (compiles flex)
                    sync(dev)
                    warm = time.perf_counter() - t
                    reset_peak(dev)
                    best, out = timed(lambda: model(feats, lengths, backend=b), dev, repeats)
                    fig = {"warmup_s": round(warm, 3), "model_s": round(best, 4), "rtfx": round(secs / best, 1),
                           "rtfx_with_features": round(secs / (best + feat_s), 1), "peak_gib": peak_gib(dev),
                           "mean_hypothesis_tokens": round(sum(map(len, out.hypotheses)) / int(feats.shape[0]), 1)}
                    del out
                    fig["split"] = _split_times(model, feats, lengths, b, dev)
                    entry["backends"][b] = fig
                except Exception as e:  # noqa: BLE001
                    entry["backends"][b] = {"error": ctx.problem(f"model {name} {b}", e)}
                    del e
                free_cache(dev)
                ctx.save()
    forced.handle.remove()
    from operators.asr.granite_nar import modeling

    # how the vocabulary heads got fp32 logits: torch.mm(out_dtype=float32) (True) or by upcasting (False)
    r["heads_mm_out_dtype"] = modeling._MM_OUT_DTYPE.get(dev.type if hasattr(dev, "type") else str(dev))
    ctx.save()


def phase_backend(ctx: Ctx) -> None:
    torch = _torch()
    from operators.asr.base import is_staged
    from operators.asr.features import batch_features

    r = ctx.result
    batch = 4 if ctx.dry else 128
    repeats = 1 if ctx.dry else 2
    dev, cfg, model, tok, backend = random_backend(ctx, batch)
    r["attn_backend"] = backend.attn_backend
    r["staged"] = staged = is_staged(backend)
    audio = Audio(ctx, 600.0 if not ctx.dry else 40.0)
    sets = {"production_20_32s": audio.production(batch), "librispeech_like": audio.librispeech(batch)}
    r["sets"] = {}
    langs = [None] * batch
    ctx.save()
    for name, clips in sets.items():
        if ctx.left() < (5 if ctx.dry else 10):
            r["sets"][name] = {"skipped": f"phase time: {ctx.left():.0f} s left"}
            continue
        secs = audio_seconds(clips)
        try:
            backend.transcribe(clips, langs)   # warm-up
            total, _ = timed(lambda: backend.transcribe(clips, langs), dev, repeats)
            fig = {"clips": len(clips), "audio_s": round(secs, 1), "transcribe_s": round(total, 4),
                   "transcribe_rtfx": round(secs / total, 1)}
            if staged:
                prep_s, prepared = timed(lambda: backend.prepare(clips, langs), dev, 1)
                run_s, ran = timed(lambda: backend.run(prepared), dev, 1)
                fin_s, _ = timed(lambda: backend.finish(ran), dev, 1)
                fig.update(prepare_s=round(prep_s, 4), run_s=round(run_s, 4), finish_s=round(fin_s, 4))
            else:
                ctx.api_fallbacks.append("backend not staged: transcribe_ids timed as run")
                run_s, _ = timed(lambda: backend.transcribe_ids(clips), dev, 1)
                fig.update(run_s=round(run_s, 4), prepare_s=None, finish_s=round(total - run_s, 4))
            with torch.inference_mode():
                feat_s, (feats, lengths) = timed(lambda: batch_features(clips, "nar", dev), dev, 1)
                feats = feats.to(model.dtype)
                model_s, _ = timed(lambda: model(feats, lengths, backend=backend.attn_backend), dev, repeats)
                del feats, lengths
            fig.update(model_only_s=round(model_s, 4), batch_features_s=round(feat_s, 4),
                       host_outside_model_s=round(total - model_s, 4),
                       host_outside_model_s_per_128=round((total - model_s) / len(clips) * 128, 4),
                       host_outside_run_s=round(total - run_s, 4),
                       overhead_fraction=round((total - model_s) / total, 4))
            r["sets"][name] = fig
        except Exception as e:  # noqa: BLE001
            r["sets"][name] = {"error": ctx.problem(f"backend {name}", e)}
        free_cache(dev)
        ctx.save()
    r["note"] = ("host_outside_model_s = transcribe - the model's forward on precomputed features (so it "
                 "includes the backend's feature extraction, staging, sorting, decoding); host_outside_run_s "
                 "= transcribe - run (prepare + finish + glue); batch_features_s = operators.asr.features."
                 "batch_features (one clip at a time) for comparison")


class _CountingRun:
    """Wraps backend.run (or transcribe) to record each call's clip count and outcome; optionally
    raises a simulated device out-of-memory error for calls over `oom_over` clips (dry run)."""

    def __init__(self, backend, oom_over: int | None = None):
        self.calls: list[dict] = []
        self.oom_over = oom_over
        self.lock = threading.Lock()
        name = "run" if callable(getattr(backend, "run", None)) else "transcribe"
        self.inner = getattr(backend, name)
        setattr(backend, name, self)
        self.__wrapped__ = self.inner   # inspect.signature follows it (accepts_tasks)

    def __call__(self, first, *args, **kwargs):
        n = getattr(first, "n", None)
        n = n if n is not None else (len(first) if hasattr(first, "__len__") else None)
        rec = {"clips": n, "outcome": "ok"}
        with self.lock:
            self.calls.append(rec)
        if self.oom_over is not None and n is not None and n > self.oom_over:
            rec["outcome"] = "oom (simulated)"
            raise _torch().OutOfMemoryError(f"CUDA out of memory (simulated by gpu_check: {n} clips > "
                                            f"{self.oom_over})")
        try:
            return self.inner(first, *args, **kwargs)
        except Exception as e:
            from operators.asr.errors import is_out_of_memory

            rec["outcome"] = "oom" if is_out_of_memory(e) else f"error {type(e).__name__}"
            raise


def phase_long(ctx: Ctx) -> None:
    torch = _torch()
    r = ctx.result
    big = 4 if ctx.dry else 256
    half = big // 2
    dev, cfg, model, tok, backend = random_backend(ctx, big)
    audio = Audio(ctx, 600.0 if not ctx.dry else 40.0)
    clips = audio.fixed(big, 60.0)
    r["clip_s"] = round(len(clips[0]) / SR, 2)
    ctx.save()
    for key, n in (("b128", half), ("b256", big)):
        sub = clips[:n]
        free_cache(dev)
        reset_peak(dev)
        try:
            t = time.perf_counter()
            backend.transcribe_ids(sub)
            sync(dev)
            s = time.perf_counter() - t
            r[key] = {"clips": n, "status": "ok", "seconds": round(s, 3), "rtfx": round(audio_seconds(sub) / s, 1),
                      "peak_gib": peak_gib(dev)}
        except Exception as e:  # noqa: BLE001
            from operators.asr.errors import is_out_of_memory

            oom = is_out_of_memory(e)
            r[key] = {"clips": n, "status": "oom" if oom else "error", "peak_gib": peak_gib(dev),
                      "error": _one_line(e, 300)}
            if not oom:
                ctx.problem(f"long {key}", e)
            del e
        free_cache(dev)
        ctx.save()

    # recovery after an out-of-memory error, through the ASR stage's own path
    rec = r["oom_recovery"] = {}
    fraction = None
    counter = None
    if ctx.dry:
        rec["note"] = ("dry run: no memory fraction on a CPU; a device out-of-memory error is simulated "
                       f"for calls of more than {half} clips")
        counter = _CountingRun(backend, oom_over=half)
    else:
        p128, p256 = (r.get("b128") or {}).get("peak_gib"), (r.get("b256") or {}).get("peak_gib")
        total = torch.cuda.get_device_properties(dev).total_memory
        if r.get("b256", {}).get("status") == "oom":
            rec["note"] = "256 x 60 s already ran out of memory without a cap"
        elif p128 and p256 and p256 > p128:
            cap_bytes = (p128 + p256) / 2 * 2**30
            fraction = cap_bytes / total
            free_cache(dev)
            torch.cuda.set_per_process_memory_fraction(fraction, cuda_index(dev))
            rec["memory_fraction"] = round(fraction, 4)
            rec["cap_gib"] = round(cap_bytes / 2**30, 2)
        else:
            rec["note"] = f"no usable peaks ({p128}, {p256}): no cap set"
        counter = _CountingRun(backend)
    try:
        job = job_config(batch_size=big)
        stage = make_stage(ctx, job, backend)
        table = decoded_table([(f"long{i:03d}", c, [0], [len(c)]) for i, c in enumerate(clips)])
        t = time.perf_counter()
        out = stage(table)
        sync(dev)
        rows = out.to_pylist()
        bad = [x for x in rows if x["status"] != "ok"]
        rec.update(rows=len(rows), rows_ok=len(rows) - len(bad), all_ok=not bad, seconds=round(time.perf_counter() - t, 3),
                   splits=perf_sum(out, "perf_asr_splits"), ooms=perf_sum(out, "perf_asr_ooms"),
                   cost_cap_s=(round(out.column("perf_asr_cost_cap")[0].as_py() / SR, 1)
                               if "perf_asr_cost_cap" in out.column_names
                               and out.column("perf_asr_cost_cap")[0].as_py() else None),
                   first_errors=[x["error"] for x in bad[:3]], peak_gib=peak_gib(dev))
    except Exception as e:  # noqa: BLE001
        rec["error"] = ctx.problem("long oom_recovery", e)
    finally:
        if counter is not None:
            rec["calls"] = counter.calls[:40]
            rec["call_count"] = len(counter.calls)
        if fraction is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, cuda_index(dev))
    ctx.save()


def phase_invariance(ctx: Ctx) -> None:
    torch = _torch()
    from operators.asr.features import log_mel

    dev, dtype = device(ctx), model_dtype(ctx)
    cfg = nar_config(ctx)
    r = ctx.result
    n = 4 if ctx.dry else 24
    model = build_model(ctx, cfg, dev, dtype)
    forced = ForcedHypotheses(model)
    audio = Audio(ctx, 600.0 if not ctx.dry else 40.0)
    clips = audio.librispeech(n)
    feats = [log_mel(torch.as_tensor(c).to(dev), "nar") for c in clips]
    rev = list(range(n))[::-1]
    r["clips"], r["dtype"] = n, str(dtype)
    r["note"] = ("rates, not assertions: bf16 kernels do not promise bitwise equality; exact = every clip "
                 "identical alone and in reversed order")

    def batched(fs, backend):
        x, lengths = pad_features(fs, dtype)
        return model(x, lengths, backend=backend)

    with torch.inference_mode():
        # the encoder's own hypotheses (the encoder does not depend on the attention backend)
        b = encoder_hypotheses(model, forced, feats)
        alone = [encoder_hypotheses(model, forced, [f])[0] for f in feats]
        back = encoder_hypotheses(model, forced, [feats[i] for i in rev])[::-1]
        r["encoder_hypotheses"] = {"alone": agreement_rates(b, alone), "reversed": agreement_rates(b, back)}
        ctx.save()
        r["resolvable"] = res = resolvable(dev, dtype)
        r["backends"] = {}
        edits = {}
        for name in BACKEND_ORDER:
            if res[name] != "ok":
                continue
            if ctx.left() < (5 if ctx.dry else (30 if name == "flex" else 10)):
                r["backends"][name] = {"skipped": f"phase time: {ctx.left():.0f} s left"}
                continue
            try:
                e = batched(feats, name).edited
                a = [batched([f], name).edited[0] for f in feats]
                v = batched([feats[i] for i in rev], name).edited[::-1]
                edits[name] = e
                fig = {"alone": agreement_rates(e, a), "reversed": agreement_rates(e, v)}
                fig["exact"] = fig["alone"]["exact_rate"] == 1.0 and fig["reversed"]["exact_rate"] == 1.0
                r["backends"][name] = fig
            except Exception as ex:  # noqa: BLE001
                r["backends"][name] = {"error": ctx.problem(f"invariance {name}", ex)}
            free_cache(dev)
            ctx.save()
        names = list(edits)
        r["cross_backend"] = {f"{a}~{b}": agreement_rates(edits[a], edits[b])
                              for i, a in enumerate(names) for b in names[i + 1:]}
        if "varlen" in r["backends"]:
            r["varlen_exactly_invariant"] = r["backends"]["varlen"].get("exact")
    r["edit_distance"] = _edit_distance()[1]


def phase_precision(ctx: Ctx) -> None:
    torch = _torch()
    from operators.asr.features import log_mel

    dev = device(ctx)
    cfg = nar_config(ctx)
    r = ctx.result
    n = 4 if ctx.dry else 24
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    r["tf32"] = {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    m32 = build_model(ctx, cfg, dev, torch.float32)
    m16 = cast_copy(m32, dev, torch.bfloat16)
    hooks = {id(m): ForcedHypotheses(m) for m in (m32, m16)}
    audio = Audio(ctx, 600.0 if not ctx.dry else 40.0)
    clips = audio.librispeech(n)
    feats = [log_mel(torch.as_tensor(c).to(dev), "nar") for c in clips]
    r["clips"] = n
    r["reference"] = "float32, TF32 off, attention sdpa_per_sample"
    r["note"] = ("random weights: argmax margins over a 100k vocabulary are tiny, so low rates here do "
                 "not imply a fault; compare across backends and runs")

    def run(model, backend):
        x, lengths = pad_features(feats, model.dtype)
        return model(x, lengths, backend=backend)

    with torch.inference_mode():
        ref_h = encoder_hypotheses(m32, hooks[id(m32)], feats)
        ref_e = run(m32, "sdpa_per_sample").edited
        ctx.save()
        res = resolvable(dev, torch.bfloat16)
        candidates = ["sdpa_per_sample"] + [b for b in ("flash", "varlen") if res[b] == "ok"]
        r["bf16_vs_fp32"] = {}
        hyps16 = None
        for b in candidates:
            if ctx.left() < (4 if ctx.dry else 8):
                r["bf16_vs_fp32"][b] = {"skipped": f"phase time: {ctx.left():.0f} s left"}
                continue
            try:
                if hyps16 is None:
                    hyps16 = encoder_hypotheses(m16, hooks[id(m16)], feats)
                    r["hypotheses"] = agreement_rates(ref_h, hyps16)
                e16 = run(m16, b).edited
                r["bf16_vs_fp32"][b] = {"edits": agreement_rates(ref_e, e16)}
            except Exception as ex:  # noqa: BLE001
                r["bf16_vs_fp32"][b] = {"error": ctx.problem(f"precision {b}", ex)}
            ctx.save()
    r["edit_distance"] = _edit_distance()[1]


def _gpu_test_files() -> list[str]:
    """Test files that carry the gpu mark (pytest.mark.gpu or a pytestmark naming it)."""
    out = []
    for p in sorted((ROOT / "tests").rglob("test_*.py")):
        try:
            if "mark.gpu" in p.read_text(errors="replace"):
                out.append(str(p.relative_to(ROOT)))
        except OSError:
            continue
    return out


def _top_imports(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module.split(".")[0])
    return sorted(set(names))


def phase_tests(ctx: Ctx) -> None:
    r = ctx.result
    conftests = sorted((ROOT / "tests").rglob("conftest.py"))
    r["conftest_imports"] = {str(p.relative_to(ROOT)): {m: _importable(m) for m in _top_imports(p)}
                             for p in conftests}
    r["conftest_missing"] = sorted({m for d in r["conftest_imports"].values() for m, ok in d.items() if not ok})
    files = _gpu_test_files()
    r["files"] = files
    if not files:
        r["summary"] = "no test file carries the gpu mark"
        return
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider"]
    r["command"] = " ".join(["python"] + cmd[1:])
    ctx.save()
    timeout = max(5.0, ctx.left() - 3)
    try:
        proc = subprocess.run(cmd, cwd=str(ROOT), env=_child_env(), capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
        text = proc.stdout + proc.stderr
        r["rc"] = proc.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        r["rc"] = "timeout"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = [ln for ln in lines if re.search(r"\b(passed|failed|skipped|error|errors|deselected|no tests ran)\b", ln)
               and re.search(r"\d", ln)]
    r["summary"] = summary[-1].strip("= ") if summary else (lines[-1] if lines else "")
    r["passed"] = r["rc"] == 0 or r["rc"] == 5   # 5: nothing selected
    r["output_tail"] = _tail(text, 2500)


def phase_stage(ctx: Ctx) -> None:
    torch = _torch()
    r = ctx.result
    n_files = 12 if ctx.dry else 480
    batch = 4 if ctx.dry else 128
    per_call = 3 if ctx.dry else 80     # 6 calls over 3 threads (configs/nar-h100.yaml: 256 files a call)
    dev, cfg, model, tok, backend = random_backend(ctx, batch)
    job = job_config(batch_size=batch, files_per_batch=per_call, concurrent_batches=3)
    threads = job.asr.concurrent_batches
    stage = make_stage(ctx, job, backend)
    audio = Audio(ctx, 600.0 if not ctx.dry else 40.0)
    rng = audio.rng
    files = []
    seg_max = int(30.0 * audio.scale * SR)
    for i in range(n_files):
        a = audio.clip(float(rng.uniform(8.0, 40.0)) * audio.scale)
        starts, ends, pos = [], [], 0
        while pos < len(a):   # segments of 20-30 s (scaled), the last one whatever is left
            step = min(len(a) - pos, int(rng.uniform(0.67, 1.0) * seg_max))
            starts.append(pos)
            ends.append(pos + step)
            pos += step
        files.append((f"f{i:04d}", a, starts, ends))
    tables = [decoded_table(files[s:s + per_call]) for s in range(0, len(files), per_call)]
    secs = sum(len(f[1]) for f in files) / SR
    r.update(files=n_files, segments=sum(len(f[2]) for f in files), audio_s=round(secs, 1),
             batch_size=batch, files_per_call=per_call, calls=len(tables), threads=threads,
             staged=bool(getattr(stage, "staged", False)))
    ctx.save()
    stage(decoded_table(files[:2]))   # warm-up (first CUDA kernels, allocator)
    sync(dev)
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        outs = list(pool.map(stage, tables))
    sync(dev)
    wall = time.perf_counter() - t
    busy = sum(perf_sum(o, "perf_asr_busy_s") or 0.0 for o in outs)
    cpu = sum(perf_sum(o, "perf_asr_cpu_s") or 0.0 for o in outs)
    rows = [x for o in outs for x in o.select(["status", "error"]).to_pylist()]
    bad = [x for x in rows if x["status"] != "ok"]
    r.update(rows=len(rows), rows_ok=len(rows) - len(bad), wall_s=round(wall, 3), busy_s=round(busy, 3),
             busy_fraction=round(busy / wall, 4), actor_cpu_s=round(cpu, 3), rtfx_e2e=round(secs / wall, 1),
             rtfx_busy=round(secs / busy, 1) if busy else None, first_errors=[x["error"] for x in bad[:3]],
             splits=sum(perf_sum(o, "perf_asr_splits") or 0.0 for o in outs), peak_gib=peak_gib(dev))
    del torch


VAD_SPEECH = ROOT / ".gpu_deps" / "vad_speech.npy"   # made by `make gpu-deps`: real speech, int16


def vad_audio(ctx: Ctx, hours: float):
    """(files, source): recordings of speech with pauses, long silences and music for the detector: the
    espeak-ng recording `make gpu-deps` saved (VAD_SPEECH) where it travelled, else babble() with
    pauses; as many copies, each shifted, as make `hours` of audio."""
    import numpy as np

    rng = np.random.default_rng(ctx.seed + 21)
    if VAD_SPEECH.is_file():
        base, source = np.load(VAD_SPEECH).astype(np.float32) / 32767.0, str(VAD_SPEECH.relative_to(ROOT))
    else:
        from operators.asr.granite_nar.tiny import babble

        parts = []
        for _ in range(24):   # 2-8 s of babble, then 0.3-2.5 s of pause or (every 6th) 6-15 s of silence
            parts.append(babble(float(rng.uniform(2.0, 8.0)), seed=int(rng.integers(1 << 30))))
            quiet = rng.uniform(6.0, 15.0) if len(parts) % 12 == 11 else rng.uniform(0.3, 2.5)
            parts.append(np.zeros(int(quiet * SR), np.float32))
        base, source = np.concatenate(parts), "babble() with pauses (no vad_speech.npy: run make gpu-deps)"
    base = base + np.float32(10 ** (-65 / 20)) * rng.standard_normal(len(base)).astype(np.float32)
    n = max(1, int(round(hours * 3600 * SR / len(base))))
    return [np.roll(base, int(rng.integers(len(base)))) for _ in range(n)], source


def phase_vad(ctx: Ctx) -> None:
    """segment.vad_on actor: silero (gated, the default) and silero_full on this machine's CPU (one
    thread, as a decode worker runs it) and on CUDA (as a GPU ASR actor runs it) over the same audio:
    wall and host-CPU seconds per audio-hour, windows the model ran, the share of a GPU at 4000x that
    it would take, and whether the regions match the CPU's (count, edges within pad_s)."""
    torch = _torch()
    if sys.modules.get("silero_vad", 0) is None:   # refused for the other phases; this one needs it
        del sys.modules["silero_vad"]
    import numpy as np

    from operators.audio import vad
    from operators.config import SegmentConfig

    r = ctx.result
    if not vad.silero_available():
        r["skipped"] = ("silero-vad is not installed here: carry its wheel (make gpu-deps) and install it "
                        "with --no-deps (README: On a GPU)")
        return
    files, r["audio"] = vad_audio(ctx, 0.02 if ctx.dry else 1.0)
    secs = sum(len(a) for a in files) / SR
    r["audio_s"] = round(secs, 1)
    seg = SegmentConfig().for_backend(30.0, 30.0)
    pad = seg.pad_s * SR
    regions_of: dict = {}
    runs = [("cpu", True, vad.PIECES_PER_CALL), ("cpu", False, vad.PIECES_PER_CALL)]
    if torch.cuda.is_available():
        runs += [("cuda", True, vad.PIECES_PER_CALL), ("cuda", False, vad.PIECES_PER_CALL),
                 ("cuda", False, 4 * vad.PIECES_PER_CALL)]
    r["runs"] = {}
    shipped = vad.PIECES_PER_CALL
    for dev, gate, per_call in runs:
        name = f"{dev}_{'silero' if gate else 'silero_full'}" + ("" if per_call == shipped else f"_{per_call}")
        if ctx.left() < 8:
            r["runs"][name] = {"skipped": "time"}
            continue
        try:
            vad.PIECES_PER_CALL = per_call
            det = vad.SileroVAD(threads=1 if dev == "cpu" else 0, gate=gate, device=dev)
            det.probs([files[0][: 20 * SR]] * 2)      # warm-up: TorchScript profiles its first calls
            det.probs([files[0][: 20 * SR]] * 2)
            first = None
            for _ in range(2 if dev == "cuda" else 1):  # on cuda the second pass: the first may specialise
                det.windows_run = det.windows_seen = 0  # kernels for the real batch shapes
                t, c = time.perf_counter(), time.thread_time()
                probs = det.probs(files)
                wall, cpu = time.perf_counter() - t, time.thread_time() - c
                first = wall if first is None else first
            regions = [vad.speech_regions(p, len(a), seg) for p, a in zip(probs, files)]
            fig = {"wall_s_per_audio_hour": round(wall / secs * 3600, 4),
                   "host_cpu_s_per_audio_hour": round(cpu / secs * 3600, 4),
                   "model_on_windows": round(det.windows_run / max(1, det.windows_seen), 4),
                   "share_of_a_gpu_at_4000x": round(wall / secs * 4000, 4) if dev == "cuda" else None,
                   "kept_fraction": round(sum(e - s for rg in regions for s, e in rg) / (secs * SR), 4),
                   "first_pass_wall_s_per_audio_hour": round(first / secs * 3600, 4)}
            ref = regions_of.get(("cpu", gate))
            if ref is not None:
                fig["files_differing_from_cpu"] = sum(
                    len(x) != len(y) or any(abs(a - c) > pad or abs(b - d) > pad for (a, b), (c, d) in zip(x, y))
                    for x, y in zip(regions, ref))
            else:
                regions_of[(dev, gate)] = regions
            r["runs"][name] = fig
        except Exception as ex:  # noqa: BLE001
            r["runs"][name] = {"error": ctx.problem(f"vad {name}", ex)}
        finally:
            vad.PIECES_PER_CALL = shipped
        ctx.save()
    del np


def phase_stage_vad(ctx: Ctx) -> None:
    """segment.vad_on decode against actor, side by side through the ASR stage on the same recordings
    (speech with pauses, long silences, music: vad_audio): `decode` rows come planned by silero (gated)
    on one CPU thread, as a decode worker plans them (that CPU is timed apart), carrying only the kept
    audio; `actor` rows come whole and unplanned and the stage finds speech on its own device (CUDA on
    a GPU) before the model. Each path twice, alternated, from concurrent_batches threads: wall, RTFx
    over the files' whole audio, the actor's CPU, the voice activity's seconds on the actor, and
    whether both paths gave the same segments and text. Decides whether vad_on auto -> actor pays."""
    torch = _torch()
    if sys.modules.get("silero_vad", 0) is None:   # refused for the other phases; this one needs it
        del sys.modules["silero_vad"]
    import numpy as np
    import pyarrow as pa

    from operators.audio import vad
    from operators.audio.segment import plan_block
    from operators.schema import DECODED_SCHEMA, OK

    r = ctx.result
    if not vad.silero_available():
        r["skipped"] = "silero-vad is not installed here: carry its wheel (make gpu-deps)"
        return
    batch = 4 if ctx.dry else 128
    per_call = 2 if ctx.dry else 20
    dev, _, _, _, backend = random_backend(ctx, batch)
    files, r["audio"] = vad_audio(ctx, 0.1 if ctx.dry else 2.0)
    if ctx.dry:
        files = [a[: 20 * SR] for a in files]
    secs = sum(len(a) for a in files) / SR
    seg_doc = {"vad": "silero", "target_segment_s": 30.0, "max_segment_s": 30.0}
    jobs = {where: job_config(batch_size=batch, files_per_batch=per_call, concurrent_batches=3,
                              num_gpus=0 if ctx.dry else 1, model={"device": "cpu" if ctx.dry else "cuda"})
            for where in ("decode", "actor")}
    jobs = {w: j.model_copy(update={"segment": j.segment.model_copy(update={**seg_doc, "vad_on": w})})
            for w, j in jobs.items()}
    i16 = [np.frombuffer(pcm16(a), "<i2") for a in files]   # what decode holds and the actor receives
    det = vad.make_detector("silero", jobs["decode"].segment, device="cpu", threads=1)
    det.probs([i16[0][: 20 * SR]] * 2)   # warm-up
    t, c = time.perf_counter(), time.thread_time()
    plans, vad_cpu, _ = plan_block(i16, jobs["decode"].segment, det)
    plan_wall, plan_cpu = time.perf_counter() - t, time.thread_time() - c
    r.update(files=len(files), audio_s=round(secs, 1), batch_size=batch, files_per_call=per_call,
             decode_plan_cpu_s_per_audio_hour=round(plan_cpu / secs * 3600, 4),
             decode_vad_cpu_s_per_audio_hour=round(vad_cpu / secs * 3600, 4),
             decode_plan_wall_s=round(plan_wall, 3), kept_fraction=round(
                 sum(len(p[1]) for p in plans if not isinstance(p, Exception)) / (secs * SR), 4))

    def row(i, samples, spans=None):
        ss, se, gs, ge = spans if spans else (None, None, [], [])
        return {"audio_id": f"v{i:03d}", "source_uri": f"mem://v{i:03d}.wav", "reference": None,
                "language": None, "duration_s": len(files[i]) / SR, "pcm16": samples.tobytes(), "seg_start": gs,
                "seg_end": ge, "speech_start": ss, "speech_end": se, "status": OK, "error": None}

    rows = {"decode": [row(i, p[1], p[0]) for i, p in enumerate(plans)],
            "actor": [row(i, a) for i, a in enumerate(i16)]}
    tables = {w: [pa.Table.from_pylist(rs[s:s + per_call], schema=DECODED_SCHEMA)
                  for s in range(0, len(rs), per_call)] for w, rs in rows.items()}
    stages = {w: make_stage(ctx, j, backend) for w, j in jobs.items()}
    r["actor_vad_where"] = stages["actor"].vad_where
    for w in stages:   # warm-up: first kernels, the detector's shapes
        stages[w](tables[w][0])
    sync(dev)
    runs, texts = {"decode": [], "actor": []}, {}
    for _ in range(2):
        for w, stage in stages.items():
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=jobs[w].asr.concurrent_batches) as pool:
                outs = list(pool.map(stage, tables[w]))
            sync(dev)
            wall = time.perf_counter() - t
            out = pa.concat_tables(outs)
            runs[w].append({"wall_s": round(wall, 3), "rtfx": round(secs / wall, 1),
                            "actor_cpu_s": perf_sum(out, "perf_asr_cpu_s"),
                            "actor_vad_s": perf_sum(out, "perf_asr_vad_s"),
                            "rows_ok": sum(s == OK for s in out.column("status").to_pylist())})
            texts[w] = out.select(["audio_id", "text", "segments"]).to_pylist()
            ctx.save()
    r["runs"] = runs
    best = {w: min(x["wall_s"] for x in v) for w, v in runs.items()}
    r["rtfx_best"] = {w: round(secs / b, 1) for w, b in best.items()}
    r["actor_over_decode_wall"] = round(best["actor"] / best["decode"], 4)
    r["same_text_rate"] = round(sum(a["text"] == b["text"] for a, b in zip(texts["decode"], texts["actor"]))
                                / max(1, len(files)), 4)
    r["same_segments_rate"] = round(sum([(s["start_s"], s["end_s"]) for s in a["segments"] or []]
                                        == [(s["start_s"], s["end_s"]) for s in b["segments"] or []]
                                        for a, b in zip(texts["decode"], texts["actor"])) / max(1, len(files)), 4)
    del torch


# ==================================================================================================
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "gpu_check"),
                   help="folder for gpu_check.json and the phase logs")
    p.add_argument("--dry-run", action="store_true", help="CPU, the tiny model, small batches (make test)")
    p.add_argument("--phases", default="", help="comma-separated subset of: " + ",".join(n for n, _ in PHASES))
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all phases together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase", help=argparse.SUPPRESS)          # internal: run one phase (a child)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        return run_child(args)
    return run_parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
