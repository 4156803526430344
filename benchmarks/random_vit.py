"""The random-init models and input every DeiT benchmark script starts from, built the same way in each."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

# the tiny ViT of every --quick run
QUICK_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 2, "num_heads": 3, "num_classes": 10}


def random_models(name: str, kwargs: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """(unpruned timm model, gated deep copy to plan on), eval mode; seed 0, so every script times the same weights."""
    import timm

    import vtpdeploy

    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False, **(kwargs or {})).eval()
    return base, vtpdeploy.add_gates(copy.deepcopy(base)).eval()


def image_sample(model: nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A standard-normal image batch of the model's input shape."""
    pe = model.patch_embed
    shape = (batch, int(pe.proj.in_channels), *(int(v) for v in pe.img_size))
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))
