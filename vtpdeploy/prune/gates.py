"""VTP importance gates: learnable scores â that scale the input features of a Linear layer.

The paper's four gate places (`GATE_KINDS`) are Linear inputs of a timm ViT block; `sites` maps them.
Gating the input of a Linear is what makes compaction exact: a zero gate removes one input column,
and a kept gate value folds into that column.

Under the tied Q/K layout (`add_gates(model, qk_dims="tied")`) the attn_v gate of a block also scales query
dim j of head h (`TiedQKGatedLinear`): q·k sums over the head dims, so a zero gate removes Q, K and V dim j of
head h exactly, and a kept value folds into the Wq row as it folds into the proj column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import PlanError, UnsupportedModelError
from . import families
from .sites import GATE_KINDS, iter_sites, set_site, site

QKDims = Literal["full", "tied"]
QK_LAYOUTS: tuple[str, ...] = ("full", "tied")


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


class TiedQKGatedLinear(GatedLinear):
    """The qkv site under the tied Q/K layout: `linear(x * gate)`, then the Q rows of its output scaled by the
    block's attn_v gate (one score per head and head dim, the same index as the Q dim).

    The attn_v gate stays one parameter (the proj site's), held outside the module tree so it is saved and
    counted once; timm's attention forward is untouched."""

    def __init__(self, linear: nn.Linear, v_site: GatedLinear):
        super().__init__(linear, "qkv_in")
        self._v_site = (v_site,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x * self.gate)
        v_gate = self._v_site[0].gate
        return out * torch.cat([v_gate, v_gate.new_ones(out.shape[-1] - v_gate.numel())])

    def extra_repr(self) -> str:
        return super().extra_repr() + ", tied_qk"


def check_tied_qk(model: nn.Module) -> None:
    """UnsupportedModelError (one line) where tying Q/K dims to the V gates is not exact: RoPE rotates pairs of
    head dims into each other, and qk-norm normalises over the whole head dim."""
    name = _label(model)
    if getattr(model, "rope", None) is not None:
        raise UnsupportedModelError(f"{name}: tied Q/K dims are not exact with RoPE (it mixes pairs of head dims); "
                                    "use qk_dims full")
    for i, block in enumerate(model.blocks):
        for norm in ("q_norm", "k_norm"):
            if not isinstance(getattr(block.attn, norm, None), (nn.Identity, type(None))):
                raise UnsupportedModelError(f"{name}: block {i} uses qk-norm, over the whole head dim; tied Q/K "
                                            "dims are not exact with it (use qk_dims full)")


def add_gates(model: nn.Module, qk_dims: QKDims = "full") -> nn.Module:
    """Insert VTP gates (scores initialised to 1.0) at the four places of every block, in place.

    `qk_dims="tied"`: the attn_v gates also scale the Q dims of the same head and index (`TiedQKGatedLinear`),
    so plans prune Q/K head dims together with V. Returns the model. Gating an already gated model raises.
    """
    if qk_dims not in QK_LAYOUTS:
        raise UnsupportedModelError(f"unknown qk_dims {qk_dims!r}; use {' or '.join(QK_LAYOUTS)}")
    if any(True for _ in iter_gates(model)):
        raise UnsupportedModelError(f"{_label(model)}: model already has VTP gates")
    check_supported(model)
    if qk_dims == "tied":
        check_tied_qk(model)
    families.prepare(model)
    for block in model.blocks:
        gated = {kind: GatedLinear(site(block, kind), kind) for kind in GATE_KINDS}
        if qk_dims == "tied":
            gated["qkv_in"] = TiedQKGatedLinear(site(block, "qkv_in"), gated["attn_v"])
        for kind, module in gated.items():
            set_site(block, kind, module)
        if getattr(block.mlp, "fc1_g", None) is not None:
            block.mlp.fc1_g = SharedGateLinear(block.mlp.fc1_g, site(block, "mlp_in"))
    return model


def qk_layout(model: nn.Module) -> QKDims:
    """'tied' when the model's qkv sites scale Q by the attn_v gates (`TiedQKGatedLinear`), else 'full'."""
    return "tied" if any(isinstance(site(b, "qkv_in"), TiedQKGatedLinear) for b in getattr(model, "blocks", ())) \
        else "full"


def refuse_tied_qk(model: nn.Module, what: str) -> None:
    """PlanError (one line) when `model` has tied Q/K gates and `what` cannot plan or time them yet."""
    if qk_layout(model) == "tied":
        raise PlanError(f"{what} does not support tied Q/K dims yet (its tables time full Q/K heads); "
                        "use prune.rate or prune.target_macs, or sparsify.qk_dims full")


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
