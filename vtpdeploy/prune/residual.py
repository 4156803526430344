"""One order of the residual stream in which every block's kept LayerNorm outputs are a prefix.

A pruned qkv_in / mlp_in gate makes the compact block pick its kept LayerNorm outputs before qkv / fc1
(an `index_select`, an ONNX `Gather`). When the kept sets of all these gates nest (each holds every
smaller one, as `shared_input_order` plans guarantee), one permutation of the residual stream makes
each of them a prefix, so the pick becomes a slice. LayerNorm is permutation-equivariant (its
statistics span the whole stream), so permuting every tensor that writes or reads the stream inside
the feature trunk is exact: the patch embedding's output channels, the class/register/distillation
tokens and position embedding, the norms over the stream, proj / fc2 output rows and qkv / fc1 input
columns. `RestoreOrder` puts the stream back in its original order after the final norm, so
`forward_features`, pooling and every head see the original channels (one pick per model, not per block).
"""

from __future__ import annotations

import torch
from torch import nn

from .schema import PrunePlan
from .sites import INPUT_KINDS

# Non-block tensors of a timm VisionTransformer that carry the permuted stream, by the axis that does; the final
# norm is wrapped in RestoreOrder (its tensors move under "norm.norm."), and what follows it keeps the original order.
_LAST_AXIS = ("cls_token", "reg_token", "dist_token", "pos_embed")
_FIRST_AXIS = ("patch_embed.proj.weight", "patch_embed.proj.bias")
_NORMS = ("patch_embed.norm.", "norm_pre.")
_AFTER_TRUNK = ("fc_norm.", "head.", "head_dist.", "attn_pool.")
_HYBRID_STEM = "patch_embed.backbone."  # a CNN stem in front of a patch projection: untouched


class RestoreOrder(nn.Module):
    """The final norm of a model whose residual stream is reordered, then the original channel order back."""

    def __init__(self, norm: nn.Module, dim: int):
        super().__init__()
        self.norm = norm
        self.register_buffer("index", torch.arange(dim), persistent=True)  # position of each original channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).index_select(-1, self.index)


def residual_order(plan: PrunePlan) -> list[int] | None:
    """The residual dims ordered so that every pruned qkv_in / mlp_in gate keeps a prefix; None when
    no such gate exists or their kept sets do not nest."""
    partial = {tuple(g.kept) for g in plan.gates if g.kind in INPUT_KINDS and len(g.kept) < g.size}
    if not partial:
        return None
    chain = sorted(partial, key=len)
    for small, big in zip(chain, chain[1:]):
        if len(small) == len(big) or not set(small) <= set(big):
            return None
    size = next(g.size for g in plan.gates if g.kind in INPUT_KINDS)
    order: list[int] = []
    seen: set[int] = set()
    for kept in [*chain, tuple(range(size))]:
        fresh = [i for i in kept if i not in seen]
        order += fresh
        seen.update(fresh)
    return order


def permute_outer(state: dict[str, torch.Tensor], order: list[int]) -> dict[str, torch.Tensor] | None:
    """The non-block tensors of a ViT state dict with the trunk's residual stream in `order` and the final norm
    as RestoreOrder's; None when a tensor is not one this map knows, so the caller keeps the gathers."""
    index = torch.tensor(order, dtype=torch.long)
    out: dict[str, torch.Tensor] = {"norm.index": torch.argsort(index)}
    for key, value in state.items():
        i = index.to(value.device)  # no-op on CPU; gated models may sit on a GPU
        if key in _LAST_AXIS:
            out[key] = value.index_select(-1, i)
        elif key in _FIRST_AXIS or (key.startswith(_NORMS) and value.dim() == 1):
            out[key] = value.index_select(0, i)
        elif key.startswith("norm.") and value.dim() == 1:
            out["norm." + key] = value.index_select(0, i)
        elif key.startswith(_AFTER_TRUNK) or (key.startswith(_HYBRID_STEM) and _FIRST_AXIS[0] in state):
            out[key] = value
        else:
            return None
    return out
