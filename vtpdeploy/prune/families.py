"""Which timm model classes VTP supports, and the one rewrite that puts them in `sites`' block layout.

Two block maps stand behind the `sites` interface: timm's `VisionTransformer` (blocks of `Block` with
`Attention` and `Mlp` / `GluMlp` / `SwiGLU`, any patch or hybrid CNN stem) and timm's `Eva` (EVA-02, DINOv3,
the RoPE ViTs, Perception Encoder: `EvaBlock` with `EvaAttention` / `AttentionRope`). `prepare` fuses Eva's
separate q/k/v projections (or its fused qkv with separate q/v bias parameters) into one biased `attn.qkv`
Linear, which the timm forward then uses unchanged; from there every model has the same four gate sites.
Everything else is refused with one line naming the part that is not supported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModelError


def label(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _classes():
    from timm.layers import Attention, AttentionRope, GluMlp, Mlp, SwiGLU
    from timm.models.eva import Eva, EvaAttention, EvaBlock
    from timm.models.vision_transformer import Block, VisionTransformer

    return {
        VisionTransformer: (Block, (Attention,)),
        Eva: (EvaBlock, (EvaAttention, AttentionRope)),
    }, (Mlp, GluMlp, SwiGLU)


def block_map(model: nn.Module) -> str:
    """'vit' or 'eva': the block map `model` is read with; UnsupportedModelError for other models."""
    families, _ = _classes()
    for cls in families:
        if isinstance(model, cls):  # subclasses too (DeiT's distilled ViT)
            return "eva" if cls.__name__ == "Eva" else "vit"
    raise UnsupportedModelError(
        f"{label(model)}: not a timm VisionTransformer or Eva ({type(model).__name__} is not supported; VTP gates "
        "need their qkv/proj/fc1/fc2 block layout)")


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError (one line) unless every block of `model` has a layout VTP can prune exactly."""
    families, mlps = _classes()
    name = label(model)
    block_map(model)
    block_cls, attn_classes = next(v for cls, v in families.items() if isinstance(model, cls))
    _check_stem(model, name)
    for i, block in enumerate(model.blocks):
        if type(block) is not block_cls:
            raise UnsupportedModelError(f"{name}: block {i} is {type(block).__name__}, expected {block_cls.__name__}")
        attn, mlp = block.attn, block.mlp
        if type(attn) not in attn_classes:
            raise UnsupportedModelError(f"{name}: block {i} attention is {type(attn).__name__}, not supported")
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"{name}: block {i} uses gated attention, not supported")
        if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
            raise UnsupportedModelError(f"{name}: block {i} uses grouped-query attention, not supported")
        if type(mlp) not in mlps or getattr(mlp, "chunk_dim", -1) != -1:
            raise UnsupportedModelError(f"{name}: block {i} MLP is {type(mlp).__name__}, not supported")


def _check_stem(model: nn.Module, name: str) -> None:
    """A hybrid (CNN) stem is kept as it is, in front of the pruned transformer. The exporter traces the model at
    one input size, so refuse a stem whose token grid follows the input (dynamic size or padding)."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or getattr(pe, "img_size", None) is None:
        raise UnsupportedModelError(f"{name}: the patch embedding has no fixed image size, not supported")
    dynamic = getattr(pe, "dynamic_img_pad", False) or getattr(model, "dynamic_img_size", False)
    if hasattr(pe, "backbone") and dynamic:
        raise UnsupportedModelError(f"{name}: a hybrid stem with a dynamic image size cannot be exported; "
                                    "create it without dynamic_img_size / dynamic_img_pad")


@torch.no_grad()
def prepare(model: nn.Module) -> nn.Module:
    """Fuse every Eva attention's q/k/v into one biased `qkv` Linear (exact), in place; other models unchanged."""
    for block in getattr(model, "blocks", ()):
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "q_proj"):
            continue
        if attn.qkv is None:
            parts = (attn.q_proj, attn.k_proj, attn.v_proj)
            weight = torch.cat([p.weight for p in parts])
            biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in parts]
            has_bias = any(p.bias is not None for p in parts)
            attn.q_proj = attn.k_proj = attn.v_proj = None
        elif getattr(attn, "q_bias", None) is not None:
            weight = attn.qkv.weight
            biases, has_bias = [attn.q_bias, attn.k_bias, attn.v_bias], True
            attn.q_bias = attn.k_bias = attn.v_bias = None
        else:
            continue
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        if has_bias:
            fused.bias.copy_(torch.cat(biases))
        attn.qkv = fused
    return model
