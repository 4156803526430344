"""The prune stage's plan: rate-driven, MAC-guided (`prune.target_macs`) or latency-guided (`prune.target_latency_ms`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from torch import nn

from ..prune.plan import plan
from ..prune.profiles import constraints_for
from ..prune.schema import PrunePlan


class PruneSettings(Protocol):
    """The fields of the recipe's `prune` section that planning reads (`train.recipe.PruneSection`)."""

    rate: float
    scope: str
    importance: str
    hardware: str
    granularity: str
    drop_sublayers: bool
    target_macs: float | None
    target_latency_ms: float | None
    latency_backend: str
    latency_batch: int
    latency_steps: int
    latency_cache: Path | None


def make_plan(model: nn.Module, prune: PruneSettings, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> tuple[PrunePlan, dict | None]:
    """(plan, latency report or None): the one planning entry point of the pipeline."""
    constraints = constraints_for(prune.hardware).model_copy(
        update={"granularity": prune.granularity, "drop_sublayers": prune.drop_sublayers})
    if prune.target_macs is not None and prune.target_latency_ms is None:
        from ..prune.mac_target import plan_to_macs

        return plan_to_macs(model, prune.target_macs, scope=prune.scope, importance=prune.importance,
                            constraints=constraints), None
    if prune.target_latency_ms is None:
        return plan(model, prune.rate, scope=prune.scope, importance=prune.importance,
                    constraints=constraints), None
    from .cache import obtain_table
    from .closed_loop import RelativeMeasure, plan_to_target
    from .planner import latency_report

    table, source = obtain_table(model, prune.latency_backend, batch=prune.latency_batch, threads=threads,
                                 cache_dir=prune.latency_cache, constraints=constraints, progress=log)
    with RelativeMeasure(model, table, prune.latency_backend, batch=prune.latency_batch, threads=threads,
                         constraints=constraints) as measure:
        p, steps = plan_to_target(model, prune.target_latency_ms, table, constraints, prune.importance,
                                  measure=measure, steps=prune.latency_steps, progress=log)
    report = {**latency_report(p, table, p.thresholds.get("measured_ms")), "steps": steps, "table": source.as_dict()}
    if log:
        log(f"prune: latency-guided plan, target {prune.target_latency_ms} ms, report {report}")
    return p, report
