"""Fixtures and model-randomising helpers of the prune tests; shared configs and CLI tools live in helpers.py.

Everything here is random-init (never `pretrained=True`) and small: the machine is CPU-only.
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from helpers import make_vit
from torch import nn

import vtpdeploy
from vtpdeploy.prune.gates import iter_gates
from vtpdeploy.prune.sites import image_chans


@pytest.fixture
def tiny_vit() -> Callable[..., nn.Module]:
    """Factory: `tiny_vit(**overrides)` -> a tiny random-init timm VisionTransformer (eval mode)."""
    return make_vit


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def randomize_gates(model: nn.Module, seed: int = 0, signed: bool = True) -> nn.Module:
    """Give every gate distinct (untied) random values in ±[0.05, 1.55]; in place."""
    g = gen(seed)
    for ref in iter_gates(model):
        gate = ref.module.gate
        vals = 0.05 + 1.5 * torch.rand(gate.shape, generator=g)
        if signed:
            vals = vals * torch.where(torch.rand(gate.shape, generator=g) < 0.3, -1.0, 1.0)
        gate.copy_(vals)
    return model


@torch.no_grad()
def randomize_layer_scale(model: nn.Module, seed: int = 1) -> int:
    """Replace every LayerScale gamma by random values in ±[0.5, 1.5]; returns how many were set."""
    g = gen(seed)
    n = 0
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            vals = 0.5 + torch.rand(p.shape, generator=g)
            p.copy_(vals * torch.where(torch.rand(p.shape, generator=g) < 0.3, -1.0, 1.0))
            n += 1
    return n


@torch.no_grad()
def randomize_head(model: nn.Module, seed: int = 2) -> None:
    """Scale the classifier head(s) so logits are O(1) and sensitive to every feature."""
    g = gen(seed)
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) / head.in_features**0.5)
            head.bias.copy_(0.1 * torch.randn(head.bias.shape, generator=g))


def image_batch(model: nn.Module, batch: int = 2, seed: int = 3) -> torch.Tensor:
    pe = model.patch_embed
    h, w = pe.img_size
    return torch.randn(batch, image_chans(model), h, w, generator=gen(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def gated_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """add_gates + random untied gates + random LayerScale + O(1) head, in place."""
    randomize_layer_scale(model, seed + 1)
    randomize_head(model, seed + 2)
    vtpdeploy.add_gates(model)
    randomize_gates(model, seed)
    return model.eval()


@torch.no_grad()
def masked_and_compact(model: nn.Module, plan) -> tuple[nn.Module, nn.Module]:
    """(hard-mask reference copy, compact model), both in eval mode; `model` is left untouched."""
    masked = vtpdeploy.apply_mask(copy.deepcopy(model), plan).eval()
    small = vtpdeploy.compact(model, plan).eval()
    return masked, small


def gate_values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {ref.name: ref.module.gate.detach().clone() for ref in iter_gates(model)}
