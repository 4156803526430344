"""The finished run's report.json (from the manifest's stage metrics) and report.md."""

from __future__ import annotations

from ..console import one_line
from ..data import preprocessing
from ..fileio import atomic_write_json
from ..prune.plan import PrunePlan
from .context import Context
from .report import environment, write_run_report
from .stages import STAGES


def write_report(ctx: Context, wall_s: float) -> dict:
    stages = ctx.run.manifest["stages"]
    m = {name: stages.get(name, {}).get("metrics", {}) for name in STAGES}
    p = PrunePlan.load(ctx.path / "plan.json")
    counts = m["compact"]["counts"]
    report = {
        "format": "vtpdeploy-report",
        "version": 1,
        "model": ctx.recipe.model.name,
        "data": ctx.recipe.data.kind,
        "preprocessing": preprocessing(ctx.data_config),
        "params": {k: v["params"] for k, v in counts.items()},
        "macs": {k: v["macs"] for k, v in counts.items()},
        "reduction": {
            "params": round(1 - counts["compact"]["params"] / counts["unpruned"]["params"], 4),
            "macs": round(1 - counts["compact"]["macs"] / counts["unpruned"]["macs"], 4),
        },
        "accuracy": {
            "unpruned": m["train"]["accuracy"],
            "sparsified": m["sparsify"]["accuracy"],
            "pruned": m["prune"]["accuracy"],
            "finetuned": m["compact"]["accuracy"],
        },
        "compaction": {"max_abs_diff": m["compact"]["max_abs_diff"], "atol": m["compact"]["atol"]},
        "plan": p.summary(),
        "curves": {"train": m["train"].get("curve"), "sparsify": m["sparsify"].get("curve"),
                   "finetune": m["finetune"].get("curve")},
        "latency_plan": m["prune"].get("latency"),
        "stage_seconds": {n: stages[n].get("duration_s") for n in STAGES if n in stages},
        "wall_seconds": round(wall_s, 2),
        "environment": environment(ctx.run.manifest.get("packages")),
    }
    if ctx.recipe.export.enabled and m["export"]:
        report["export"] = m["export"].get("export")
    atomic_write_json(ctx.path / "report.json", report)
    return report


def write_report_md(ctx: Context) -> None:
    """report.md + figures; a failure here never fails the finished run (`vtpdeploy report RUN` retries)."""
    try:
        path = write_run_report(ctx.path)
    except Exception as exc:  # noqa: BLE001 - every result is already on disk
        ctx.log(f"report: report.md not written ({type(exc).__name__}: {one_line(exc, 160)}); "
                f"retry with `vtpdeploy report {ctx.path}`")
    else:
        ctx.log(f"report: wrote {path}")
