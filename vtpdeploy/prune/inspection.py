"""Per-block widths, params and MACs of a (compact or plain) ViT, for `vtpdeploy inspect`."""

from __future__ import annotations

from torch import nn
from torch.utils import flop_counter

from .counting import _custom_mapping, _input_shape, count
from .gates import GATE_KINDS


def block_widths(block: nn.Module) -> dict:
    """Kept / full width at each gate place, for timm, gated or compact blocks."""
    from .compact import CompactBlock

    attn, mlp = block.attn, block.mlp
    if isinstance(block, CompactBlock):
        return {"qkv_in": attn.qkv.in_features, "attn_v": sum(attn.v_dims), "mlp_in": mlp.fc1.in_features,
                "mlp_hidden": mlp.fc1.out_features, "v_dims": list(attn.v_dims)}
    lin = lambda m: getattr(m, "linear", m)  # noqa: E731  (gated or plain)
    gate = lambda m: getattr(m, "gate", None)  # noqa: E731
    kept = lambda m: int((gate(m) != 0).sum()) if gate(m) is not None else lin(m).in_features  # noqa: E731
    return {"qkv_in": kept(attn.qkv), "attn_v": kept(attn.proj), "mlp_in": kept(mlp.fc1),
            "mlp_hidden": kept(mlp.fc2), "v_dims": [attn.head_dim] * attn.num_heads}


def block_table(model: nn.Module, img_size) -> tuple[list[dict], dict]:
    import torch

    counter = flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=_custom_mapping())
    x = torch.zeros(_input_shape(model, img_size), dtype=next(model.parameters()).dtype)
    with torch.no_grad(), counter:
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
        table.add_row(str(r["block"]), *(str(r[k]) for k in GATE_KINDS), ",".join(map(str, r["v_dims"])),
                      f"{r['params']:,}", f"{r['macs']:,}")
    table.add_row("total", *[""] * 5, f"{totals['params']:,}", f"{totals['macs']:,}", style="bold")
    return table
