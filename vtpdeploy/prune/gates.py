"""VTP importance gates: learnable scores â that scale the input features of a Linear layer.

Every one of the paper's four gate places is the input of a Linear layer in a timm ViT block:

| kind         | gated features                          | Linear that reads them |
|--------------|-----------------------------------------|------------------------|
| `qkv_in`     | LayerNorm output entering qkv           | `attn.qkv`             |
| `attn_v`     | attention output (the per-head V dims)  | `attn.proj`            |
| `mlp_in`     | LayerNorm output entering fc1           | `mlp.fc1`              |
| `mlp_hidden` | fc1 hidden output (after activation)    | `mlp.fc2`              |

Gating the input of a Linear is what makes compaction exact: a zero gate removes one input column,
and a kept gate value folds into that column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError

GATE_KINDS: tuple[str, ...] = ("qkv_in", "attn_v", "mlp_in", "mlp_hidden")


class GatedLinear(nn.Module):
    """`linear(x * gate)`, with `gate` a learnable per-input-feature score initialised to 1."""

    def __init__(self, linear: nn.Linear, kind: str):
        super().__init__()
        self.linear = linear
        self.kind = kind
        self.gate = nn.Parameter(
            torch.ones(linear.in_features, device=linear.weight.device, dtype=linear.weight.dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.gate)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, features={self.gate.numel()}"


@dataclass(frozen=True)
class GateRef:
    """Where a gate lives: block index, gate kind and the module."""

    block: int
    kind: str
    module: GatedLinear

    @property
    def name(self) -> str:
        return f"blocks.{self.block}.{self.kind}"


_GATE_SITES = {  # kind -> (parent attribute, linear attribute)
    "qkv_in": ("attn", "qkv"),
    "attn_v": ("attn", "proj"),
    "mlp_in": ("mlp", "fc1"),
    "mlp_hidden": ("mlp", "fc2"),
}


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError unless `model` is a plain timm VisionTransformer layout."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    label = _label(model)
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            f"{label}: not a timm VisionTransformer (VTP gates need its qkv/proj/fc1/fc2 block layout)"
        )
    for i, block in enumerate(model.blocks):
        if type(block) is not Block:
            raise UnsupportedModelError(f"{label}: block {i} is {type(block).__name__}, expected timm Block")
        attn, mlp = block.attn, block.mlp
        if type(attn) is not Attention:
            raise UnsupportedModelError(f"{label}: block {i} attention is {type(attn).__name__}")
        if type(mlp) is not Mlp:
            raise UnsupportedModelError(
                f"{label}: block {i} MLP is {type(mlp).__name__} (gated/SwiGLU MLPs are not supported)"
            )
        if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.norm, nn.Identity):
            raise UnsupportedModelError(f"{label}: block {i} uses qk-norm or scale-norm, not supported")
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"{label}: block {i} uses gated attention, not supported")
        if not isinstance(mlp.norm, nn.Identity):
            raise UnsupportedModelError(f"{label}: block {i} MLP has an inner norm, not supported")
        for name, lin in (("attn.proj", attn.proj), ("mlp.fc1", mlp.fc1), ("mlp.fc2", mlp.fc2)):
            lin = getattr(lin, "linear", lin)
            if lin.bias is None:
                raise UnsupportedModelError(f"{label}: block {i} {name} has no bias (compaction folds into biases)")


def _label(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def add_gates(model: nn.Module) -> nn.Module:
    """Insert VTP gates (scores initialised to 1.0) at the four places of every block, in place.

    Returns the model. Gating an already gated model raises.
    """
    if any(True for _ in iter_gates(model)):
        raise UnsupportedModelError(f"{_label(model)}: model already has VTP gates")
    check_supported(model)
    for block in model.blocks:
        for kind, (parent_name, linear_name) in _GATE_SITES.items():
            parent = getattr(block, parent_name)
            setattr(parent, linear_name, GatedLinear(getattr(parent, linear_name), kind))
    return model


def iter_gates(model: nn.Module) -> Iterator[GateRef]:
    """All gates in block order, then kind order."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return
    for i, block in enumerate(blocks):
        for kind, (parent_name, linear_name) in _GATE_SITES.items():
            parent = getattr(block, parent_name, None)
            module = getattr(parent, linear_name, None) if parent is not None else None
            if isinstance(module, GatedLinear):
                yield GateRef(i, kind, module)


def require_gates(model: nn.Module) -> list[GateRef]:
    gates = list(iter_gates(model))
    if not gates:
        raise UnsupportedModelError(f"{_label(model)}: model has no VTP gates; call add_gates(model) first")
    return gates


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [ref.module.gate for ref in iter_gates(model)]


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Σ|â| over all gates (the caller multiplies by λ)."""
    gates = require_gates(model)
    return torch.stack([ref.module.gate.abs().sum() for ref in gates]).sum()


def set_gates_trainable(model: nn.Module, trainable: bool) -> None:
    for ref in iter_gates(model):
        ref.module.gate.requires_grad_(trainable)
