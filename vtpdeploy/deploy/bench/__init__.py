"""`vtpdeploy bench`: interleaved latency/throughput/memory benchmarks with bootstrap speedups.

    from vtpdeploy.deploy.bench import BenchOptions, run_bench
    report = run_bench(["runs/x"], BenchOptions(backend="ort", batches=[1, 8], baseline="unpruned"))
    from vtpdeploy.deploy.bench.rules import evaluate
    results = evaluate(report, ["p90_ms <= 20", "speedup >= 1.6"])

Report schema: docs/bench.md (rows and comparisons typed in `schema`).
"""

from __future__ import annotations

from .remote import run_remote
from .run import SCHEMA_VERSION, run_bench
from .schema import Comparison, Row
from .settings import BenchOptions

__all__ = ["SCHEMA_VERSION", "BenchOptions", "Comparison", "Row", "run_bench", "run_remote"]
