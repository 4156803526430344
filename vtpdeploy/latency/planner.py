"""Latency-guided planning: widths that meet a latency budget while keeping the most importance.

Greedy: start from the full model; repeatedly take one feasible step down (under the hardware
constraints) on the gate whose removed dims cost the least importance per predicted millisecond
saved, until the table predicts `target_ms` or less. The result is an ordinary PrunePlan, so
`compact()` / `save()` / export work unchanged. Pure torch: it reads a `LatencyTable`, never times.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PlanError
from ..prune.gates import check_supported, refuse_tied_qk
from ..prune.plan import importance_scores
from ..prune.schema import PrunePlan, WidthConstraints
from ..prune.sites import full_site_keys, read_dims
from ..prune.widths import WidthLadder, gate_plans
from .table import LatencyTable


def _block_ms(table: LatencyTable, gates: dict, b: int, part: str) -> float:
    if part == "attn":
        return table.attn_ms(gates[(b, "qkv_in")].count, gates[(b, "attn_v")].count / table.num_heads)
    return table.mlp_ms(gates[(b, "mlp_in")].count, gates[(b, "mlp_hidden")].count)


_PART = {"qkv_in": "attn", "attn_v": "attn", "mlp_in": "mlp", "mlp_hidden": "mlp"}


def _cheapest_step(table: LatencyTable, gates: dict, part_ms: dict) -> tuple[float, tuple, float] | None:
    """(importance lost per ms saved, gate key, the part's new ms) of the best feasible step down, or None."""
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
    return best


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
    loop of `latency.closed_loop`); 1.0 trusts the table.

    Raises PlanError when even the narrowest feasible widths are predicted slower than the target.
    The plan's `rate` is the realised gated-dim rate; `thresholds` records `target_ms`, `predicted_ms`
    (corrected), `table_predicted_ms` and `correction`.
    """
    if target_ms <= 0:
        raise PlanError(f"target latency must be > 0 ms, got {target_ms}")
    if correction <= 0:
        raise PlanError(f"latency correction must be > 0, got {correction}")
    check_supported(model)
    refuse_tied_qk(model, "latency-guided planning")
    constraints = constraints or WidthConstraints()
    dims = read_dims(model)
    heads, hd, depth = dims.num_heads, dims.head_dim, dims.depth
    if (table.num_heads, table.head_dim, table.depth, table.key.get("embed_dim")) != (heads, hd, depth, dims.embed_dim):
        raise PlanError("latency table was measured for a different model shape")
    scores = importance_scores(model, importance)
    gates = {k: WidthLadder(s, k[1], constraints, heads, hd) for k, s in scores.items()}
    for k in full_site_keys(model):  # behind a norm over its own features: only the full width is exact
        gates[k].choices = gates[k].choices[-1:]
    for g in gates.values():
        g.i = len(g.choices) - 1
    part_ms = {(b, p): _block_ms(table, gates, b, p) for b in range(depth) for p in ("attn", "mlp")}
    predicted = table.stem_ms + sum(part_ms.values())
    budget = target_ms / correction
    budget = table.calibration.invert(budget) if table.calibration else budget
    while predicted > budget:
        best = _cheapest_step(table, gates, part_ms)
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
    counts, full = {}, full_site_keys(model)
    for k, s in scores.items():
        choices = WidthLadder(s, k[1], constraints, dims.num_heads, dims.head_dim).choices
        choices = choices[-1:] if k in full else choices
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


def latency_plan_summary(report: dict) -> str:
    """One line for the run report: target, predicted and measured ms, and where the table came from."""
    table = report.get("table") or {}
    age = table.get("age_s")
    origin = {"cache": f"from the cache ({age / 3600:.1f} h old)" if age is not None else "from the cache",
              "fresh": "measured for this run and cached",
              "fresh, not cached": "measured for this run, not cached (too noisy)"}.get(table.get("source"), "")
    measured = report.get("measured_ms")
    return (f"Latency-guided plan on {report.get('backend')} b{report.get('batch')}: target {report.get('target_ms')} ms, "
            f"predicted {report.get('predicted_ms')} ms, measured {measured if measured is not None else '-'} ms "
            f"after {len(report.get('steps') or [])} step(s); table {origin or 'of unknown origin'}, "
            f"spread {report.get('table_spread_pct')} %." + (f" {table['warning']}" if table.get("warning") else ""))
