"""Per-block widths, params and MACs of a (compact or plain) ViT, for `vtpdeploy inspect`."""

from __future__ import annotations

from torch import nn
from torch.utils import flop_counter

from .counting import _custom_mapping, _input_shape, count, frozen
from .sites import GATE_KINDS, SITES, read_block_dims


def block_widths(block: nn.Module) -> dict:
    """Kept width at each gate place and V dims per head, for timm, gated or compact blocks (0 at every place
    of a removed sublayer)."""
    dims = read_block_dims(block)
    kept = {k: 0 if SITES[k][0] in dims.removed_sublayers else n for k, n in dims.kept.items()}
    return {**kept, "v_dims": dims.v_dims, "removed": list(dims.removed_sublayers)}


def input_selection(model: nn.Module) -> str:
    """How the blocks pick their kept qkv/fc1 inputs: one line for `vtpdeploy inspect`."""
    picks = [(i, m) for i, blk in enumerate(model.blocks) for m in (blk.attn, blk.mlp)]
    gathered = sorted({i for i, m in picks if getattr(m, "gather_input", False)})
    sliced = sorted({i for i, m in picks if getattr(m, "slice_input", False)})

    def blocks(ids: list[int]) -> str:
        return ("block " if len(ids) == 1 else "blocks ") + ", ".join(map(str, ids))

    if gathered:
        return f"qkv/fc1 inputs: gathered (index_select) in {blocks(gathered)}"
    if sliced:
        return (f"qkv/fc1 inputs: sliced in {blocks(sliced)} (the residual stream is reordered once; the final norm "
                "restores the channel order)")
    return "qkv/fc1 inputs: every block reads its full LayerNorm output"


def block_table(model: nn.Module, img_size) -> tuple[list[dict], dict]:
    import torch

    counter = flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=_custom_mapping())
    x = torch.zeros(_input_shape(model, img_size), dtype=next(model.parameters()).dtype)
    with torch.no_grad(), frozen(model), counter:
        model.eval()(x)
    by_module = counter.get_flop_counts()
    prefix = type(model).__name__
    rows = []
    for i, block in enumerate(model.blocks):
        flops = sum(by_module.get(f"{prefix}.blocks.{i}", {}).values())
        rows.append({"block": i, **block_widths(block), "params": sum(p.numel() for p in block.parameters()),
                     "macs": int(flops // 2)})
    return rows, count(model, img_size)


def render_table(rows: list[dict], totals: dict, title: str = ""):
    from rich.table import Table

    table = Table(title=title)
    for col in ("block", *GATE_KINDS, "V dims per head", "params", "MACs"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["block"]), *(str(r[k]) for k in GATE_KINDS), ",".join(map(str, r["v_dims"])) or "removed",
                      f"{r['params']:,}", f"{r['macs']:,}")
    table.add_row("total", *[""] * 5, f"{totals['params']:,}", f"{totals['macs']:,}", style="bold")
    return table
