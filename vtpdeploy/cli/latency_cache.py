"""`vtpdeploy latency-cache list|clear`: the cached latency tables of latency-guided planning."""

from __future__ import annotations

import json
from pathlib import Path

import typer

DIR_HELP = "Cache dir (default: $VTPDEPLOY_LATENCY_CACHE, else ~/.cache/vtpdeploy/latency)."


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def list_cmd(
    cache_dir: Path = typer.Option(None, "--dir", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON list instead of the table."),
) -> None:
    """Cached tables: file (backend, batch, key digest), device, backend version, threads, profile, age, spread."""
    from rich.console import Console
    from rich.table import Table

    from ..latency import NOISY_SPREAD_PCT, default_cache_dir, list_tables

    root = cache_dir or default_cache_dir()
    rows = list_tables(root)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        typer.echo(f"no latency tables in {root}")
        return
    table = Table("file", "device", "backend", "threads", "profile", "age", "spread", "rounds", title=str(root))
    for r in rows:
        if not r["readable"]:
            table.add_row(r["file"], "not a latency table", "", "", "", "", "", "")
            continue
        spread = "-" if r["spread_pct"] is None else f"{r['spread_pct']:.1f} %"
        if r["spread_pct"] is not None and r["spread_pct"] > NOISY_SPREAD_PCT:
            spread += " (noisy)"
        table.add_row(r["file"], str(r["device"]), str(r["backend_version"]), str(r["threads"]), str(r["profile"]),
                      _age(r["age_s"]), spread, str(r["rounds"]))
    Console(width=200).print(table)


def clear_cmd(
    cache_dir: Path = typer.Option(None, "--dir", help=DIR_HELP),
    backend: str = typer.Option(None, "--backend", help="Only the tables of this backend (torch, ort, openvino)."),
) -> None:
    """Remove cached tables; the next latency-guided plan measures a fresh one."""
    from ..errors import VtpError
    from ..latency import clear_tables, default_cache_dir

    if backend not in (None, "torch", "ort", "openvino"):
        raise VtpError(f"--backend {backend!r}: choose torch, ort or openvino")
    root = cache_dir or default_cache_dir()
    removed = clear_tables(root, backend)
    typer.echo(f"removed {len(removed)} latency table(s) from {root}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="List or clear the cached latency tables of latency-guided planning.",
                        no_args_is_help=True)
    group.command("list")(list_cmd)
    group.command("clear")(clear_cmd)
    app.add_typer(group, name="latency-cache")
