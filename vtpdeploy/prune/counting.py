"""Params and MACs, counted by torch.utils.flop_counter (MACs = FLOPs / 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils import flop_counter

from .sites import image_chans


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _custom_mapping() -> dict:
    # FlopCounterMode knows the CUDA attention kernels but not the CPU one SDPA dispatches to here.
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_cpu_flops
    return mapping


def _input_shape(model: nn.Module, img_size) -> tuple[int, int, int, int]:
    pe = model.patch_embed
    chans = image_chans(model)
    if img_size is None:
        img_size = pe.img_size
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    return (1, chans, int(img_size[0]), int(img_size[1]))


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with requires_grad off on every parameter, restored after. FlopCounterMode's module tracker hooks
    the inputs that require grad, and fails on a view of a parameter taken under no_grad (it has no grad_fn):
    Perception Encoder's attention pool expands its latent query that way."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def count(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> dict[str, int]:
    """{'params', 'macs'} for one image; gates count as params, gate multiplies are not MACs."""
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    x = torch.zeros(_input_shape(model, img_size), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with frozen(model), flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": int(params), "macs": int(counter.get_total_flops() // 2)}
