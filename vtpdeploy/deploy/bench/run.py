"""run_bench: resolve artifacts, build runners, run the interleaved loop, assemble the report."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import VtpError
from . import stats
from .artifacts import Artifact, resolve, resolve_baseline
from .engines import check_precision
from .environment import collect, power_state
from .loop import Slot, measure, warmup
from .memory import PeakMemory, headline, split_device_memory

SCHEMA_VERSION = 1
BACKEND_CHOICES = ("torch", "ort", "openvino", "trt", "auto")
DEVICE_CHOICES = ("cpu", "cuda", "jetson")


def parse_batches(text: str | Sequence[int]) -> list[int]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            b = int(item)
        except (TypeError, ValueError):
            raise VtpError(f"--batch must be a comma-separated list of positive integers, got {text!r}") from None
        if b < 1:
            raise VtpError(f"--batch must be >= 1, got {b}")
        out.append(b)
    if not out:
        raise VtpError("--batch is empty")
    return list(dict.fromkeys(out))


def check_timing(batches: str | Sequence[int], duration_s: float | None, iters: int | None, warmup_s: float,
                 block_iters: int, threads: int | None) -> tuple[list[int], float | None]:
    """(batches, duration_s) from the timing settings (3 s when neither duration nor iters is given)."""
    batches = parse_batches(batches)
    if duration_s is not None and iters is not None:
        raise VtpError("give --duration-s or --iters, not both")
    if iters is not None and iters < 1:
        raise VtpError(f"--iters must be >= 1, got {iters}")
    if duration_s is None and iters is None:
        duration_s = 3.0
    if duration_s is not None and duration_s <= 0:
        raise VtpError(f"--duration-s must be > 0, got {duration_s}")
    if warmup_s < 0:
        raise VtpError(f"--warmup-s must be >= 0, got {warmup_s}")
    if block_iters < 1:
        raise VtpError(f"--block must be >= 1, got {block_iters}")
    if threads is not None and threads < 1:
        raise VtpError(f"--threads must be >= 1, got {threads}")
    return batches, duration_s


def resolve_backends(backend: str, device: str) -> list[str]:
    """`auto`: trt on jetson/cuda when installed, else ort (CUDA EP on cuda), OpenVINO-free default."""
    from ..runners.base import BACKENDS, available_backends

    names = [b.strip() for b in backend.split(",") if b.strip()]
    if not names:
        raise VtpError("--backend is empty")
    out = []
    for name in names:
        if name == "auto":
            have = available_backends()
            name = "trt" if device in ("cuda", "jetson") and "trt" in have else "ort"
        elif name not in BACKENDS:
            raise VtpError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
        elif name not in available_backends():
            from ...errors import BackendUnavailableError

            pkg = BACKENDS[name][2]
            raise BackendUnavailableError(f"backend {name!r} needs the {pkg!r} package, which is not installed; "
                                          f"installed backends: {', '.join(available_backends())}")
        if name == "trt" and device == "cpu":
            raise VtpError("--backend trt runs on a GPU: use --device cuda or --device jetson")
        out.append(name)
    return list(dict.fromkeys(out))


def runner_device(backend: str, device: str) -> str:
    if device == "cpu":
        return "cpu"
    if backend == "openvino":
        raise VtpError(f"--backend openvino runs on the CPU only, not --device {device}")
    if backend == "ort" and device == "jetson":
        import onnxruntime as ort

        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return "cuda"


def _check_device(device: str, backends: list[str]) -> None:
    if device not in DEVICE_CHOICES:
        raise VtpError(f"unknown --device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if device == "jetson":
        from .environment import jetson

        if jetson() is None:
            raise VtpError("--device jetson: this machine is not a Jetson (use --host USER@JETSON to run there)")
    if device in ("cuda", "jetson") and "torch" in backends:
        import torch

        if not torch.cuda.is_available():
            raise VtpError(f"--device {device}: torch sees no CUDA GPU")


def _check_shape(art: Artifact, runner, batch: int, chw) -> tuple[int, int, int]:
    """The (C, H, W) to feed; one-line errors when the artifact cannot take `batch` x chw."""
    shape = runner.input_shape()
    if shape is not None and len(shape) != 4:
        raise VtpError(f"{art.spec}: expects a {len(shape)}-D input {tuple(shape)}, not NCHW images")
    if shape is not None and isinstance(shape[0], int) and shape[0] != batch:
        raise VtpError(
            f"{art.spec}: fixed batch size {shape[0]} but --batch {batch} was asked; "
            f"re-export with that batch or a dynamic batch"
        )
    declared = tuple(shape[1:]) if shape is not None and all(isinstance(d, int) for d in shape[1:]) else None
    if declared is None and art.has_module:
        declared = art.input_chw()
    if declared is not None and chw is not None and tuple(declared) != tuple(chw):
        raise VtpError(
            f"{art.spec}: input size {'x'.join(map(str, declared))} does not match the other models' "
            f"{'x'.join(map(str, chw))}; compare models at the same image size"
        )
    final = declared or chw
    if final is None:
        raise VtpError(f"{art.spec}: input has a dynamic image size and no other model fixes it")
    return tuple(int(v) for v in final)


def _build_slots(arts: list[Artifact], backend: str, device: str, batch: int, threads, seed: int):
    """Build every runner (measuring the memory each adds) and one seeded input per shape."""
    from ..runners import make_runner

    rdev = runner_device(backend, device)
    slots, extras, chw = [], [], None
    inputs: dict = {}
    for art in arts:
        obj, file = art.for_backend(backend, batch, threads)
        with PeakMemory(cuda=rdev.startswith("cuda"), device=rdev) as pm:
            runner = make_runner(backend, obj, device=rdev, threads=threads, **_runner_options(backend, art))
            chw = _check_shape(art, runner, batch, chw)
            key = (batch, *chw)
            if key not in inputs:
                inputs[key] = np.random.default_rng(seed).standard_normal(key).astype(np.float32)
            for _ in range(2):
                runner.infer(inputs[key])
            runner.synchronize()
        mem = dict(pm.info)
        hook = getattr(runner, "memory_info", None)
        if callable(hook):
            mem.update(hook() or {})
        mem = split_device_memory(mem, runner, rdev)  # weights vs activations, each with its method
        slots.append(Slot(art.label, runner, inputs[key]))
        extras.append({"file": file, "memory": mem, "device": rdev, "input_shape": list(key),
                       "precision": getattr(runner, "precision", None), "spin": getattr(runner, "spin", None)})
    return slots, extras


def _runner_options(backend: str, art: Artifact) -> dict:
    """torch runs at `--precision fp16` when asked (fp32 otherwise); other backends take theirs from the artifact.
    ONNX Runtime spins only inside a run (`spin="run"`): threads still spinning after one model's run slowed
    the next model's first call by ~30 ms on 2 cores (see ort_runner)."""
    if backend == "ort":
        return {"spin": "run"}
    precision = getattr(art, "precision", "auto")
    return {"precision": precision} if backend == "torch" and precision in ("fp32", "fp16") else {}


def _unique_labels(arts: list[Artifact]) -> None:
    seen: dict[str, int] = {}
    for art in arts:
        n = seen.get(art.label, 0)
        seen[art.label] = n + 1
        if n:
            art.label = f"{art.label}#{n + 1}"


def run_bench(
    artifacts: Sequence[str | Path],
    backend: str = "auto",
    device: str = "cpu",
    batches: str | Sequence[int] = (1,),
    baseline: str | None = None,
    warmup_s: float = 1.0,
    duration_s: float | None = None,
    iters: int | None = None,
    threads: int | None = None,
    *,
    block_iters: int = 10,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    n_boot: int = 2000,
    progress: Callable[[str], None] | None = None,
    tegrastats: bool | None = None,
    precision: str = "auto",
) -> dict:
    """Benchmark candidates against a baseline, interleaved; returns the report (see docs/bench.md).

    `tegrastats`: sample it during the timed window (default: only on --device jetson).
    `precision`: TensorRT engine precision (auto: read from each ONNX; see docs/tensorrt.md); for the torch
    backend fp16 casts the model and inputs (CUDA only), anything else runs fp32."""
    say = progress or (lambda msg: None)
    if not artifacts:
        raise VtpError("give at least one ARTIFACT")
    batches, duration_s = check_timing(batches, duration_s, iters, warmup_s, block_iters, threads)
    threads = threads or os.cpu_count() or 1
    backends = resolve_backends(backend, device)
    _check_device(device, backends)
    base, arts = _resolve_artifacts(artifacts, baseline, cache_dir, precision, backends)
    timing = {"warmup_s": warmup_s, "duration_s": duration_s, "iters": iters, "block_iters": block_iters}
    results, comparisons, schedules = [], [], []
    for be in backends:
        for batch in batches:
            say(f"{be} batch {batch}: loading {len(arts)} model(s)")
            group = _measure_group(arts, be, device, batch, threads, seed, timing,
                                   _tegrastats_sampler(tegrastats, device, warn=not schedules), say)
            schedules.append(group.schedule)
            results += [_result(art, slot, extra, group, is_baseline=base is not None and idx == 0)
                        for idx, (art, slot, extra) in enumerate(zip(arts, group.slots, group.extras))]
            if base is not None:
                bcounts = base.counts()
                comparisons += [compare(base, group.slots[0], bcounts, art, slot, be, batch, seed, n_boot)
                                for art, slot in zip(arts[1:], group.slots[1:])]
    settings = {"backends": backends, "device": device, "batches": batches,
                "baseline": base.label if base is not None else None, "warmup_s": warmup_s, "duration_s": duration_s,
                "iters": iters, "threads": threads, "block_iters": block_iters, "seed": seed, "n_boot": n_boot}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "vtpdeploy bench",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "results": results,
        "comparison": comparisons,
        "schedules": schedules,
        "environment": collect(threads),
    }


def _resolve_artifacts(artifacts: Sequence[str | Path], baseline: str | None, cache_dir, precision: str,
                       backends: list[str]) -> tuple[Artifact | None, list[Artifact]]:
    """(baseline or None, every artifact with the baseline first), uniquely labelled, each at `precision`."""
    cache = Path(cache_dir) if cache_dir else None
    cands = [resolve(str(a), cache) for a in artifacts]
    _unique_labels(cands)
    base = resolve_baseline(baseline, cands, cache)
    arts = ([base] if base is not None else []) + cands
    _unique_labels(arts)
    if check_precision(precision) != "auto" and not {"trt", "torch"} & set(backends):
        raise VtpError("--precision sets the TensorRT engine or torch precision: use it with --backend trt or torch")
    if precision == "int8" and "torch" in backends:
        raise VtpError("--precision int8 is for TensorRT engines; --backend torch runs fp32 or fp16")
    for art in arts:
        art.precision = precision
    return base, arts


@dataclass
class _Group:
    """One backend x batch, measured: slots (runners closed), per-slot extras, schedule, tegrastats."""

    backend: str
    batch: int
    slots: list[Slot]
    extras: list[dict]
    schedule: dict
    sampler: Any = None
    teg: dict | None = None


def _tegrastats_sampler(tegrastats: bool | None, device: str, warn: bool):
    """A tegrastats sampler when asked (default: on Jetson), else None; `warn`: say once why it cannot run."""
    if not (tegrastats or (tegrastats is None and device == "jetson")):
        return None
    from .tegrastats import TegrastatsSampler
    from .tegrastats import warn as warn_user

    sampler = TegrastatsSampler()
    if sampler.error and warn:  # one warning per run; the report records it per result
        warn_user(f"{sampler.error}: no GPU load, power or board RAM in this report")
    return sampler


def _measure_group(arts: list[Artifact], backend: str, device: str, batch: int, threads: int, seed: int,
                   timing: dict, sampler, say: Callable[[str], None]) -> _Group:
    """Load every artifact, warm up, run the interleaved loop (tegrastats sampling the timed window)."""
    slots, extras = _build_slots(arts, backend, device, batch, threads, seed)
    try:
        say(f"{backend} batch {batch}: warm-up {timing['warmup_s']:g}s, then interleaved measurement")
        with sampler if sampler is not None else contextlib.nullcontext():
            warmup(slots, timing["warmup_s"])
            if sampler is not None:
                sampler.mark_start()
            schedule = measure(slots, duration_s=timing["duration_s"], iters=timing["iters"],
                               block_iters=timing["block_iters"])
            if sampler is not None:
                sampler.mark_end()
        teg = sampler.summary() if sampler is not None else None
    finally:
        for s in slots:
            s.runner.close()
    schedule.update(backend=backend, batch=batch)
    return _Group(backend, batch, slots, extras, schedule, sampler, teg)


def _result(art: Artifact, slot: Slot, extra: dict, group: _Group, is_baseline: bool) -> dict:
    """One model's row: latency summary, throughput, memory, counts and what ran it."""
    be, batch, sampler, teg = group.backend, group.batch, group.sampler, group.teg
    counts = art.counts()
    mem = extra["memory"]
    file_mb = art.file_mb(extra["file"]) if extra["file"] is not None else None
    if sampler is not None:
        from .tegrastats import unified_memory

        mem["tegrastats"] = {**sampler.status(), "summary": teg}
        mem["jetson"] = unified_memory(teg, sampler.rss(), art.file_mb(extra["file"]) if extra["file"] else None)
    row = {
        "model": art.label,
        "role": "baseline" if is_baseline else "candidate",
        "artifact": art.spec,
        "kind": art.kind,
        "backend": be,
        "device": extra["device"],
        "batch": batch,
        "input_shape": extra["input_shape"],
        "iters": len(slot.latencies_ms),
        "blocks": len(slot.block_means_ms),
        "warmup_iters": slot.warmup_iters,
        "latency_ms": {k: round(v, 4) for k, v in stats.summarize(slot.latencies_ms).items()},
        "throughput_ips": round(stats.throughput(slot.latencies_ms, batch), 3),
        "peak_mem_mb": headline(mem, extra["device"]),
        "memory": mem,
        "macs": counts["macs"],
        "params": counts["params"],
        "counts_from": counts["counts_from"],
        "file_mb": file_mb,
        "block_means_ms": [round(v, 4) for v in slot.block_means_ms],
        "latencies_ms": _subsample(slot.latencies_ms),
    }
    if be == "torch":
        row["precision"] = extra["precision"]
    if be == "ort":
        row["spin"] = extra["spin"]
    if be == "trt":  # what the timed engine is: version, precision, TF32, flags, GPU and clocks
        row["tensorrt"] = art.trt_info.get(batch)
    if sampler is not None:
        from .tegrastats import energy_per_inference

        input_power = (teg or {}).get("input_power")
        row["power"] = {"input": input_power, **power_state(),
                        "energy": energy_per_inference(input_power, row["latency_ms"]["mean"], batch)}
    return row


def _subsample(values: list[float], limit: int = 2000) -> list[float]:
    """At most `limit` per-iteration latencies, evenly strided in measurement order."""
    if len(values) > limit:
        idx = np.linspace(0, len(values) - 1, limit).round().astype(int)
        values = [values[i] for i in idx]
    return [round(v, 4) for v in values]


def compare(base, bslot, bcounts, art, slot, backend, batch, seed, n_boot) -> dict:
    """Speedup (baseline mean / candidate mean) with a paired round-level bootstrap CI."""
    speedup, lo, hi = stats.bootstrap_speedup(bslot.block_means_ms, slot.block_means_ms, seed=seed,
                                              n_boot=n_boot, paired=True)
    ccounts = art.counts()
    mac_ratio = None
    if bcounts.get("macs") and ccounts.get("macs"):
        mac_ratio = bcounts["macs"] / ccounts["macs"]
    eff = speedup / mac_ratio if mac_ratio else None
    return {
        "candidate": art.label,
        "baseline": base.label,
        "backend": backend,
        "batch": batch,
        "speedup": round(speedup, 4),
        "speedup_ci": [round(lo, 4), round(hi, 4)],
        "ci_method": f"paired bootstrap over {len(slot.block_means_ms)} interleaved rounds, {n_boot} resamples, 95% percentile, seed {seed}",
        "mac_ratio": round(mac_ratio, 4) if mac_ratio else None,
        "efficiency": round(eff, 4) if eff is not None else None,
        "efficiency_ci": [round(lo / mac_ratio, 4), round(hi / mac_ratio, 4)] if mac_ratio else None,
    }
