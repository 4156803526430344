"""Report outputs: JSON file, Markdown table, rich terminal table."""

from __future__ import annotations

from pathlib import Path

from ...console import one_line
from ...errors import VtpError
from ...fileio import atomic_write_json, atomic_write_text

REQUIRED_RESULT_KEYS = ("model", "backend", "batch", "latency_ms", "throughput_ips", "peak_mem_mb", "macs", "params", "file_mb")
LATENCY_KEYS = ("mean", "p50", "p90", "p95", "p99", "min", "max")


def write_json(report: dict, path: str | Path) -> Path:
    return atomic_write_json(path, report)


def load_report(path: str | Path, what: str = "report") -> dict:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VtpError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VtpError(f"{path}: {what} is not valid JSON ({one_line(exc, 120)})") from None
    check_report(data, f"{path}")
    return data


def check_report(data, where: str = "report") -> None:
    """Raise VtpError unless `data` has the bench report shape (schema_version, results, comparison)."""
    if not isinstance(data, dict) or "schema_version" not in data or not isinstance(data.get("results"), list):
        raise VtpError(f"{where}: not a vtpdeploy bench report (needs schema_version and results)")
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or any(k not in r for k in REQUIRED_RESULT_KEYS) or not isinstance(r["latency_ms"], dict):
            raise VtpError(f"{where}: results[{i}] is malformed (needs {', '.join(REQUIRED_RESULT_KEYS)})")
    if not isinstance(data.get("comparison", []), list):
        raise VtpError(f"{where}: comparison must be a list")


def _f(v, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _human(n) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _rows(report: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    head = ["model", "role", "backend", "batch", "mean ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak MB", "MACs", "params", "file MB"]
    rows = []
    for r in report["results"]:
        lat = r["latency_ms"]
        rows.append([r["model"], r.get("role", ""), r["backend"], str(r["batch"]), _f(lat["mean"]), _f(lat["p50"]),
                     _f(lat["p90"]), _f(lat["p99"]), _f(r["throughput_ips"], 1), _f(r["peak_mem_mb"], 1),
                     _human(r["macs"]), _human(r["params"]), _f(r["file_mb"], 2)])
    chead = ["candidate", "baseline", "backend", "batch", "speedup", "95% CI", "MAC ratio", "efficiency"]
    crows = []
    for c in report.get("comparison", []):
        lo, hi = c["speedup_ci"]
        crows.append([c["candidate"], c["baseline"], c["backend"], str(c["batch"]), f"{c['speedup']:.3f}x",
                      f"[{lo:.3f}, {hi:.3f}]", _f(c["mac_ratio"], 3), _f(c["efficiency"], 3)])
    return head, rows, chead, crows


def markdown(report: dict) -> str:
    head, rows, chead, crows = _rows(report)

    def table(h, rs):
        out = ["| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rs]
        return "\n".join(out)

    env = report.get("environment", {})
    s = report.get("settings", {})
    lines = ["# vtpdeploy bench", "",
             f"- device: {s.get('device')}, threads: {s.get('threads')}, warm-up {s.get('warmup_s')} s, "
             f"{'%s s per model' % s.get('duration_s') if s.get('iters') is None else '%s iterations' % s.get('iters')}, "
             f"blocks of {', '.join(sorted({str(x.get('block_iters')) for x in report.get('schedules', [])})) or '-'} iterations, interleaved",
             f"- CPU: {env.get('cpu_model')} ({env.get('cpu_cores')} cores); GPU: {(env.get('gpu') or {}).get('name', '-')}; "
             f"Jetson: {(env.get('jetson') or {}).get('model', '-')}", "", "## Results", "", table(head, rows), ""]
    if crows:
        lines += ["## Speedup vs baseline", "", table(chead, crows), "",
                  "speedup = baseline mean latency / candidate mean latency; MAC ratio = baseline MACs / candidate MACs; "
                  "efficiency = speedup / MAC ratio.", ""]
    return "\n".join(lines)


def write_markdown(report: dict, path: str | Path) -> Path:
    return atomic_write_text(path, markdown(report))


def print_tables(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    def table(title: str, head: list[str], rows: list) -> Table:
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i < 3 else "right")
        for r in rows:
            t.add_row(*r)
        return t

    console = console or Console()
    head, rows, chead, crows = _rows(report)
    console.print(table("vtpdeploy bench", head, rows))
    if crows:
        console.print(table("speedup vs baseline (paired bootstrap 95% CI)", chead, crows))
