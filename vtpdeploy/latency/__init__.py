"""Latency-guided planning: measured per-part latency tables and a planner that meets a budget.

    from vtpdeploy.latency import measure_table, plan_for_latency
    table = measure_table(gated_model, backend="ort", batch=1)          # cached per device/backend
    p = plan_for_latency(gated_model, target_ms=40.0, table=table, constraints=constraints_for("cpu"))
"""

from .planner import kept_importance, latency_report, plan_for_latency, predicted_ms
from .table import LatencyTable, cache_path, default_cache_dir, measure_model_ms, measure_table, table_key

__all__ = [
    "LatencyTable",
    "cache_path",
    "default_cache_dir",
    "kept_importance",
    "latency_report",
    "measure_model_ms",
    "measure_table",
    "plan_for_latency",
    "predicted_ms",
    "table_key",
]
