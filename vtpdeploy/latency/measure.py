"""Timing a latency table's entries with a vtpdeploy runner: all at once, in the bench loop's interleaved rounds.

`measure_fresh` builds a `LatencyTable` (no cache: `latency.cache.obtain_table` decides when to measure), and
`check_ratio` is the cheap test a cached table passes before it is reused.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..deploy.bench import loop
from .parts import (
    calibration_models,
    default_grid,
    grid_entries,
    model_dims,
    part_module,
    sample_input,
    timed_artifact,
)
from .table import Calibration, Grid, LatencyTable

# measure_fn(part, widths, dims) -> ms, or (ms, spread %): replaces the runner (tests, custom harnesses);
# part "model" gets a tuple of BlockWidths
MeasureFn = Callable[[str, tuple, dict], "float | tuple[float, float | None]"]
WARMUP_S = 0.05  # time-based warm-up per table entry (the bench loop's; a table has ~50 entries)
BLOCK_ITERS = 5  # calls per entry per round: the first call after another session pays for its idle threads
CALIBRATION_KEEPS = (1.0, 0.7, 0.4)  # whole models (fraction of every gate kept) that calibrate the part sum
CHECK_ROUNDS = 6  # interleaved rounds of the two whole models a cached table is checked with


def _median_ms(backend: str, artifact, x: np.ndarray, device: str, threads: int | None, iters: int,
               warmup_iters: int, warmup_s: float) -> float:
    """Median per-call latency of `artifact` on `x`, from the bench timing loop (one slot)."""
    from ..deploy.runners import make_runner

    with make_runner(backend, artifact, device=device, threads=threads) as runner:
        slot = loop.Slot("latency-table", runner, x)
        loop.warmup([slot], warmup_s, min_iters=warmup_iters)
        loop.measure([slot], duration_s=None, iters=iters, block_iters=iters)
    return float(np.median(slot.latencies_ms))


def runner_measure(backend: str, batch: int, device: str = "cpu", threads: int | None = None,
                   iters: int = 20, warmup: int = 3, model=None, warmup_s: float = WARMUP_S,
                   slice_input: bool = False) -> Callable[[str, tuple, dict], float]:
    """One part at a time through a vtpdeploy runner, median ms (for a custom harness; tables themselves
    measure all entries interleaved)."""

    def measure_part(part: str, widths: tuple[int, ...], dims: dict) -> float:
        module = part_module(part, widths, dims, model, slice_input)
        x = sample_input(part, dims, batch)
        with tempfile.TemporaryDirectory(prefix="vtp-lat-") as tmp:
            artifact = timed_artifact(backend, module, x, Path(tmp) / "part.onnx")
            return _median_ms(backend, artifact, x, device, threads, iters, warmup, warmup_s)

    return measure_part


def measure_interleaved(entries: list[tuple[str, object, np.ndarray]], backend: str, *, device: str = "cpu",
                        threads: int | None = None, rounds: int = 15, block_iters: int = BLOCK_ITERS,
                        warmup_s: float = WARMUP_S) -> list[tuple[float, float]]:
    """(median ms, spread %) per (label, artifact, input): every entry loaded at once and timed in the
    bench loop's interleaved rounds (`block_iters` calls per entry per round), so load changes hit all
    entries alike. Spread = IQR of an entry's calls / their median.

    ONNX Runtime sessions run without thread spinning here: with ~50 sessions alive, the spinning
    threads of the ones just run made the next one ~3x slower on 2 cores; a session timed alone is as
    fast without spinning (DeiT-S part and whole model, measured)."""
    from contextlib import ExitStack

    from ..deploy.runners import make_runner

    options = {"spin": "off"} if backend == "ort" else {}
    with ExitStack() as stack:
        slots = [loop.Slot(label, stack.enter_context(make_runner(backend, art, device=device, threads=threads,
                                                                  **options)), x)
                 for label, art, x in entries]
        loop.warmup(slots, warmup_s, min_iters=3)
        loop.measure(slots, duration_s=None, iters=rounds * block_iters, block_iters=block_iters)
    out = []
    for slot in slots:
        q25, q50, q75 = np.percentile(slot.latencies_ms, [25, 50, 75])
        out.append((float(q50), float(100.0 * (q75 - q25) / q50)))
    return out


def _as_pair(value) -> tuple[float, float | None]:
    if isinstance(value, tuple):
        return float(value[0]), (None if value[1] is None else float(value[1]))
    return float(value), None


def measure_entries(model, entries: list[tuple[str, tuple]], calib: list, dims: dict, *, backend: str, batch: int,
                    device: str, threads: int | None, rounds: int, slice_input: bool = False,
                    measure_fn: MeasureFn | None = None) -> list[tuple[float, float | None]]:
    """(median ms, spread % or None) of every (part, widths) entry, then of every calibration model."""
    if measure_fn is not None:
        return ([_as_pair(measure_fn(part, w, dims)) for part, w in entries]
                + [_as_pair(measure_fn("model", tuple(widths), dims)) for _, _, widths in calib])
    with tempfile.TemporaryDirectory(prefix="vtp-lat-") as tmp:
        timed = []
        for i, (part, w) in enumerate(entries):
            x = sample_input(part, dims, batch)
            module = part_module(part, w, dims, model, slice_input)
            timed.append((f"{part}{w}", timed_artifact(backend, module, x, Path(tmp) / f"p{i}.onnx"), x))
        x = sample_input("stem", dims, batch)
        for keep, small, _ in calib:
            timed.append((f"model@{keep}", timed_artifact(backend, small, x, Path(tmp) / f"m{keep}.onnx"), x))
        return measure_interleaved(timed, backend, device=device, threads=threads, rounds=rounds)


def measure_fresh(model, key: dict, dims: dict, *, backend: str, batch: int = 1, device: str = "cpu",
                  threads: int | None = None, points: int = 5, rounds: int = 15, constraints=None,
                  calibrate: Sequence[float] = CALIBRATION_KEEPS, measure_fn: MeasureFn | None = None,
                  progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Measure every grid entry, the stem and the calibration models (whole compact models keeping each fraction
    in `calibrate` of every gate under `constraints`) interleaved for `rounds` rounds; the table stores medians,
    their spread (median over entries, None when `measure_fn` gives none) and the fitted `Calibration`."""
    say = progress or (lambda msg: None)
    grid = default_grid(dims, points)
    entries = grid_entries(grid)
    calib = calibration_models(model, calibrate, constraints)
    if measure_fn is None:
        say(f"latency table: {len(entries)} parts + {len(calib)} whole models on {backend}, {rounds} interleaved rounds")
    measured = measure_entries(model, entries, calib, dims, backend=backend, batch=batch, device=device,
                               threads=threads, rounds=rounds, measure_fn=measure_fn,
                               slice_input=bool(getattr(constraints, "shared_input_order", False)))
    spreads = [sp for _, sp in measured if sp is not None]
    it = iter(ms for ms, _ in measured[:len(entries)])

    def grid_of(part: str) -> Grid:
        a, b = grid[part]
        return Grid(a=a, b=b, ms=[[next(it) for _ in b] for _ in a])

    attn, mlp = grid_of("attn"), grid_of("mlp")
    table = LatencyTable(key=key, depth=dims["depth"], num_heads=dims["num_heads"], head_dim=dims["head_dim"],
                         attn=attn, mlp=mlp, stem_ms=next(it), measurements=len(measured), rounds=int(rounds),
                         spread_pct=round(float(np.median(spreads)), 2) if spreads else None,
                         created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if calib:
        whole = measured[len(entries):]
        points_ = [{"keep": keep, "part_sum_ms": table.part_sum_widths(widths), "measured_ms": ms,
                    "spread_pct": None if sp is None else round(sp, 2)}
                   for (keep, _, widths), (ms, sp) in zip(calib, whole)]
        table.calibration = Calibration.fit(points_)
        say(f"latency table: calibration scale {table.calibration.scale:.3f}, offset "
            f"{table.calibration.offset_ms:.2f} ms, max residual {table.calibration.max_residual_pct}%")
    return table


def check_ratio(table: LatencyTable, model, *, backend: str, batch: int = 1, device: str = "cpu",
                threads: int | None = None, constraints=None, rounds: int = CHECK_ROUNDS,
                measure_fn: MeasureFn | None = None) -> dict | None:
    """Time the table's unpruned and narrowest calibration models interleaved now: {keep, table_ratio,
    measured_ratio, mismatch_pct}. None when the table has no calibration points to compare with."""
    points = {float(p["keep"]): float(p["measured_ms"]) for p in (table.calibration.points if table.calibration else [])}
    if 1.0 not in points or len(points) < 2:
        return None
    keep = min(points)
    calib = calibration_models(model, (1.0, keep), constraints)
    (full, _), (small, _) = measure_entries(model, [], calib, model_dims(model), backend=backend, batch=batch,
                                            device=device, threads=threads, rounds=rounds, measure_fn=measure_fn)
    table_ratio, measured_ratio = points[keep] / points[1.0], small / full
    return {"keep": keep, "table_ratio": round(table_ratio, 4), "measured_ratio": round(measured_ratio, 4),
            "mismatch_pct": round(100.0 * (measured_ratio / table_ratio - 1.0), 2)}
