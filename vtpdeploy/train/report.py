"""`report.md` of a run dir, with its figures in `figures/`: what the pipeline decided, as pictures.

Reads only what the run dir holds (report.json, manifest.json, plan.json, gate_scores.json,
logs/<stage>/summary.csv, recipe.yaml, bench.json / bench/*.json), so `vtpdeploy report RUN` can
regenerate it at any time. Writes are atomic; figures of sections that no longer apply are removed.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from torch import nn

from ..console import one_line
from ..deploy.bench.environment import cpu_model
from ..errors import VtpError
from ..fileio import atomic_write_json, atomic_write_text, sha256_text
from ..latency import latency_plan_summary
from ..prune.gates import GATE_KINDS, iter_gates
from ..prune.plan import PrunePlan, importance_scores
from . import figures
from .epoch_log import read_summary, summary_path

FIGURES_DIR = "figures"
TRAINING_STAGES = ("train", "sparsify", "finetune")
ACCURACY_LABELS = {"unpruned": "unpruned", "sparsified": "sparsified", "pruned": "pruned (hard mask)",
                   "finetuned": "fine-tuned (compact)"}
SCORE_LABELS = {"gate": "|â| (gate score, dimensionless)",
                "weight_l1": "weight-L1 importance (x |â|, normalised per gate)"}


class RunReportError(VtpError):
    """The path is not a finished run dir, or its report.json is unreadable."""


# -- report.json extras -----------------------------------------------------------------------------
def environment(packages: dict | None = None) -> dict:
    """What a rerun must match to repeat the numbers: package versions, threads, machine type."""
    return {"packages": packages or {}, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu_model": cpu_model(), "os": platform.platform(), "python": platform.python_version()}


# -- gate scores ------------------------------------------------------------------------------------
def _plan_digest(plan: PrunePlan) -> str:
    return sha256_text(json.dumps(plan.model_dump(mode="json"), sort_keys=True))[:16]


def _rounded(t: torch.Tensor) -> list[float]:
    return [float(f"{v:.6g}") for v in t.tolist()]


def gate_score_record(model: nn.Module, plan: PrunePlan) -> dict:
    """Per gate: |â| and (when the plan ranked something else) the importance score τ was applied to."""
    scores = importance_scores(model, plan.importance)
    gates = {(r.block, r.kind): r.module.gate.detach().abs().float().cpu() for r in iter_gates(model)}
    rows = []
    for g in plan.gates:
        row = {"block": g.block, "kind": g.kind}
        if (g.block, g.kind) in gates:
            row["gate_abs"] = _rounded(gates[(g.block, g.kind)])
        if plan.importance != "gate":
            row["score"] = _rounded(scores[(g.block, g.kind)])
        rows.append(row)
    return {"format": "vtpdeploy-gate-scores", "version": 1, "plan": _plan_digest(plan),
            "importance": plan.importance, "scope": plan.scope, "thresholds": plan.thresholds, "gates": rows}


def save_gate_scores(model: nn.Module, plan: PrunePlan, path: Path) -> Path:
    """Written by the prune stage, from the sparse model before masking."""
    return atomic_write_json(path, gate_score_record(model, plan))


def load_gate_scores(run_dir: Path, plan: PrunePlan) -> dict | None:
    """gate_scores.json when it belongs to this plan, else recomputed from stages/sparse, else None."""
    path = run_dir / "gate_scores.json"
    try:
        data = json.loads(path.read_text())
        if data.get("plan") == _plan_digest(plan):
            return data
    except (OSError, ValueError):
        pass
    sparse = run_dir / "stages" / "sparse"
    if not sparse.with_suffix(".safetensors").is_file():
        return None
    from ..prune.saving import load

    return gate_score_record(load(sparse, "cpu"), plan)


def _histogram_data(scores: dict, plan: PrunePlan) -> tuple[dict[str, dict], str]:
    key = "score" if scores["importance"] != "gate" else "gate_abs"
    per_kind: dict[str, dict] = {}
    for row in scores["gates"]:
        values = row.get(key)
        if values is None:
            continue
        kept = set(plan.gate(row["block"], row["kind"]).kept)
        d = per_kind.setdefault(row["kind"], {"kept": [], "pruned": [], "taus": []})
        for i, v in enumerate(values):
            d["kept" if i in kept else "pruned"].append(v)
        thresholds = scores.get("thresholds") or {}
        tau = thresholds.get("global", thresholds.get(row["kind"], thresholds.get(f"blocks.{row['block']}.{row['kind']}")))
        if tau is not None:
            d["taus"].append(tau)
    order = [k for k in GATE_KINDS if k in per_kind]
    return {k: per_kind[k] for k in order}, SCORE_LABELS.get(scores["importance"], scores["importance"])


# -- constraints ------------------------------------------------------------------------------------
def _constraint_notes(plan: PrunePlan) -> dict[str, str]:
    c = plan.constraints
    notes = {}
    for kind in GATE_KINDS:
        parts = []
        if c.round_to.get(kind, 1) > 1:
            parts.append(f"multiple of {c.round_to[kind]}")
        if c.min_width.get(kind, 1) > 1:
            parts.append(f"min {c.min_width[kind]}")
        notes[kind] = f"profile {c.profile}: " + (", ".join(parts) if parts else "no rounding")
    return notes


def _v_note(plan: PrunePlan) -> str:
    c = plan.constraints
    parts = [f"profile {c.profile}"]
    parts.append("head-aligned V dims" if c.head_aligned_v else "per-head V dims free")
    if c.v_head_dims:
        parts.append(f"allowed {c.v_head_dims}")
    return ", ".join(parts)


# -- markdown ---------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> str:
    def cells(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [cells(header), "|" + "|".join("---" for _ in header) + "|"] + [cells(row) for row in rows]
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f} %"


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunReportError(f"{path.parent}: no {path.name}; {what}") from None
    except (OSError, ValueError) as exc:
        raise RunReportError(f"{path}: unreadable ({one_line(exc, 120)})") from None


def _bench_reports(run_dir: Path) -> list[tuple[Path, dict | None]]:
    """bench.json and bench/*.json of the run dir; (path, None) for a file that is not a bench report."""
    from ..deploy.bench.report import check_report

    found = []
    for path in [run_dir / "bench.json", *sorted((run_dir / "bench").glob("*.json"))]:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            check_report(data, str(path))
        except (OSError, ValueError, VtpError):
            data = None
        found.append((path, data))
    return found


class _Doc:
    """The report being written: Markdown lines and the figures it references."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.fig_dir = run_dir, run_dir / FIGURES_DIR
        self.md: list[str] = []
        self.written: list[Path] = []

    def add(self, text: str) -> None:
        self.md.append(text)

    def figure(self, path: Path, alt: str) -> None:
        self.written.append(path)
        self.md.append(f"![{alt}]({path.relative_to(self.run_dir).as_posix()})\n")


def write_run_report(run_dir: str | Path) -> Path:
    """Write `report.md` and `figures/*.png` for a finished run dir; returns the report.md path."""
    run_dir = Path(run_dir)
    report = _finished_report(run_dir)
    doc = _Doc(run_dir)
    doc.add(f"# Run report: {report.get('model')} on {report.get('data')}\n")
    doc.add(f"Regenerate with `vtpdeploy report {run_dir}`. Numbers from `report.json`; per-epoch logs in "
            "`logs/<stage>/summary.csv`.\n")
    _accuracy_section(doc, report)
    plan = PrunePlan.load(run_dir / "plan.json")
    _gate_score_section(doc, plan)
    _width_section(doc, plan)
    _curve_section(doc, report)
    if report.get("latency_plan"):  # where its table came from (cache or fresh), how old and how noisy
        doc.add(latency_plan_summary(report["latency_plan"]) + "\n")
    _latency_section(doc)
    _recipe_section(doc, report)
    _remove_stale_figures(doc.fig_dir, doc.written)
    return atomic_write_text(run_dir / "report.md", "\n".join(doc.md))


def _finished_report(run_dir: Path) -> dict:
    if not (run_dir / "manifest.json").is_file():
        raise RunReportError(f"{run_dir}: not a vtpdeploy run dir (no manifest.json)")
    report = _read_json(run_dir / "report.json", "the pipeline has not finished (run `vtpdeploy pipeline`)")
    if report.get("format") != "vtpdeploy-report":
        raise RunReportError(f"{run_dir / 'report.json'}: not a vtpdeploy pipeline report")
    return report


def _accuracy_section(doc: _Doc, report: dict) -> None:
    acc, params, macs = report["accuracy"], report["params"], report["macs"]
    doc.add("## Accuracy, parameters and MACs\n")
    doc.add(_table(["stage", "val top-1"], [[ACCURACY_LABELS.get(k, k), _pct(v)] for k, v in acc.items()]) + "\n")
    red = report.get("reduction", {})
    doc.add(_table(["", "unpruned", "compact", "reduction"], [
        ["params", f"{params['unpruned']:,}", f"{params['compact']:,}", f"{100 * red.get('params', 0):.1f} %"],
        ["MACs per image", f"{macs['unpruned']:,}", f"{macs['compact']:,}", f"{100 * red.get('macs', 0):.1f} %"],
    ]) + "\n")
    comp = report.get("compaction") or {}
    if comp:
        doc.add(f"Compact model vs hard-mask model: max |Δlogit| {comp['max_abs_diff']:.2e} "
                f"(tolerance {comp['atol']:.0e}).\n")
    doc.figure(figures.accuracy_and_size({ACCURACY_LABELS.get(k, k).split(" (")[0]: v for k, v in acc.items()},
                                         params, macs, doc.fig_dir / "accuracy.png"),
               "accuracy per stage, params and MACs")


def _gate_score_section(doc: _Doc, plan: PrunePlan) -> None:
    summary = plan.summary()
    doc.add("## Gate scores and threshold τ\n")
    th = plan.thresholds
    taus = (", ".join(f"{k}: {v:.4g}" for k, v in th.items()) if len(th) <= 8 else
            f"{len(th)} per-layer thresholds from {min(th.values()):.4g} to {max(th.values()):.4g}")
    taus = taus or "none (latency-guided plan)"
    doc.add(f"Importance `{plan.importance}`, scope `{plan.scope}`, requested rate {plan.rate}, realised rate "
            f"{summary['realised_rate']:.4f} ({summary['kept_dims']:,} of {summary['total_dims']:,} gated dims "
            f"kept). τ: {taus}. Dims the plan pruned are red; width rounding can move a few across τ.\n")
    scores = load_gate_scores(doc.run_dir, plan)
    if scores is None:
        doc.add("_No gate scores in this run dir (gate_scores.json and stages/sparse are missing)._\n")
        return
    per_kind, xlabel = _histogram_data(scores, plan)
    if per_kind:
        doc.figure(figures.gate_histograms(per_kind, xlabel, doc.fig_dir / "gate_scores.png"),
                   "gate score histogram per gate kind with tau")


def _width_section(doc: _Doc, plan: PrunePlan) -> None:
    doc.add("## Kept width per block\n")
    c = plan.constraints
    doc.add(_table(["constraint", "value"], [
        ["profile", c.profile],
        ["round kept count to", ", ".join(f"{k}: {v}" for k, v in c.round_to.items()) or "-"],
        ["minimum width", ", ".join(f"{k}: {v}" for k, v in c.min_width.items()) or "-"],
        ["head-aligned V", "yes" if c.head_aligned_v else "no"],
        ["allowed V dims per head", ", ".join(map(str, c.v_head_dims)) if c.v_head_dims else "any"],
    ]) + "\n")
    blocks = plan.summary()["blocks"]
    doc.add(_table(["block", *GATE_KINDS, "V dims per head"],
                   [[b["block"], *[f"{b[k]} / {b[f'{k}_size']}" for k in GATE_KINDS],
                     " ".join(map(str, b["v_dims_per_head"]))] for b in blocks]) + "\n")
    doc.figure(figures.kept_widths(blocks, list(GATE_KINDS), _constraint_notes(plan), doc.fig_dir / "widths.png"),
               "kept width per block and gate kind")
    doc.figure(figures.v_dims_per_head([b["v_dims_per_head"] for b in blocks], plan.head_dim, _v_note(plan),
                                       doc.fig_dir / "v_dims.png"), "V dims kept per head")


def _curve_section(doc: _Doc, report: dict) -> None:
    doc.add("## Training curves\n")
    curves = _stage_curves(doc.run_dir, report)
    if not curves:
        doc.add("_No stage trained in this run (checkpoint or pretrained weights, no sparse training)._\n")
        return
    rows = []
    for stage, pts in curves.items():
        last = pts[-1]
        rows.append([stage, len(pts), _num(last.get("train_loss")), _pct(last.get("eval_top1")),
                     _num(last.get("gate_abs_mean")), _num(sum(p.get("epoch_time_s") or 0 for p in pts))])
    doc.add(_table(["stage", "epochs", "last train loss", "last val top-1", "last mean |â|", "train time (s)"],
                   rows) + "\n")
    doc.figure(figures.training_curves(curves, doc.fig_dir / "curves.png"), "loss and accuracy curves per stage")


def _latency_section(doc: _Doc) -> None:
    benches = _bench_reports(doc.run_dir)
    if not benches:
        return
    from ..deploy.bench.plot import write_plot
    from ..deploy.bench.report import markdown as bench_markdown

    doc.add("## Latency\n")
    for path, data in benches:
        rel = path.relative_to(doc.run_dir).as_posix()
        if data is None:
            doc.add(f"_`{rel}` is not a readable `vtpdeploy bench --json` report; skipped._\n")
            continue
        doc.add(f"From `{rel}`:\n")
        body = bench_markdown(data).strip().splitlines()[1:]  # its own title line is this section's
        doc.add("\n".join("##" + ln if ln.startswith("#") else ln for ln in body).strip() + "\n")
        stem = "latency" if path.name == "bench.json" else f"latency_{path.stem}"
        doc.figure(write_plot(data, doc.fig_dir / f"{stem}.png"), f"latency from {rel}")


def _recipe_section(doc: _Doc, report: dict) -> None:
    recipe = doc.run_dir / "recipe.yaml"
    if recipe.is_file():
        doc.add("## Recipe\n")
        doc.add("```yaml\n" + recipe.read_text().rstrip() + "\n```\n")
    env = report.get("environment") or {}
    if env:
        doc.add("## Environment\n")
        pk = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
        doc.add(f"{pk}; {env.get('threads')} torch threads; {env.get('machine')} {env.get('cpu_model') or ''}"
                f" ({env.get('os')}).\n")


def _stage_curves(run_dir: Path, report: dict) -> dict[str, list[dict]]:
    """Per trained stage: summary.csv rows, or (runs without CSV logs) rows built from report.json's curves."""
    out = {}
    for stage in TRAINING_STAGES:
        curve = (report.get("curves") or {}).get(stage)
        if not curve or not curve.get("loss"):
            continue  # the stage did not train in this run; an old summary.csv would be stale
        rows = read_summary(summary_path(run_dir, stage))
        if len(rows) != len(curve["loss"]):
            rows = [{"epoch": i, "train_loss": loss, "train_l1": l1, "epoch_time_s": t}
                    for i, (loss, l1, t) in enumerate(zip(curve["loss"], curve["l1"], curve["epoch_seconds"]))]
        out[stage] = rows
    return out


def _remove_stale_figures(fig_dir: Path, written: list[Path]) -> None:
    keep = {p.name for p in written}
    for png in fig_dir.glob("*.png"):
        if png.name not in keep:
            png.unlink()
