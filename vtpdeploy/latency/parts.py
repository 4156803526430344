"""What a latency table times: its grids, one random-init module per entry, inputs, and the whole models it
is calibrated on.

Parts (each a residual branch, as in the compact model):
- `attn`: x + CompactAttention(LN(x)) at qkv_in width `w_in` and per-head V width `v` (Q/K full);
- `mlp`:  x + CompactMlp(LN(x)) at mlp_in width `w_in` and hidden width `h`;
- `stem`: patch embedding + tokens + final norm + head (width independent).
Grids are coarse (`points` per axis); lookups interpolate bilinearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..deploy.export.onnx_export import export_onnx
from ..errors import VtpError
from ..prune.gates import refuse_tied_qk
from ..prune.sites import read_dims


def model_dims(model) -> dict:
    """Shape facts a table depends on, from a (gated or plain) timm ViT; PlanError for tied Q/K gates (the parts
    time full Q/K heads)."""
    refuse_tied_qk(model, "latency-guided planning")
    d = read_dims(model)
    return {"embed_dim": d.embed_dim, "num_heads": d.num_heads, "head_dim": d.head_dim, "mlp_hidden": d.mlp_hidden,
            "depth": d.depth, "tokens": d.tokens, "img_size": d.img_size, "in_chans": d.in_chans,
            "num_classes": d.num_classes}


def _axis(lo: int, hi: int, points: int, multiple: int) -> list[int]:
    lo = max(1, min(lo, hi))
    vals = {int(round(v / multiple)) * multiple for v in np.linspace(lo, hi, max(2, points))}
    vals = {min(hi, max(multiple if multiple <= hi else 1, v)) for v in vals} | {hi}
    return sorted(vals)


def default_grid(dims: dict, points: int = 5) -> dict[str, tuple[list[int], list[int]]]:
    d, hd, h = dims["embed_dim"], dims["head_dim"], dims["mlp_hidden"]
    m = 16 if d >= 64 else 1
    return {
        "attn": (_axis(max(m, d // 8), d, points, m), _axis(min(8, hd), hd, points, 8 if hd >= 16 else 1)),
        "mlp": (_axis(max(m, d // 8), d, points, m), _axis(max(m, h // 16), h, points, 32 if h >= 128 else 1)),
    }


def grid_entries(grid: dict[str, tuple[list[int], list[int]]]) -> list[tuple[str, tuple[int, ...]]]:
    """(part, widths) of every table entry, in the table's order: attn grid, mlp grid, stem."""
    parts: list[tuple[str, tuple[int, ...]]] = [("attn", (x, y)) for x in grid["attn"][0] for y in grid["attn"][1]]
    return parts + [("mlp", (x, y)) for x in grid["mlp"][0] for y in grid["mlp"][1]] + [("stem", ())]


def part_module(part: str, widths: tuple[int, ...], dims: dict, model=None, slice_input: bool = False):
    """A random-init torch module for one table entry (eval mode). `slice_input`: a pruned input width is a
    slice of the residual stream (profiles with `shared_input_order`), not a gather."""
    import copy

    import torch
    from torch import nn

    from ..prune.compact import CompactAttention, CompactMlp

    d, heads, hd = dims["embed_dim"], dims["num_heads"], dims["head_dim"]
    torch.manual_seed(0)

    class _Residual(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.inner = inner

        def forward(self, x):
            return x + self.inner(self.norm(x))

    if part == "attn":
        w_in, v = widths
        return _Residual(CompactAttention(d, w_in, heads, hd, [v] * heads, bias=True, slice_input=slice_input)).eval()
    if part == "mlp":
        w_in, h = widths
        return _Residual(CompactMlp(d, w_in, h, nn.GELU(), slice_input=slice_input)).eval()
    if part == "stem":  # the model without its blocks: patch embed, tokens, final norm, head
        if model is None:
            raise VtpError("measuring the stem needs the model")
        blocks = model.blocks
        try:
            model.blocks = nn.Sequential()
            stem = copy.deepcopy(model)
        finally:
            model.blocks = blocks
        return stem.eval()
    raise VtpError(f"unknown latency part {part!r}")


def sample_input(part: str, dims: dict, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if part == "stem":
        return rng.standard_normal((batch, dims["in_chans"], *dims["img_size"]), dtype=np.float32)
    return rng.standard_normal((batch, dims["tokens"], dims["embed_dim"]), dtype=np.float32)


def timed_artifact(backend: str, module, x: np.ndarray, path: Path):
    """What the runner loads: the module itself for torch, else its ONNX from the one exporter (checker
    only: the graph is only timed)."""
    if backend == "torch":
        return module
    export_onnx(module, path, batch=x.shape[0], sample=x, validate=False)
    return path


def calibration_models(model, keeps: Sequence[float], constraints):
    """(keep, compact model, its BlockWidths) for each whole model the table is calibrated on."""
    import copy

    from ..prune.compact import compact, widths_from_plan
    from ..prune.gates import add_gates, iter_gates
    from .planner import ladder_plan

    gated = model if next(iter_gates(model), None) is not None else add_gates(copy.deepcopy(model))
    out = []
    for keep in keeps:
        p = ladder_plan(gated, keep, constraints, importance="weight_l1")
        out.append((keep, compact(gated, p).eval(), widths_from_plan(p)))
    return out
