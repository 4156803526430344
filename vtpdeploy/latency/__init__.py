"""Latency-guided planning, in one place: the table (`table`), what it times (`parts`, `measure`), its cache
and the checks before reuse (`cache`), the greedy planner (`planner`), the measure-and-correct loop
(`closed_loop`) and the prune stage's entry point (`prune_plan.make_plan`).

    from vtpdeploy.latency import make_plan, obtain_table, plan_to_target, RelativeMeasure

Sits between deploy/ (it times with deploy's runners and exporter) and train/ (the pipeline calls `make_plan`).
"""

from .cache import (
    NOISY_SPREAD_PCT,
    TableSource,
    clear_tables,
    default_cache_dir,
    list_tables,
    measure_table,
    obtain_table,
)
from .closed_loop import RelativeMeasure, plan_to_target
from .measure import runner_measure
from .parts import model_dims
from .planner import (
    kept_importance,
    ladder_plan,
    latency_plan_summary,
    latency_report,
    plan_for_latency,
    predicted_ms,
)
from .prune_plan import make_plan
from .table import Calibration, Grid, LatencyTable

__all__ = [
    "NOISY_SPREAD_PCT",
    "Calibration",
    "Grid",
    "LatencyTable",
    "RelativeMeasure",
    "TableSource",
    "clear_tables",
    "default_cache_dir",
    "kept_importance",
    "ladder_plan",
    "latency_plan_summary",
    "latency_report",
    "list_tables",
    "make_plan",
    "measure_table",
    "model_dims",
    "obtain_table",
    "plan_for_latency",
    "plan_to_target",
    "predicted_ms",
    "runner_measure",
]
