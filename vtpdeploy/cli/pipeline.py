"""`vtpdeploy pipeline RECIPE`."""

from __future__ import annotations

from pathlib import Path

import typer


def pipeline(
    ctx: typer.Context,
    recipe: Path = typer.Argument(None, help="Recipe YAML (default: the embedded quickstart)."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: the recipe's output.dir)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key, e.g. --set prune.rate=0.2"),
    hardware: str = typer.Option(None, "--hardware", help="Width profile for the plan (prune.hardware): "
                                 "none, cpu, cpu-gather, cpu-nogather, gpu-fp16, gpu-int8, jetson-orin."),
    until: str = typer.Option(None, "--until", help="Stop after this stage (train, sparsify, prune, finetune, "
                              "compact, export), e.g. to train and cache a base model; a later run goes on."),
) -> None:
    """Train → sparsify → prune → finetune → compact, into a run directory (resumable)."""
    from rich.console import Console

    from ..train.events import EventLog
    from ..train.pipeline import run_pipeline
    from ..train.recipe import load_recipe

    console = Console(stderr=True)
    cfg = load_recipe(recipe, [*set_, *([f"prune.hardware={hardware}"] if hardware else [])])
    report = run_pipeline(cfg, out, console, EventLog.for_format((ctx.obj or {}).get("log_format", "rich")),
                          until=until)
    if not report:  # a non-zero torchrun rank: rank 0 reports
        return
    if "until" in report:
        acc = report["metrics"].get("accuracy")
        typer.echo(f"run dir: {out or cfg.output.dir}\nstopped after {report['until']}"
                   + (f" (val top-1 {acc:.2f} %)" if acc is not None else ""))
        return
    acc, params, macs = report["accuracy"], report["params"], report["macs"]
    typer.echo(
        f"run dir: {out or cfg.output.dir}\n"
        f"val top-1: unpruned {acc['unpruned']:.2f} %, pruned {acc['pruned']:.2f} %, finetuned {acc['finetuned']:.2f} %\n"
        f"params: {params['unpruned']:,} -> {params['compact']:,}; MACs: {macs['unpruned']:,} -> {macs['compact']:,}\n"
        f"realised rate {report['plan']['realised_rate']:.3f}; compact vs hard mask max |diff| "
        f"{report['compaction']['max_abs_diff']:.1e}"
    )


def register(app: typer.Typer) -> None:
    app.command("pipeline")(pipeline)
