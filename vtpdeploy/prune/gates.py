"""VTP importance gates: learnable scores â that scale the input features of a Linear layer.

The paper's four gate places (`GATE_KINDS`) are Linear inputs of a timm ViT block; `sites` maps them.
Gating the input of a Linear is what makes compaction exact: a zero gate removes one input column,
and a kept gate value folds into that column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .sites import GATE_KINDS, iter_sites, set_site, site, unbiased_sites


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
        missing = unbiased_sites(block)
        if missing:
            raise UnsupportedModelError(f"{label}: block {i} {missing[0]} has no bias (compaction folds into biases)")


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
        for kind in GATE_KINDS:
            set_site(block, kind, GatedLinear(site(block, kind), kind))
    return model


def iter_gates(model: nn.Module) -> Iterator[GateRef]:
    """All gates in block order, then kind order."""
    for i, kind, module in iter_sites(model):
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
