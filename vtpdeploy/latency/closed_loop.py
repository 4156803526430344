"""Closed-loop latency planning: plan from the table, measure the compact model, correct, re-plan.

A table predicts sums of parts; a whole plan can still land off target (kernels that change with the
mix of widths). Each step measures the planned model with the runner it will ship on and scales the
table's prediction by measured / predicted before planning again, until the measurement lands in
`band` around the target. Every step's prediction is made before that step's measurement.

`RelativeMeasure` times a plan interleaved with the unpruned widths and converts the ratio to the
table's own unpruned latency: a single timing of one model swung by ±30 % on a shared 2-core machine,
the ratio of two models timed in turn does not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from ..errors import PlanError
from ..prune.compact import compact
from ..prune.schema import PrunePlan, WidthConstraints
from .measure import measure_interleaved
from .parts import calibration_models, model_dims, sample_input, timed_artifact
from .planner import plan_for_latency
from .table import LatencyTable

BAND = (-0.06, 0.02)  # accepted (measured - target) / target: under target rather than over


def plan_to_target(
    model: nn.Module,
    target_ms: float,
    table: LatencyTable,
    constraints: WidthConstraints | None = None,
    importance: str = "gate",
    *,
    measure: Callable[[PrunePlan], float],
    steps: int = 3,
    band: tuple[float, float] = BAND,
    progress: Callable[[str], None] | None = None,
) -> tuple[PrunePlan, list[dict]]:
    """(plan, history): at most `steps` plans; returns the first one measured inside `band`, else the
    closest one that is not over the band (else the fastest). `measure(plan) -> ms` times its compact
    model. PlanError from the first step propagates (an unreachable target)."""
    say = progress or (lambda msg: None)
    correction, history = 1.0, []
    plans: list[tuple[float, PrunePlan]] = []
    for step in range(max(1, steps)):
        try:
            p = plan_for_latency(model, target_ms, table, constraints, importance, correction=correction)
        except PlanError:
            if not plans:
                raise
            break  # the corrected budget is unreachable: keep the plans measured so far
        ms = float(measure(p))
        err = ms / target_ms - 1.0
        history.append({"step": step, "correction": round(correction, 4), "predicted_ms": round(p.thresholds["predicted_ms"], 3),
                        "measured_ms": round(ms, 3), "error_pct": round(100.0 * err, 2),
                        "realised_rate": round(p.realised_rate, 4)})
        say(f"latency plan step {step}: predicted {p.thresholds['predicted_ms']:.2f} ms, measured {ms:.2f} ms "
            f"({100 * err:+.1f}% vs target {target_ms:.2f} ms)")
        p.thresholds["measured_ms"] = ms
        plans.append((err, p))
        if band[0] <= err <= band[1]:
            return p, history
        correction *= ms / p.thresholds["predicted_ms"]
    within = [(err, p) for err, p in plans if err <= band[1]]
    err, best = max(within, key=lambda t: t[0]) if within else min(plans, key=lambda t: t[0])
    return best, history


def unpruned_ms(table: LatencyTable) -> float:
    """The table's whole-model latency of the unpruned widths: measured when calibrated, else predicted."""
    points = table.calibration.points if table.calibration else []
    return next((float(p["measured_ms"]) for p in points if p.get("keep") == 1.0), table.full_ms())


class RelativeMeasure:
    """`measure(plan) -> ms` for `plan_to_target`: the plan's compact model and the unpruned widths timed
    interleaved (`rounds` x `block_iters` calls each), their latency ratio times `unpruned_ms(table)`.
    Use as a context manager (it holds a temp dir with the reference ONNX)."""

    def __init__(self, model: nn.Module, table: LatencyTable, backend: str, *, batch: int = 1, device: str = "cpu",
                 threads: int | None = None, constraints: WidthConstraints | None = None, rounds: int = 6,
                 block_iters: int = 3):
        self.model, self.backend, self.device, self.threads = model, backend, device, threads
        self.rounds, self.block_iters = rounds, block_iters
        self.reference_ms = unpruned_ms(table)
        self.x = sample_input("stem", model_dims(model), batch)
        self._tmp = tempfile.TemporaryDirectory(prefix="vtp-target-")
        self.dir = Path(self._tmp.name)
        ((_, full, _),) = calibration_models(model, (1.0,), constraints)  # the table's own unpruned widths
        self.reference = timed_artifact(backend, full, self.x, self.dir / "reference.onnx")
        self.calls = 0

    def __call__(self, plan: PrunePlan) -> float:
        self.calls += 1
        small = compact(self.model, plan).eval()
        candidate = timed_artifact(self.backend, small, self.x, self.dir / f"candidate{self.calls}.onnx")
        (c_ms, _), (r_ms, _) = measure_interleaved([("candidate", candidate, self.x), ("reference", self.reference, self.x)],
                                                   self.backend, device=self.device, threads=self.threads,
                                                   rounds=self.rounds, block_iters=self.block_iters, warmup_s=0.3)
        return float(np.float64(c_ms) / r_ms * self.reference_ms)

    def __enter__(self) -> "RelativeMeasure":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()
