"""run_bench: resolve artifacts, build runners, run the interleaved loop, assemble the report."""

from __future__ import annotations

import contextlib
import dataclasses
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
from .hints import runtime_warnings
from .loop import Slot, measure, warmup
from .memory import PeakMemory, headline, split_device_memory
from .schema import Comparison, Row, Warnings
from .settings import BenchOptions, check_device, check_shape, check_timing, resolve_backends, runner_device

SCHEMA_VERSION = 1


def _build_slots(arts: list[Artifact], backend: str, device: str, batch: int, threads, seed: int):
    """Build every runner (measuring the memory each adds) and one seeded input per shape."""
    from ..runners import make_runner

    rdev = runner_device(backend, device)
    slots, extras, chw = [], [], None
    inputs: dict = {}
    for art in arts:
        obj, file = art.for_backend(backend, batch, threads)
        with PeakMemory(cuda=rdev.startswith("cuda"), device=rdev) as pm:
            runner = make_runner(backend, obj, device=rdev, threads=threads, **_runner_options(backend, art, batch))
            chw = check_shape(art, runner, batch, chw)
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
                       "runner": runner.row_extras()})
    return slots, extras


def _runner_options(backend: str, art: Artifact, batch: int) -> dict:
    """torch runs at `--precision fp16` when asked (fp32 otherwise); other backends take theirs from the artifact.
    ONNX Runtime spins only inside a run (`spin="run"`): threads still spinning after one model's run slowed
    the next model's first call by ~30 ms on 2 cores (see ort_runner). TensorRT gets the engine's record."""
    if backend == "ort":
        return {"spin": "run"}
    if backend == "trt":
        return {"record": art.trt_info.get(batch)}
    precision = getattr(art, "precision", "auto")
    return {"precision": precision} if backend == "torch" and precision in ("fp32", "fp16") else {}


def _unique_labels(arts: list[Artifact]) -> None:
    seen: dict[str, int] = {}
    for art in arts:
        n = seen.get(art.label, 0)
        seen[art.label] = n + 1
        if n:
            art.label = f"{art.label}#{n + 1}"


def run_bench(artifacts: Sequence[str | Path], options: BenchOptions | None = None, *,
              progress: Callable[[str], None] | None = None, **settings) -> dict:
    """Benchmark candidates against a baseline, interleaved; returns the report (see docs/bench.md).

    `options` (a `BenchOptions`; keyword `settings` override its fields, e.g. `backend="ort", batches=[1, 8]`)."""
    opts = dataclasses.replace(options or BenchOptions(), **settings)
    say = progress or (lambda msg: None)
    if not artifacts:
        raise VtpError("give at least one ARTIFACT")
    batches, duration_s = check_timing(opts.batches, opts.duration_s, opts.iters, opts.warmup_s, opts.block_iters,
                                       opts.threads)
    opts = dataclasses.replace(opts, batches=batches, duration_s=duration_s, threads=opts.threads or os.cpu_count() or 1)
    backends = resolve_backends(opts.backend, opts.device)
    check_device(opts.device, backends)
    base, arts = _resolve_artifacts(artifacts, opts.baseline, opts.cache_dir, opts.precision, backends)
    warnings = runtime_warnings(arts, backends, opts.device)  # the CLI prints them
    results, comparisons, schedules = [], [], []
    for be in backends:
        for batch in batches:
            say(f"{be} batch {batch}: loading {len(arts)} model(s)")
            group = _measure_group(arts, be, batch, opts, _tegrastats_sampler(opts.tegrastats, opts.device,
                                                                               warn=not schedules), say)
            schedules.append(group.schedule)
            results += [_row(art, slot, extra, group, is_baseline=base is not None and idx == 0)
                        for idx, (art, slot, extra) in enumerate(zip(arts, group.slots, group.extras))]
            if base is not None:
                reference = Timed(base.label, group.slots[0].block_means_ms, base.counts())
                comparisons += [compare(reference, Timed(art.label, slot.block_means_ms, art.counts()), be, batch,
                                        opts) for art, slot in zip(arts[1:], group.slots[1:])]
    settings_out = {"backends": backends, "device": opts.device, "batches": batches,
                    "baseline": base.label if base is not None else None, "warmup_s": opts.warmup_s,
                    "duration_s": duration_s, "iters": opts.iters, "threads": opts.threads,
                    "block_iters": opts.block_iters, "seed": opts.seed, "n_boot": opts.n_boot}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "vtpdeploy bench",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings_out,
        "results": [r.model_dump(exclude_unset=True) for r in results],
        "comparison": [c.model_dump() for c in comparisons],
        "schedules": schedules,
        "warnings": Warnings.validate_python(warnings),
        "environment": collect(opts.threads),
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


def _measure_group(arts: list[Artifact], backend: str, batch: int, opts: BenchOptions, sampler,
                   say: Callable[[str], None]) -> _Group:
    """Load every artifact, warm up, run the interleaved loop (tegrastats sampling the timed window)."""
    slots, extras = _build_slots(arts, backend, opts.device, batch, opts.threads, opts.seed)
    try:
        say(f"{backend} batch {batch}: warm-up {opts.warmup_s:g}s, then interleaved measurement")
        with sampler if sampler is not None else contextlib.nullcontext():
            warmup(slots, opts.warmup_s)
            if sampler is not None:
                sampler.mark_start()
            schedule = measure(slots, duration_s=opts.duration_s, iters=opts.iters, block_iters=opts.block_iters)
            if sampler is not None:
                sampler.mark_end()
        teg = sampler.summary() if sampler is not None else None
    finally:
        for s in slots:
            s.runner.close()
    schedule.update(backend=backend, batch=batch)
    return _Group(backend, batch, slots, extras, schedule, sampler, teg)


def _row(art: Artifact, slot: Slot, extra: dict, group: _Group, is_baseline: bool) -> Row:
    """One model's row: latency summary, throughput, memory, counts, what ran it and its runner's extras."""
    batch, sampler, teg = group.batch, group.sampler, group.teg
    counts = art.counts()
    mem = extra["memory"]
    file_mb = art.file_mb(extra["file"]) if extra["file"] is not None else None
    if sampler is not None:
        from .tegrastats import unified_memory

        mem["tegrastats"] = {**sampler.status(), "summary": teg}
        mem["jetson"] = unified_memory(teg, sampler.rss(), art.file_mb(extra["file"]) if extra["file"] else None)
    latency = {k: round(v, 4) for k, v in stats.summarize(slot.latencies_ms).items()}
    row = Row(
        model=art.label, role="baseline" if is_baseline else "candidate", artifact=art.spec, kind=art.kind,
        backend=group.backend, device=extra["device"], batch=batch, input_shape=extra["input_shape"],
        iters=len(slot.latencies_ms), blocks=len(slot.block_means_ms), warmup_iters=slot.warmup_iters,
        latency_ms=latency, throughput_ips=round(stats.throughput(slot.latencies_ms, batch), 3),
        peak_mem_mb=headline(mem, extra["device"]), memory=mem, macs=counts["macs"], params=counts["params"],
        counts_from=counts["counts_from"], file_mb=file_mb,
        block_means_ms=[round(v, 4) for v in slot.block_means_ms], latencies_ms=_subsample(slot.latencies_ms),
        **extra["runner"],
    )
    if sampler is not None:
        from .tegrastats import energy_per_inference

        input_power = (teg or {}).get("input_power")
        row.power = {"input": input_power, **power_state(),
                     "energy": energy_per_inference(input_power, latency["mean"], batch)}
    return row


def _subsample(values: list[float], limit: int = 2000) -> list[float]:
    """At most `limit` per-iteration latencies, evenly strided in measurement order."""
    if len(values) > limit:
        idx = np.linspace(0, len(values) - 1, limit).round().astype(int)
        values = [values[i] for i in idx]
    return [round(v, 4) for v in values]


@dataclass(frozen=True)
class Timed:
    """A model's label, its per-round mean latencies and its params / MACs, as a comparison reads them."""

    label: str
    block_means_ms: list[float]
    counts: dict


def compare(baseline: Timed, candidate: Timed, backend: str, batch: int, opts: BenchOptions) -> Comparison:
    """Speedup (baseline mean / candidate mean) with a paired round-level bootstrap CI, and E."""
    speedup, lo, hi = stats.bootstrap_speedup(baseline.block_means_ms, candidate.block_means_ms, seed=opts.seed,
                                              n_boot=opts.n_boot, paired=True)
    mac_ratio = None
    if baseline.counts.get("macs") and candidate.counts.get("macs"):
        mac_ratio = baseline.counts["macs"] / candidate.counts["macs"]
    eff = speedup / mac_ratio if mac_ratio else None
    return Comparison(
        candidate=candidate.label, baseline=baseline.label, backend=backend, batch=batch,
        speedup=round(speedup, 4), speedup_ci=[round(lo, 4), round(hi, 4)],
        ci_method=f"paired bootstrap over {len(candidate.block_means_ms)} interleaved rounds, {opts.n_boot} "
                  f"resamples, 95% percentile, seed {opts.seed}",
        mac_ratio=round(mac_ratio, 4) if mac_ratio else None,
        efficiency=round(eff, 4) if eff is not None else None,
        efficiency_ci=[round(lo / mac_ratio, 4), round(hi / mac_ratio, 4)] if mac_ratio else None,
    )
