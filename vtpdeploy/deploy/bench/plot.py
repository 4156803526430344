"""PNG plot of a report: latency distributions (box plots) and speedups with their 95% CIs."""

from __future__ import annotations

from pathlib import Path

from ...fileio import atomic_path


def write_plot(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    comps = report.get("comparison", [])
    ncols = 2 if comps else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 0.5 * len(results) + 2.5), squeeze=False)
    ax = axes[0][0]
    data = [r.get("latencies_ms") or [r["latency_ms"]["p50"]] for r in results]
    labels = [f"{r['model']} [{r['backend']} b{r['batch']}]" for r in results]
    try:
        ax.boxplot(data, orientation="horizontal", showfliers=False)
    except TypeError:  # matplotlib < 3.10
        ax.boxplot(data, vert=False, showfliers=False)
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_xlabel("latency per batch (ms)")
    ax.set_title("latency distribution")
    if comps:
        ax2 = axes[0][1]
        ys = range(len(comps))
        sp = [c["speedup"] for c in comps]
        err = [[c["speedup"] - c["speedup_ci"][0] for c in comps], [c["speedup_ci"][1] - c["speedup"] for c in comps]]
        ax2.barh(list(ys), sp, xerr=err, capsize=4, color="tab:green")
        ax2.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax2.set_yticks(list(ys), [f"{c['candidate']} [{c['backend']} b{c['batch']}]" for c in comps], fontsize=8)
        ax2.set_xlabel("speedup vs baseline (95% CI)")
        ax2.set_title(f"vs {comps[0]['baseline']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
