"""Statistics, table, figure and results page of the Fashion-MNIST frontier (benchmarks/fashion_frontier.py).

Accuracy differences are paired: both models predict the same test images, and a bootstrap over those images
(seeded, 2000 resamples, percentile) gives the 95 % CI of the difference in top-1. Latencies come from one
interleaved `vtpdeploy bench` run, so every ratio is measured side by side.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

LEVEL_ORDER = {"1x": 0, "2x": 1, "3x": 2, "4x": 3}
N_BOOT = 2000


def paired_diff_ci(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Top-1 of A minus top-1 of B (points) on the same images, with its paired-bootstrap 95 % CI."""
    d = (pred_a == labels).astype(np.float64) - (pred_b == labels).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(N_BOOT, len(d)))
    boots = d[idx].mean(axis=1) * 100
    return {"diff": round(float(d.mean() * 100), 3),
            "ci95": [round(float(np.percentile(boots, 2.5)), 3), round(float(np.percentile(boots, 97.5)), 3)]}


def attach_latency(rows: list[dict], bench: dict | None, out: Path) -> None:
    """ort_b1_ms, ort_b8_ms, openvino_b1_ms, openvino_b8_ms (means) of each row's ONNX, from the bench report."""
    by_artifact: dict[tuple[str, str, int], float] = {}
    for r in (bench or {}).get("results", []):
        by_artifact[(str(Path(r["artifact"]).resolve()), r["backend"], int(r["batch"]))] = r["latency_ms"]["mean"]
    for row in rows:
        path = str((out / row["onnx"]).resolve())
        for backend in ("ort", "openvino"):
            for batch in (1, 8):
                ms = by_artifact.get((path, backend, batch))
                row[f"{backend}_b{batch}_ms"] = None if ms is None else round(ms, 4)


def attach_cis(rows: list[dict], preds: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Each row's paired CI vs the unpruned model and vs the best Torch-Pruning arm of its level and seed."""
    unpruned = next((r for r in rows if r["family"] == "unpruned"), None)
    best_peer: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r["family"] == "torch-pruning" and r["precision"] == "fp32":
            key = (r["level"], r["seed"])
            if key not in best_peer or r["val_top1"] > best_peer[key]["val_top1"]:  # chosen on val, never test
                best_peer[key] = r
    for r in rows:
        if unpruned is not None and r is not unpruned:
            r["vs_unpruned"] = paired_diff_ci(preds[r["id"]], preds[unpruned["id"]], labels)
        peer = best_peer.get((r["level"], r["seed"]))
        if peer is not None and r["family"] != "torch-pruning":
            r["vs_best_peer"] = {"peer": peer["method"], **paired_diff_ci(preds[r["id"]], preds[peer["id"]], labels)}


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (method, precision, level): mean and range over seeds of top-1 and latency."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["method"], r["precision"], r["level"])].append(r)
    out = []
    for (family, method, precision, level), rs in groups.items():
        top = [r["test_top1"] for r in rs]
        b1 = [r["ort_b1_ms"] for r in rs if r.get("ort_b1_ms") is not None]
        out.append({"family": family, "method": method, "precision": precision, "level": level,
                    "seeds": sorted(r["seed"] for r in rs), "test_top1_mean": round(float(np.mean(top)), 3),
                    "test_top1_min": min(top), "test_top1_max": max(top),
                    "val_top1_mean": round(float(np.mean([r.get("val_top1") or 0 for r in rs])), 3),
                    "macs": int(np.mean([r["macs"] for r in rs])), "params": int(np.mean([r["params"] for r in rs])),
                    "ort_b1_ms": round(float(np.mean(b1)), 4) if b1 else None,
                    "ort_b8_ms": _mean(rs, "ort_b8_ms"), "openvino_b1_ms": _mean(rs, "openvino_b1_ms")})
    return sorted(out, key=lambda s: (LEVEL_ORDER.get(s["level"], 9), s["family"], s["method"], s["precision"]))


def _mean(rs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def plot_frontier(summary: list[dict], path: Path) -> Path:
    """Test top-1 against ORT b1 latency: one line per method across levels, the unpruned model as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    lines: dict[str, list[dict]] = defaultdict(list)
    for s in summary:
        if s["ort_b1_ms"] is not None and s["family"] != "unpruned":
            lines[s["method"] + ("" if s["precision"] == "fp32" else f" ({s['precision']})")].append(s)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: the default cycle of 10 repeats on this many lines
    markers = {"vtpdeploy": "o", "torch-pruning": "s", "prune-only": "v", "scratch": "D"}
    for i, (label, pts) in enumerate(sorted(lines.items())):
        pts = sorted(pts, key=lambda s: s["ort_b1_ms"])
        style = "--" if "int8" in label else "-"
        ax.plot([p["ort_b1_ms"] for p in pts], [p["test_top1_mean"] for p in pts], style, color=colors[i % 20],
                marker=markers.get(pts[0]["family"], "o"), label=label)
        for p in pts:
            ax.vlines(p["ort_b1_ms"], p["test_top1_min"], p["test_top1_max"], alpha=0.4)
    for s in summary:
        if s["family"] == "unpruned" and s["ort_b1_ms"] is not None:
            ax.plot([s["ort_b1_ms"]], [s["test_top1_mean"]], "k*", markersize=14, label="unpruned")
    ax.set_xlabel("ONNX Runtime CPU latency, batch 1 (ms, interleaved run)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("Accuracy x latency frontier (mean over seeds; bars: seed range)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _fmt(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def summary_table(summary: list[dict]) -> tuple[list[str], list[list]]:
    header = ["level", "method", "prec.", "seeds", "test top-1 (mean, range)", "MACs", "params",
              "ORT b1 ms", "ORT b8 ms", "OpenVINO b1 ms"]
    rows = [[s["level"], s["method"], s["precision"], len(s["seeds"]),
             f"{s['test_top1_mean']:.2f} ({s['test_top1_min']:.2f}–{s['test_top1_max']:.2f})",
             f"{s['macs'] / 1e6:.2f} M", f"{s['params'] / 1e3:.0f} k", _fmt(s["ort_b1_ms"], ".3f"),
             _fmt(s["ort_b8_ms"], ".3f"), _fmt(s["openvino_b1_ms"], ".3f")] for s in summary]
    return header, rows


def rows_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    header = ["level", "method", "prec.", "seed", "test top-1", "Δ vs unpruned [95 % CI]", "Δ vs best TP [95 % CI]",
              "MACs", "ORT b1 ms", "ORT b8 ms"]

    def ci(c: dict | None) -> str:
        return "–" if not c else f"{c['diff']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"

    body = [[r["level"], r["method"], r["precision"], r["seed"], f"{r['test_top1']:.2f}", ci(r.get("vs_unpruned")),
             ci(r.get("vs_best_peer")), f"{r['macs'] / 1e6:.2f} M", _fmt(r.get("ort_b1_ms"), ".3f"),
             _fmt(r.get("ort_b8_ms"), ".3f")]
            for r in sorted(rows, key=lambda r: (LEVEL_ORDER.get(r["level"], 9), r["family"], r["method"],
                                                 r["precision"], r["seed"]))]
    return header, body


def readme_summary(summary: list[dict], level: str = "3x") -> tuple[list[str], list[list]]:
    """Five rows for the README: unpruned, then at `level` the best arm of each family: among the arms run at the
    most seeds (a one-seed probe's mean is not comparable), the best by val top-1."""
    picks = [s for s in summary if s["family"] == "unpruned"]
    for family in ("vtpdeploy", "prune-only", "torch-pruning", "scratch"):
        cands = [s for s in summary if s["family"] == family and s["level"] == level and s["precision"] == "fp32"]
        if cands:
            picks.append(max(cands, key=lambda s: (len(s["seeds"]), s["val_top1_mean"])))
    header = ["model", "MACs", "test top-1", "ORT b1 ms"]
    rows = [[f"{s['method']}" + ("" if s["family"] == "unpruned" else f" ({s['level']} fewer MACs)"),
             f"{s['macs'] / 1e6:.1f} M", f"{s['test_top1_mean']:.2f} %", _fmt(s["ort_b1_ms"], ".2f")] for s in picks]
    return header, rows
