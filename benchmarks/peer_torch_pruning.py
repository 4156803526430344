"""Torch-Pruning peer arm: a timm ViT pruned with Torch-Pruning's own timm-ViT recipe to a target MAC count.

The recipe is TP's examples/transformers/prune_timm_vit.py (group-L1 importance, uniform per-layer ratio,
head dims pruned, heads kept, round_to=2); only the pruning ratio is searched, so that the result has the
same MACs (as `vtpdeploy.count` sees them) as the model it is compared with.

    uniform     the residual stream (embed dim) is pruned too; only the classifier outputs are kept
    bottleneck  attention and MLP internals only (TP's `--bottleneck`): every Mlp.fc2 output is kept too
"""

from __future__ import annotations

import importlib.util
import warnings
from types import MethodType
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Mlp
from torch import nn

import vtpdeploy

MISSING_HINT = "Torch-Pruning arm skipped: torch-pruning is not installed (pip install -e '.[bench]')"
MODES = ("uniform", "bottleneck")
MAX_RATIO = 0.95
MAX_TRIALS = 12


def missing() -> str | None:
    """The one-line skip reason when torch_pruning cannot be imported, else None."""
    try:
        # find_spec raises ValueError for a module that is in sys.modules as None (a blocked import).
        if importlib.util.find_spec("torch_pruning") is None:
            return MISSING_HINT
        import torch_pruning  # noqa: F401
    except (ImportError, ValueError):
        return MISSING_HINT
    return None


def _attention_forward(self: Attention, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       is_causal: bool = False) -> torch.Tensor:
    """timm's Attention.forward with the head merge reshaped to -1: the pruned width differs from C."""
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    if self.fused_attn:
        # scale=self.scale: keep the unpruned softmax temperature, as the unfused branch does.
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
    else:
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if is_causal:
            attn = attn + attn.new_full((N, N), float("-inf")).triu(1)
        elif attn_mask is not None:
            attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
        x = self.attn_drop(attn.softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, -1)
    x = self.norm(x)
    return self.proj_drop(self.proj(x))


def _prune(model_name: str, ratio: float, mode: str, model_kwargs: dict, seed: int, round_to: int,
           weights: dict[str, torch.Tensor] | None = None) -> Any:
    import torch_pruning as tp

    torch.manual_seed(seed)
    model: Any = timm.create_model(model_name, pretrained=False, **model_kwargs).eval()
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    if not attns or any(getattr(m, "gate", None) is not None for m in attns):
        raise ValueError(f"{model_name}: needs timm vision_transformer Attention blocks without gates")
    for m in attns:
        m.forward = MethodType(_attention_forward, m)  # type: ignore[method-assign]
    ignored: list[nn.Module] = [model.get_classifier()]
    if mode == "bottleneck":
        ignored += [m.fc2 for m in model.modules() if isinstance(m, Mlp)]
    # TP 1.5.2 renamed GroupNormImportance -> GroupMagnitudeImportance and MetaPruner -> BasePruner.
    group_l1 = getattr(tp.importance, "GroupMagnitudeImportance", None) or tp.importance.GroupNormImportance
    pruner_cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner
    pe = model.patch_embed
    example = torch.randn(1, pe.proj.in_channels, *pe.img_size)
    with warnings.catch_warnings():
        # TP notes it prunes the last dim of cls_token / pos_embed: the embed dim, which is right for a ViT.
        warnings.filterwarnings("ignore", "Unwrapped parameters detected")
        pruner = pruner_cls(
            model, example, global_pruning=False, importance=group_l1(p=1), pruning_ratio=ratio,
            ignored_layers=ignored, num_heads={m.qkv: m.num_heads for m in attns},
            prune_num_heads=False, prune_head_dims=True, round_to=round_to)
    for group in pruner.step(interactive=True):
        group.prune()
    for m in attns:
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        m.attn_dim = m.num_heads * m.head_dim
    return model.eval()


def prune_to_macs(model_name: str, target_macs: int, mode: str, *, model_kwargs: dict | None = None,
                  tol: float = 0.01, seed: int = 0, round_to: int = 2,
                  weights: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Prune `model_name` (random init, or `weights`) with TP's timm-ViT recipe to `target_macs` (±`tol`, relative).

    The ratio is found by regula falsi (Illinois) on MACs(ratio) in (0, 0.95); returns (eval model, info).
    `round_to=2` is TP <= 1.4's example; TP >= 1.5's example uses 1 (finer MAC steps).
    """
    import torch_pruning as tp

    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose {' or '.join(MODES)}")
    kwargs = dict(model_kwargs or {})
    torch.manual_seed(seed)
    base = vtpdeploy.count(timm.create_model(model_name, pretrained=False, **kwargs).eval())["macs"]
    if not 0 < target_macs < base:
        raise ValueError(f"target {target_macs:,} MACs must be below the unpruned {base:,}")
    # Bracket: ratio 0 is the unpruned model; MACs at MAX_RATIO are unknown, 0 is a lower bound for them.
    lo, f_lo, hi, f_hi = 0.0, float(base), MAX_RATIO, 0.0
    last_side = 0
    tried: list[tuple[float, int]] = []
    for trial in range(1, MAX_TRIALS + 1):
        ratio = lo + (hi - lo) * (f_lo - target_macs) / (f_lo - f_hi)
        model = _prune(model_name, ratio, mode, kwargs, seed, round_to, weights)
        counts = vtpdeploy.count(model)
        macs = counts["macs"]
        tried.append((round(ratio, 5), macs))
        if abs(macs - target_macs) <= tol * target_macs:
            break
        # Illinois: when the same end moves twice, halve the other end's residual so it cannot stall.
        if macs > target_macs:
            lo, f_lo = ratio, float(macs)
            if last_side == 1:
                f_hi = target_macs + (f_hi - target_macs) / 2
            last_side = 1
        else:
            hi, f_hi = ratio, float(macs)
            if last_side == -1:
                f_lo = target_macs + (f_lo - target_macs) / 2
            last_side = -1
        if hi - lo < 1e-4:
            break  # MACs(ratio) is a staircase: the target falls between two steps, both out of tolerance
    if abs(macs - target_macs) > tol * target_macs:
        raise ValueError(f"torch-pruning {mode}: no pruning ratio gives {target_macs:,} MACs ±{100 * tol:g} % "
                         f"({trial} trials; (ratio, MACs) tried: {tried})")

    info = {
        "peer": "torch-pruning",
        "version": tp.__version__,
        "mode": mode,
        "pruning_ratio": ratio,
        "params": counts["params"],
        "macs": macs,
        "target_macs": int(target_macs),
        "macs_error_pct": round(100.0 * (macs - target_macs) / target_macs, 3),
        "embed_dim": int(model.patch_embed.proj.out_channels),
        "head_dims": [int(b.attn.head_dim) for b in model.blocks],
        "mlp_hidden": [int(b.mlp.fc1.out_features) for b in model.blocks],
        "trials": trial,
    }
    return model, info
