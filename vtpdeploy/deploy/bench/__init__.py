"""`vtpdeploy bench`: interleaved latency/throughput/memory benchmarks with bootstrap speedups.

    from vtpdeploy.deploy.bench import run_bench
    report = run_bench(["runs/x"], backend="ort", batches=[1, 8], baseline="unpruned")
    from vtpdeploy.deploy.bench.rules import evaluate
    results = evaluate(report, ["p90_ms <= 20", "speedup >= 1.6"])

Report schema: docs/bench.md.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "run_bench", "run_remote"]


def __getattr__(name):
    if name in ("run_bench", "SCHEMA_VERSION"):
        from . import run

        return getattr(run, name)
    if name == "run_remote":
        from .remote import run_remote

        return run_remote
    raise AttributeError(name)
