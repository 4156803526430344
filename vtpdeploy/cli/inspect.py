"""`vtpdeploy inspect PATH`."""

from __future__ import annotations

from pathlib import Path

import typer


def inspect(path: Path = typer.Argument(..., help="Run dir or saved model (dir/model).")) -> None:
    """Per-block table of kept dims at each gate, params and MACs, and how blocks pick their kept inputs."""
    from rich.console import Console

    from ..deploy.sources import load_source
    from ..prune.inspection import block_table, input_selection, render_table

    source = load_source(path)
    rows, totals = block_table(source.model, source.input_size[1:])
    console = Console()
    if not console.is_terminal:  # files and pipes get the full table, unwrapped
        console = Console(width=200)
    console.print(render_table(rows, totals, title=source.label))
    console.print(input_selection(source.model))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
