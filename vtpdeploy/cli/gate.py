"""`vtpdeploy gate`: check a bench report against performance rules (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate(
        report: Path = typer.Argument(..., help="JSON report from `vtpdeploy bench --json`."),
        rules: Path = typer.Argument(..., help="RULES.yaml with a `gates:` list."),
        junit: Path = typer.Option(None, "--junit", help="Write JUnit XML (one testcase per rule) here."),
        previous: Path = typer.Option(None, "--previous", help="An older report for `previous` rules."),
    ) -> None:
        """Exit 0 when every rule passes, 1 when one is violated, 2 on bad input."""
        from ..deploy.bench.report import load_report
        from ..deploy.bench.rules import run_gate

        code = run_gate(load_report(report), rules, previous, junit)
        raise typer.Exit(code)
