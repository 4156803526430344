"""`vtpdeploy report RUN`."""

from __future__ import annotations

from pathlib import Path

import typer


def report(run: Path = typer.Argument(..., help="Finished run dir (holds report.json).")) -> None:
    """(Re)write RUN/report.md and its figures (RUN/figures/*.png) from what the run dir holds."""
    from ..train.report import FIGURES_DIR, write_run_report

    path = write_run_report(run)
    figs = sorted(p.name for p in (run / FIGURES_DIR).glob("*.png"))
    typer.echo(f"wrote {path} ({len(figs)} figures in {run / FIGURES_DIR}: {', '.join(figs)})")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
