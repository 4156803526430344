"""Latency-guided planning: widths that meet a latency budget while keeping the most importance.

Greedy: start from the full model; repeatedly take one feasible step down (under the hardware
constraints) on the gate whose removed dims cost the least importance per predicted millisecond
saved, until the table predicts `target_ms` or less. The result is an ordinary PrunePlan, so
`compact()` / `save()` / export work unchanged.

A table's part sum (stem + attention and MLP parts per block) is mapped to whole-model latency by
its `Calibration`: a line fitted to whole compact models measured in the same interleaved run,
because parts timed alone miss the costs between them (the issue that made uncalibrated plans
consistently ~15 % slower than predicted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import PlanError, VtpError
from ..fileio import atomic_write_text
from .gates import check_supported
from .plan import importance_scores
from .schema import PrunePlan, WidthConstraints
from .sites import read_dims
from .widths import WidthLadder, gate_plans


class Grid(BaseModel):
    """ms[i][j] = latency at (a[i], b[j])."""

    model_config = ConfigDict(extra="forbid")

    a: list[int]
    b: list[int]
    ms: list[list[float]]

    def at(self, x: float, y: float) -> float:
        return float(_bilinear(self.a, self.b, self.ms, x, y))


def _bilinear(a, b, ms, x, y) -> float:
    """Bilinear interpolation on the grid, clamped to its edges (scipy's RegularGridInterpolator)."""
    from scipy.interpolate import RegularGridInterpolator

    values = np.asarray(ms, dtype=float)
    axes, point = [], []
    for axis, v, dim in ((a, x, 0), (b, y, 1)):
        if len(axis) == 1:  # a one-point axis: constant along it
            values = values.take([0, 0], axis=dim)
            axis = [axis[0], axis[0] + 1]
        axes.append(np.asarray(axis, dtype=float))
        point.append(min(max(float(v), axes[-1][0]), axes[-1][-1]))
    return float(RegularGridInterpolator(axes, values, method="linear")([point])[0])


class Calibration(BaseModel):
    """Whole-model latency = scale x part sum + offset_ms, fitted on whole compact models."""

    model_config = ConfigDict(extra="forbid")

    scale: float = 1.0
    offset_ms: float = 0.0
    points: list[dict] = Field(default_factory=list, description="{keep, part_sum_ms, measured_ms, spread_pct}")
    max_residual_pct: float = 0.0

    def apply(self, part_sum_ms: float) -> float:
        return self.scale * part_sum_ms + self.offset_ms

    def invert(self, whole_ms: float) -> float:
        return (whole_ms - self.offset_ms) / self.scale

    @classmethod
    def fit(cls, points: list[dict]) -> "Calibration":
        """Least-squares line through (part_sum_ms, measured_ms); one point (or a degenerate fit) gives
        a pure scale."""
        x = np.array([p["part_sum_ms"] for p in points], dtype=float)
        y = np.array([p["measured_ms"] for p in points], dtype=float)
        scale, offset = float(np.mean(y / x)), 0.0
        if len(points) >= 2 and np.ptp(x) > 0.05 * x.max():
            a, b = np.polyfit(x, y, 1)
            if 0.5 <= a <= 2.0:  # a steeper or flatter line is noise, not a property of the device
                scale, offset = float(a), float(b)
        pred = scale * x + offset
        residual = float(np.max(np.abs(pred - y) / y)) * 100.0
        return cls(scale=scale, offset_ms=offset, points=points, max_residual_pct=round(residual, 2))


class LatencyTable(BaseModel):
    """Per-part latency grids for one model shape on one device/backend (ms per forward of the part)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["vtpdeploy-latency"] = "vtpdeploy-latency"
    version: int = 2
    key: dict
    depth: int
    num_heads: int
    head_dim: int
    attn: Grid = Field(description="a: qkv_in width, b: per-head V width")
    mlp: Grid = Field(description="a: mlp_in width, b: hidden width")
    stem_ms: float
    created: str = ""
    measurements: int = 0
    rounds: int = 0
    spread_pct: float | None = Field(None, description="median over entries of the relative IQR of their rounds")
    calibration: Calibration | None = None

    # -- prediction ---------------------------------------------------------------------
    def attn_ms(self, qkv_in: float, v_per_head: float) -> float:
        """0 for a removed attention (no V dim): what is left of it, a bias add, is within the calibration."""
        return self.attn.at(qkv_in, v_per_head) if v_per_head > 0 else 0.0

    def mlp_ms(self, mlp_in: float, hidden: float) -> float:
        return self.mlp.at(mlp_in, hidden) if hidden > 0 else 0.0

    def block_ms(self, qkv_in: float, v_total: float, mlp_in: float, hidden: float) -> float:
        return self.attn_ms(qkv_in, v_total / self.num_heads) + self.mlp_ms(mlp_in, hidden)

    def part_sum_widths(self, widths) -> float:
        """Stem + parts for a list of `arch.BlockWidths` (or 4-tuples in GATE_KINDS order), uncalibrated."""
        total = self.stem_ms
        for w in widths:
            if hasattr(w, "qkv_in"):
                total += self.block_ms(w.qkv_in, sum(w.v_dims), w.mlp_in, w.mlp_hidden)
            else:
                total += self.block_ms(*w)
        return total

    def calibrated(self, part_sum_ms: float) -> float:
        return self.calibration.apply(part_sum_ms) if self.calibration else part_sum_ms

    def predict_widths(self, widths) -> float:
        """Predicted whole-model latency (calibrated part sum)."""
        return self.calibrated(self.part_sum_widths(widths))

    def predict_plan(self, plan) -> float:
        from .compact import widths_from_plan

        return self.predict_widths(widths_from_plan(plan))

    def full_part_sum_ms(self) -> float:
        return self.stem_ms + self.depth * (self.attn.ms[-1][-1] + self.mlp.ms[-1][-1])

    def full_ms(self) -> float:
        """Predicted latency of the unpruned widths."""
        return self.calibrated(self.full_part_sum_ms())

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise VtpError(f"{path}: latency table not found") from None
        except Exception as exc:
            raise VtpError(f"{path}: not a latency table ({str(exc).splitlines()[0][:160]})") from None



def _block_ms(table: LatencyTable, gates: dict, b: int, part: str) -> float:
    if part == "attn":
        return table.attn_ms(gates[(b, "qkv_in")].count, gates[(b, "attn_v")].count / table.num_heads)
    return table.mlp_ms(gates[(b, "mlp_in")].count, gates[(b, "mlp_hidden")].count)


_PART = {"qkv_in": "attn", "attn_v": "attn", "mlp_in": "mlp", "mlp_hidden": "mlp"}


def plan_for_latency(
    model: nn.Module,
    target_ms: float,
    table: LatencyTable,
    constraints: WidthConstraints | None = None,
    importance: str = "gate",
    correction: float = 1.0,
) -> PrunePlan:
    """A plan whose predicted latency (by `table`, times `correction`) is ≤ `target_ms`, greedy on
    importance per ms. `correction` = measured / predicted of an earlier plan of this model (the closed
    loop of `deploy.bench.latency_target`); 1.0 trusts the table.

    Raises PlanError when even the narrowest feasible widths are predicted slower than the target.
    The plan's `rate` is the realised gated-dim rate; `thresholds` records `target_ms`, `predicted_ms`
    (corrected), `table_predicted_ms` and `correction`.
    """
    if target_ms <= 0:
        raise PlanError(f"target latency must be > 0 ms, got {target_ms}")
    if correction <= 0:
        raise PlanError(f"latency correction must be > 0, got {correction}")
    check_supported(model)
    constraints = constraints or WidthConstraints()
    dims = read_dims(model)
    heads, hd, depth = dims.num_heads, dims.head_dim, dims.depth
    if (table.num_heads, table.head_dim, table.depth, table.key.get("embed_dim")) != (heads, hd, depth, dims.embed_dim):
        raise PlanError("latency table was measured for a different model shape")
    scores = importance_scores(model, importance)
    gates = {k: WidthLadder(s, k[1], constraints, heads, hd) for k, s in scores.items()}
    for g in gates.values():
        g.i = len(g.choices) - 1
    part_ms = {(b, p): _block_ms(table, gates, b, p) for b in range(depth) for p in ("attn", "mlp")}
    predicted = table.stem_ms + sum(part_ms.values())
    budget = target_ms / correction
    budget = table.calibration.invert(budget) if table.calibration else budget
    while predicted > budget:
        best = None
        for k, g in gates.items():
            move = g.down()
            if move is None:
                continue
            step, mean = move
            b, part = k[0], _PART[k[1]]
            g.i -= 1
            new = _block_ms(table, gates, b, part)
            g.i += 1
            saved = part_ms[(b, part)] - new
            if saved <= 1e-9:
                continue
            cost = max(mean, 0.0) * step / saved  # importance lost per ms saved
            if best is None or (cost, k) < best[:2]:
                best = (cost, k, new)
        if best is None:
            raise PlanError(f"target {target_ms:.3f} ms is not reachable: the narrowest feasible widths are "
                            f"predicted at {correction * table.calibrated(predicted):.3f} ms on {table.key.get('backend')}")
        _, k, new = best
        gates[k].i -= 1
        b, part = k[0], _PART[k[1]]
        predicted += new - part_ms[(b, part)]
        part_ms[(b, part)] = new

    table_ms = float(table.calibrated(predicted))
    thresholds = {"target_ms": float(target_ms), "predicted_ms": correction * table_ms, "table_predicted_ms": table_ms,
                  "correction": float(correction)}
    return _assemble(scores, {k: g.count for k, g in gates.items()}, constraints, heads, hd, importance, thresholds)


def _assemble(scores, counts, constraints: WidthConstraints, heads: int, hd: int, importance: str,
              thresholds: dict) -> PrunePlan:
    plans = gate_plans(scores, counts, constraints, heads, hd)
    total = sum(g.size for g in plans)
    kept_n = sum(len(g.kept) for g in plans)
    plan = PrunePlan(rate=round(1.0 - kept_n / total, 6), scope="global", importance=importance, num_heads=heads,
                     head_dim=hd, thresholds=thresholds, constraints=constraints.model_copy(deep=True), gates=plans)
    plan.check_consistent()
    return plan


def ladder_plan(model: nn.Module, keep: float, constraints: WidthConstraints | None = None,
                importance: str = "weight_l1") -> PrunePlan:
    """Every gate at its widest feasible count <= `keep` x its size (keep=1: nothing pruned): the whole
    models a table is calibrated on, built on the same width ladders the planner walks."""
    if not 0.0 < keep <= 1.0:
        raise PlanError(f"keep fraction must be in (0, 1], got {keep}")
    check_supported(model)
    constraints = constraints or WidthConstraints()
    dims = read_dims(model)
    scores = importance_scores(model, importance)
    counts = {}
    for k, s in scores.items():
        choices = WidthLadder(s, k[1], constraints, dims.num_heads, dims.head_dim).choices
        fitting = [c for c in choices if c <= keep * s.numel() + 1e-9]
        counts[k] = fitting[-1] if fitting else choices[0]
    return _assemble(scores, counts, constraints, dims.num_heads, dims.head_dim, importance, {"keep": float(keep)})


def predicted_ms(plan: PrunePlan, table: LatencyTable) -> float:
    """The table's prediction for `plan`, times the correction it was planned with."""
    return table.predict_plan(plan) * float(plan.thresholds.get("correction", 1.0))


def kept_importance(plan: PrunePlan, scores: dict[tuple[int, str], torch.Tensor]) -> float:
    return float(sum(scores[(g.block, g.kind)][g.kept].sum() for g in plan.gates))


def latency_report(plan: PrunePlan, table: LatencyTable, measured_ms: float | None) -> dict:
    """Predicted (corrected, as planned) vs measured latency for a latency-guided plan."""
    pred = predicted_ms(plan, table)
    return {
        "target_ms": plan.thresholds.get("target_ms"),
        "predicted_ms": round(pred, 4),
        "measured_ms": round(measured_ms, 4) if measured_ms is not None else None,
        "error_pct": round(100.0 * (measured_ms - pred) / pred, 2) if measured_ms else None,
        "full_predicted_ms": round(table.full_ms(), 4),
        "calibrated": table.calibration is not None,
        "table_spread_pct": table.spread_pct,
        "realised_rate": round(plan.realised_rate, 6),
        "backend": table.key.get("backend"),
        "batch": table.key.get("batch"),
    }
