"""Performance gates over a bench report.

A rule is `METRIC OP RHS` with OP in <=, <, >=, >, == and RHS a number, `previous`, or
`previous * K` / `previous + K` / `previous - K`. Parsed by a strict regex, never eval'd.

- result metrics (mean_ms, p50_ms, ..., throughput_ips, peak_mem_mb, file_mb, params, macs)
  apply to every candidate result (role != baseline) the rule selects;
- comparison metrics (speedup, efficiency, mac_ratio) apply to every comparison entry;
  speedup/efficiency use their 95% CI: a `>=`/`>` rule must hold for the LOWER bound,
  a `<=`/`<` rule for the UPPER bound;
- `previous` compares against the entry of the --previous report with the same
  model (or candidate)/backend/batch.
A rule may be a dict {rule: "...", backend: ort, batch: 1, model: NAME, precision: fp16} to select entries;
a selector may list several values (`precision: [fp32, fp16]`). `precision` is what ran: the TensorRT
engine's, torch's, else the ONNX file's (model.int8.onnx -> int8, model.fp16.onnx -> fp16, else fp32).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...console import one_line
from ...errors import VtpError


class GateError(VtpError):
    """Bad rules, report or previous report (exit 2)."""


RESULT_METRICS = {
    "mean_ms": ("latency_ms", "mean"), "p50_ms": ("latency_ms", "p50"), "p90_ms": ("latency_ms", "p90"),
    "p95_ms": ("latency_ms", "p95"), "p99_ms": ("latency_ms", "p99"), "min_ms": ("latency_ms", "min"),
    "max_ms": ("latency_ms", "max"), "throughput_ips": ("throughput_ips",), "peak_mem_mb": ("peak_mem_mb",),
    "file_mb": ("file_mb",), "params": ("params",), "macs": ("macs",),
}
COMPARISON_METRICS = {"speedup": "speedup_ci", "efficiency": "efficiency_ci", "mac_ratio": None}
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
SELECTORS = ("backend", "batch", "model", "precision")

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RULE = re.compile(
    rf"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|==|<|>)\s*"
    rf"(?:(?P<num>{_NUM})|(?P<prev>previous)(?:\s*(?P<pop>[*+-])\s*(?P<k>{_NUM}))?)\s*$"
)


@dataclass
class Rule:
    text: str
    metric: str
    op: str
    value: float | None = None  # absolute bound
    previous: bool = False
    prev_op: str | None = None
    prev_k: float | None = None
    select: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        sel = ", ".join(f"{k}={v}" for k, v in self.select.items())
        return f"{self.text} [{sel}]" if sel else self.text

    def bound(self, prev: float) -> float:
        if self.prev_op == "*":
            return prev * self.prev_k
        if self.prev_op == "+":
            return prev + self.prev_k
        if self.prev_op == "-":
            return prev - self.prev_k
        return prev


@dataclass
class GateResult:
    rule: str
    passed: bool
    checks: list[dict] = field(default_factory=list)  # one per selected entry: {entry, observed, bound, passed}
    message: str = ""


def parse_rule(item) -> Rule:
    select = {}
    if isinstance(item, dict):
        unknown = set(item) - {"rule", *SELECTORS}
        if "rule" not in item or unknown:
            raise GateError(f"gate {item!r}: a dict rule needs 'rule' and only {', '.join(SELECTORS)} as selectors")
        select = {k: item[k] for k in SELECTORS if k in item}
        item = item["rule"]
    if not isinstance(item, str):
        raise GateError(f"gate {item!r}: must be a string like 'p90_ms <= 20'")
    m = _RULE.match(item)
    if not m:
        raise GateError(f"malformed gate {item!r}; expected METRIC OP NUMBER or METRIC OP previous [* K]")
    metric = m.group("metric")
    if metric not in RESULT_METRICS and metric not in COMPARISON_METRICS:
        known = ", ".join([*RESULT_METRICS, *COMPARISON_METRICS])
        raise GateError(f"unknown metric {metric!r} in gate {item!r}; known: {known}")
    return Rule(text=item.strip(), metric=metric, op=m.group("op"),
                value=float(m.group("num")) if m.group("num") is not None else None,
                previous=m.group("prev") is not None, prev_op=m.group("pop"),
                prev_k=float(m.group("k")) if m.group("k") is not None else None, select=select)


def load_rules(path: str | Path) -> list[Rule]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise GateError(f"{path}: rules file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GateError(f"{path}: not valid YAML ({one_line(exc, 120)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("gates"), list) or not data["gates"]:
        raise GateError(f"{path}: needs a non-empty 'gates:' list")
    return [parse_rule(g) for g in data["gates"]]


def result_precision(row: dict) -> str:
    """What precision a result row ran at: the engine's, torch's, else the ONNX file name's."""
    trt = row.get("tensorrt")
    if isinstance(trt, dict) and trt.get("precision"):
        return str(trt["precision"])
    if row.get("precision") in ("fp32", "fp16", "int8"):
        return str(row["precision"])
    name = Path(str(row.get("artifact", ""))).name
    return "int8" if ".int8." in name else "fp16" if ".fp16." in name else "fp32"


def _entry_value(entry: dict, key: str, name_key: str, results: list[dict]):
    if key == "model":
        return entry.get(name_key)
    if key != "precision":
        return entry.get(key)
    row = entry if name_key == "model" else next(
        (r for r in results if r.get("model") == entry.get("candidate") and r.get("backend") == entry.get("backend")
         and r.get("batch") == entry.get("batch")), {})
    return result_precision(row)


def _selected(entry: dict, rule: Rule, name_key: str, results: list[dict]) -> bool:
    for k, v in rule.select.items():
        wanted = {str(x) for x in v} if isinstance(v, list) else {str(v)}
        if str(_entry_value(entry, k, name_key, results)) not in wanted:
            return False
    return True


def _result_value(entry: dict, metric: str):
    v = entry
    for k in RESULT_METRICS[metric]:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def evaluate(report: dict, rules, previous: dict | None = None) -> list[GateResult]:
    """One GateResult per rule; raises GateError for anything that cannot be evaluated."""
    from .report import check_report

    try:
        check_report(report, "report")
        if previous is not None:
            check_report(previous, "previous report")
    except GateError:
        raise
    except VtpError as exc:
        raise GateError(str(exc)) from None
    parsed = [r if isinstance(r, Rule) else parse_rule(r) for r in rules]
    return [_evaluate_one(report, rule, previous) for rule in parsed]


def _evaluate_one(report: dict, rule: Rule, previous: dict | None) -> GateResult:
    if rule.previous and previous is None:
        raise GateError(f"gate {rule.text!r} compares with 'previous' but no --previous report was given")
    is_cmp = rule.metric in COMPARISON_METRICS
    name_key = "candidate" if is_cmp else "model"
    pool = report.get("comparison", []) if is_cmp else [r for r in report["results"] if r.get("role", "candidate") != "baseline"]
    entries = [e for e in pool if _selected(e, rule, name_key, report["results"])]
    if not entries:
        raise GateError(_selects_nothing(rule, pool, is_cmp, name_key, report["results"]))
    fn = OPS[rule.op]
    checks = []
    for e in entries:
        ident = f"{e.get(name_key)} {e.get('backend')} b{e.get('batch')}"
        if is_cmp:
            observed = e.get(rule.metric)
            ci_key = COMPARISON_METRICS[rule.metric]
            ci = e.get(ci_key) if ci_key else None
            tested = observed
            if ci and rule.op in (">=", ">"):
                tested = ci[0]
            elif ci and rule.op in ("<=", "<"):
                tested = ci[1]
        else:
            observed = tested = _result_value(e, rule.metric)
        if rule.previous:
            pool_prev = previous.get("comparison", []) if is_cmp else previous["results"]
            match = [p for p in pool_prev if p.get(name_key) == e.get(name_key) and p.get("backend") == e.get("backend")
                     and p.get("batch") == e.get("batch")]
            if not match:
                raise GateError(f"gate {rule.text!r}: previous report has no entry for {ident}")
            pv = match[0].get(rule.metric) if is_cmp else _result_value(match[0], rule.metric)
            if pv is None:
                raise GateError(f"gate {rule.text!r}: previous report has no {rule.metric} for {ident}")
            bound = rule.bound(float(pv))
        else:
            bound = rule.value
        if tested is None:
            checks.append({"entry": ident, "observed": None, "tested": None, "bound": bound, "passed": False,
                           "note": f"{rule.metric} not available"})
            continue
        ok = bool(fn(float(tested), float(bound)))
        checks.append({"entry": ident, "observed": observed, "tested": tested, "bound": round(bound, 6), "passed": ok})
    passed = all(c["passed"] for c in checks)
    bad = [c for c in checks if not c["passed"]]
    msg = "; ".join(
        f"{c['entry']}: {rule.metric} {_fmt(c['tested'])}{' (CI bound)' if c['tested'] != c['observed'] else ''} "
        f"not {rule.op} {_fmt(c['bound'])}" + (f" ({c['note']})" if c.get("note") else "")
        for c in bad)
    return GateResult(rule=rule.name, passed=passed, checks=checks, message=msg)


def _selects_nothing(rule: Rule, pool: list[dict], is_cmp: bool, name_key: str, results: list[dict]) -> str:
    """Why a rule matched nothing, and what the report holds instead."""
    if is_cmp and not pool:
        return (f"gate {rule.name!r}: the report has no comparison entries (it was benched with --baseline none); "
                "bench with a baseline, or gate on result metrics")
    what = "comparison entries" if is_cmp else "candidate results"
    have = sorted({" ".join(f"{k}={_entry_value(e, k, name_key, results)}" for k in rule.select) for e in pool})
    return f"gate {rule.name!r} selects none of the report's {len(pool)} {what}; they have {'; '.join(have)}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def junit_xml(results: list[GateResult], suite: str = "vtpdeploy.gate") -> str:
    import xml.etree.ElementTree as ET

    ts = ET.Element("testsuite", name=suite, tests=str(len(results)),
                    failures=str(sum(not r.passed for r in results)), errors="0")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=r.rule)
        detail = "\n".join(f"{c['entry']}: tested={c['tested']} bound={c['bound']} {'pass' if c['passed'] else 'FAIL'}"
                           for c in r.checks)
        if not r.passed:
            f = ET.SubElement(tc, "failure", message=r.message or "gate failed", type="GateFailure")
            f.text = detail
        else:
            ET.SubElement(tc, "system-out").text = detail
    ET.indent(ts)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n"


def write_junit(results: list[GateResult], path: str | Path) -> Path:
    from ...fileio import atomic_write_text

    return atomic_write_text(path, junit_xml(results))


def print_table(results: list[GateResult], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="vtpdeploy gate", title_justify="left")
    for h in ("rule", "result", "entries", "detail"):
        t.add_column(h)
    for r in results:
        detail = r.message if not r.passed else "; ".join(
            f"{c['entry']}: {_fmt(c['tested'])} {r.rule.split()[1] if len(r.rule.split()) > 1 else ''} {_fmt(c['bound'])}"
            for c in r.checks)
        t.add_row(r.rule, "[green]PASS[/]" if r.passed else "[red]FAIL[/]", str(len(r.checks)), detail)
    console.print(t)


def run_gate(report: dict, rules_path: str | Path, previous_path: str | Path | None = None,
             junit: str | Path | None = None, console=None) -> int:
    """Evaluate, print, write JUnit; returns the exit code (0 pass, 1 violated). Bad input raises."""
    from .report import load_report

    rules = load_rules(rules_path)
    previous = load_report(previous_path, "previous report") if previous_path else None
    results = evaluate(report, rules, previous)
    print_table(results, console)
    if junit:
        write_junit(results, junit)
    return 0 if all(r.passed for r in results) else 1
