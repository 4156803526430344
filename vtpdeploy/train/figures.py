"""The run report's PNG figures (matplotlib, Agg backend). Every axis is labelled with its unit.

Each function takes plain data (no run-dir reading) and writes one PNG atomically.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path

DPI = 110
KIND_TITLES = {"qkv_in": "qkv_in (attention input)", "attn_v": "attn_v (V / proj input)",
               "mlp_in": "mlp_in (fc1 input)", "mlp_hidden": "mlp_hidden (fc2 input)"}
KEPT, PRUNED, BEFORE = "tab:blue", "tab:red", "lightgrey"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return Path(path)


def _scaled(values: list[float]) -> tuple[list[float], str]:
    """Values in K/M/G units chosen by the largest one, and the unit's name."""
    top = max(values) if values else 0
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= div:
            return [v / div for v in values], unit
    return list(values), ""


def accuracy_and_size(accuracy: dict[str, float], params: dict[str, int], macs: dict[str, int], path: Path) -> Path:
    """Val top-1 per stage; params and MACs of the unpruned vs the compact model."""
    plt = _plt()
    fig, (ax, ax_p, ax_m) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2, 1, 1]})
    names = list(accuracy)
    vals = [accuracy[n] for n in names]
    colors = {"unpruned": BEFORE, "sparsified": "tab:purple", "pruned": PRUNED}
    bars = ax.bar(names, vals, color=[colors.get(n, KEPT) for n in names])
    ax.bar_label(bars, labels=[f"{v:.2f} %" for v in vals], padding=2)
    bottom = 0.0 if min(vals) < 50 else 5.0 * (min(vals) // 5 - 1)  # zoom in when every stage is accurate
    ax.set_ylabel("val top-1 (%)" + (f", axis from {bottom:g} %" if bottom else ""))
    ax.set_xlabel("stage")
    ax.set_ylim(bottom, max(vals) + 0.12 * (max(vals) - bottom) + 0.5)
    ax.set_title("Accuracy after each stage")
    for axis, counts, what in ((ax_p, params, "parameters"), (ax_m, macs, "MACs per image")):
        before, after = counts["unpruned"], counts["compact"]
        (b, a), unit = _scaled([before, after])
        bars = axis.bar(["unpruned", "compact"], [b, a], color=[BEFORE, KEPT])
        axis.bar_label(bars, labels=[f"{b:.3g}{unit}", f"{a:.3g}{unit}"], padding=2)
        axis.set_ylabel(f"{what} ({unit or 'count'})")
        axis.set_ylim(0, b * 1.18)
        axis.set_title(f"{what}: -{100 * (1 - after / before):.1f} %")
    return _save(fig, path)


def gate_histograms(per_kind: dict[str, dict], xlabel: str, path: Path) -> Path:
    """Per gate kind: stacked histogram of the scores of kept vs pruned dims, with the threshold(s) τ.

    `per_kind[kind] = {"kept": [...], "pruned": [...], "taus": [...]}`.
    """
    import numpy as np
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _plt()
    kinds = list(per_kind)
    cols = 2 if len(kinds) > 1 else 1
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        d = per_kind[kind]
        allv = np.asarray(d["kept"] + d["pruned"], dtype=float)
        hi = max(float(allv.max()), 1e-6)
        lo = 0.0 if allv.min() < 0.25 * hi else float(allv.min()) * 0.98  # show 0 unless every score is far from it
        bins = np.linspace(lo, hi * 1.02, 41)
        ax.hist([d["pruned"], d["kept"]], bins=bins, stacked=True, color=[PRUNED, KEPT],
                label=[f"pruned ({len(d['pruned'])})", f"kept ({len(d['kept'])})"])
        taus = sorted(set(d["taus"]))
        for i, tau in enumerate(taus):
            ax.axvline(tau, color="black", linestyle="--", linewidth=1.2 if len(taus) == 1 else 0.6,
                       label=(f"τ = {tau:.3g}" if len(taus) == 1 else f"τ per layer ({len(taus)})") if i == 0 else None)
        log_y = np.histogram(allv, bins=bins)[0].max() > 50  # a tall spike near 0 would flatten the rest
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100 (not 10^0)
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dims (count, log scale)" if log_y else "dims (count)")
        ax.set_title(KIND_TITLES.get(kind, kind))
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    fig.suptitle("Gate score distribution per gate kind (red: pruned by the plan)")
    return _save(fig, path)


def kept_widths(blocks: list[dict], kinds: list[str], notes: dict[str, str], path: Path) -> Path:
    """Per gate kind: kept dims per block over the full width; `notes[kind]` = the profile's rule for it."""
    plt = _plt()
    cols = 2 if len(kinds) > 1 else 1
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.4 * rows), squeeze=False)
    x = [b["block"] for b in blocks]
    for ax, kind in zip(axes.flat, kinds):
        size = [b[f"{kind}_size"] for b in blocks]
        kept = [b[kind] for b in blocks]
        ax.bar(x, size, color=BEFORE, label="full width")
        bars = ax.bar(x, kept, color=KEPT, label="kept")
        ax.bar_label(bars, labels=[str(k) for k in kept], padding=1, fontsize=8)
        ax.set_xlabel("block index")
        ax.set_ylabel("dims (count)")
        ax.set_xticks(x)
        ax.set_ylim(0, max(size) * 1.15)
        note = notes.get(kind)
        ax.set_title(KIND_TITLES.get(kind, kind) + (f"\n{note}" if note else ""), fontsize=10)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    fig.suptitle("Kept width per block and gate kind (grey: full width, blue: kept)")
    return _save(fig, path)


def v_dims_per_head(matrix: list[list[int]], head_dim: int, note: str, path: Path) -> Path:
    """Heatmap: blocks x heads, the number of V dims each head keeps (of `head_dim`)."""
    import numpy as np

    plt = _plt()
    m = np.asarray(matrix)
    blocks, heads = m.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * heads + 3), max(3.0, 0.45 * blocks + 1.8)))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=head_dim, aspect="auto")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > head_dim * 0.6 else "black")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(blocks))
    ax.set_xlabel("head index")
    ax.set_ylabel("block index")
    ax.set_title(f"V dims kept per head (of {head_dim})" + (f"\n{note}" if note else ""), fontsize=10)
    fig.colorbar(im, ax=ax, label="V dims kept (count)")
    return _save(fig, path)


CURVE_PANELS = (("train_loss", "training loss (mean per batch)"), ("eval_top1", "val top-1 (%)"),
                ("gate_abs_mean", "mean |â| over all gates"), ("lr", "learning rate (weights)"))


def training_curves(stages: dict[str, list[dict]], path: Path) -> Path:
    """One row per stage, one panel per metric, against the epoch (0-based, as in summary.csv)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    names = list(stages)
    fig, axes = plt.subplots(len(names), len(CURVE_PANELS), figsize=(16, 3.0 * len(names) + 0.6), squeeze=False)
    for r, stage in enumerate(names):
        rows = stages[stage]
        for c, (key, label) in enumerate(CURVE_PANELS):
            ax = axes[r][c]
            pts = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
            ax.set_title(f"{stage}: {label}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label, fontsize=9)
            if not pts:
                ax.text(0.5, 0.5, "not recorded in this stage", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
                    color={"eval_top1": KEPT, "train_loss": "tab:orange"}.get(key, "tab:green"))
            if key == "train_loss" and any(row.get("train_l1") for row in rows):
                l1 = [(row["epoch"], row["train_l1"]) for row in rows if row.get("train_l1") is not None]
                tw = ax.twinx()
                tw.plot(*zip(*l1), color="tab:purple", linestyle=":", label="Σ|â| (L1 term, before λ)")
                tw.set_ylabel("Σ|â| (L1 term)", fontsize=9, color="tab:purple")
                tw.legend(fontsize=7, loc="upper right")
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle("Training curves per stage")
    return _save(fig, path)
