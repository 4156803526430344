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
        from ..errors import VtpError

        try:
            data = load_report(report)
        except VtpError:
            if _is_bench_report(rules):
                raise VtpError(f"the arguments are swapped: {rules} is the bench report and {report} the rules; "
                               f"run `vtpdeploy gate {rules} {report}`") from None
            raise
        code = run_gate(data, rules, previous, junit)
        raise typer.Exit(code)


def _is_bench_report(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "results" in data
