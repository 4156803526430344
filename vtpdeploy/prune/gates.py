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
from . import families
from .sites import GATE_KINDS, iter_sites, set_site, site


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
    """Raise UnsupportedModelError (one line) unless `model` has a block layout VTP prunes exactly (`families`)."""
    families.check_supported(model)


def _label(model: nn.Module) -> str:
    return families.label(model)


class SharedGateLinear(nn.Module):
    """`linear(x * source.gate)`: a second Linear reading a gated site (SwiGLU's `fc1_g` beside `fc1_x`).

    The gate stays one parameter (the source's); the source is held outside the module tree so it is
    saved and counted once."""

    def __init__(self, linear: nn.Linear, source: GatedLinear):
        super().__init__()
        self.linear = linear
        self._source = (source,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self._source[0].gate)


def add_gates(model: nn.Module) -> nn.Module:
    """Insert VTP gates (scores initialised to 1.0) at the four places of every block, in place.

    Returns the model. Gating an already gated model raises.
    """
    if any(True for _ in iter_gates(model)):
        raise UnsupportedModelError(f"{_label(model)}: model already has VTP gates")
    check_supported(model)
    families.prepare(model)
    for block in model.blocks:
        for kind in GATE_KINDS:
            set_site(block, kind, GatedLinear(site(block, kind), kind))
        if getattr(block.mlp, "fc1_g", None) is not None:
            block.mlp.fc1_g = SharedGateLinear(block.mlp.fc1_g, site(block, "mlp_in"))
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
