"""Labelled images of a run's own data for the export checks: parity inputs and the INT8 held-out agreement."""

from __future__ import annotations

import numpy as np

from ..sources import ModelSource

HELDOUT_MAX = 512


def run_split(source: ModelSource, split: str, limit: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Up to `limit` preprocessed (images, labels) of the run's `split`, or None without real data."""
    if source.run_dir is None or not (source.run_dir / "recipe.yaml").is_file():
        return None
    from ...data import build_dataset, data_config_for, make_transform, run_data_section

    try:
        data = run_data_section(source.run_dir)
    except Exception:
        return None
    if data.kind == "synthetic":
        return None
    cfg = data_config_for(source.data_config, data)
    ds = build_dataset(data, split, make_transform(cfg), input_size=tuple(cfg["input_size"]))
    n = min(limit, len(ds))
    if n == 0:
        return None
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else np.arange(n)
    xs, ys = zip(*(ds[int(i)] for i in idx))
    x = np.stack([t.numpy() if hasattr(t, "numpy") else np.asarray(t) for t in xs]).astype(np.float32)
    return x, np.asarray(ys, dtype=np.int64), f"{data.kind} {split} split"


def heldout_set(source: ModelSource, heldout: tuple[np.ndarray, np.ndarray] | None):
    """(held-out images and labels, where they come from), or (None, None) without real data."""
    if heldout is not None:
        return heldout, "given held-out set"
    split = run_split(source, "val", HELDOUT_MAX)
    return (split[:2], split[2]) if split is not None else (None, None)
