"""The one map of a timm ViT: where the VTP gate sites are and what widths a model has at them.

Every gate site is the input of a Linear layer in a block; the same attribute paths hold in plain
timm blocks, gated blocks (the Linear wrapped in a `GatedLinear`, which has `.linear` and `.gate`)
and compact blocks (`CompactAttention` / `CompactMlp` keep the names `qkv`, `proj`, `fc1`, `fc2`):

| kind         | gated features                          | Linear that reads them |
|--------------|-----------------------------------------|------------------------|
| `qkv_in`     | LayerNorm output entering qkv           | `attn.qkv`             |
| `attn_v`     | attention output (the per-head V dims)  | `attn.proj`            |
| `mlp_in`     | LayerNorm output entering fc1           | `mlp.fc1`              |
| `mlp_hidden` | fc1 hidden output (after activation)    | `mlp.fc2`              |

`read_dims` is the one reader of widths (embedding, heads, hidden, tokens, and per block the built and
kept width at each site); arch, inspection, profiles, the latency tables and the TensorRT readiness
report all read a model through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError

GATE_KINDS: tuple[str, ...] = ("qkv_in", "attn_v", "mlp_in", "mlp_hidden")

SITES: dict[str, tuple[str, str]] = {  # kind -> (block attribute, Linear attribute)
    "qkv_in": ("attn", "qkv"),
    "attn_v": ("attn", "proj"),
    "mlp_in": ("mlp", "fc1"),
    "mlp_hidden": ("mlp", "fc2"),
}

# The gates on LayerNorm outputs (the residual stream entering qkv / fc1); compaction selects their kept dims.
INPUT_KINDS: tuple[str, ...] = ("qkv_in", "mlp_in")

# The gates that may keep no dims (`WidthConstraints.drop_sublayers`): the attention / MLP output is then the
# constant proj / fc2 bias, and compaction removes the sublayer whole.
SUBLAYER_KINDS: tuple[str, ...] = ("attn_v", "mlp_hidden")
_SUBLAYERS = tuple(SITES[k][0] for k in SUBLAYER_KINDS)  # ("attn", "mlp"): the block attributes removed

# Compaction folds kept gate values and LayerScale into these Linears' biases, so they must have one.
BIASED_KINDS: tuple[str, ...] = ("attn_v", "mlp_in", "mlp_hidden")

Key = tuple[int, str]  # (block index, gate kind)


def site_order(key: Key) -> tuple[int, int]:
    """Sort key for (block, kind): block order, then GATE_KINDS order."""
    return key[0], GATE_KINDS.index(key[1])


def site_name(kind: str) -> str:
    """'attn.qkv' for 'qkv_in': the module path of a site inside a block."""
    return ".".join(SITES[kind])


def vit_blocks(model: nn.Module) -> Sequence[nn.Module]:
    """The transformer blocks of a ViT (empty when the model has none)."""
    blocks = getattr(model, "blocks", None)
    return blocks if blocks is not None else ()


def site(block: nn.Module, kind: str) -> nn.Module | None:
    """The module at a gate site of `block`: a Linear, a GatedLinear, or None when the block has no such site."""
    parent_name, linear_name = SITES[kind]
    parent = getattr(block, parent_name, None)
    return getattr(parent, linear_name, None) if parent is not None else None


def set_site(block: nn.Module, kind: str, module: nn.Module) -> None:
    parent_name, linear_name = SITES[kind]
    setattr(getattr(block, parent_name), linear_name, module)


def unwrap(module: nn.Module) -> nn.Linear:
    """The Linear behind a site module, gated or plain."""
    return getattr(module, "linear", module)


def site_linear(block: nn.Module, kind: str) -> nn.Linear:
    return unwrap(site(block, kind))


def iter_sites(model: nn.Module) -> Iterator[tuple[int, str, nn.Module]]:
    """(block index, kind, site module) for every site, in block then kind order."""
    for i, block in enumerate(vit_blocks(model)):
        for kind in GATE_KINDS:
            module = site(block, kind)
            if module is not None:
                yield i, kind, module


def site_sizes(model: nn.Module) -> dict[Key, int]:
    """The built input width of every site (the gate size of a gated model)."""
    return {(i, kind): unwrap(module).in_features for i, kind, module in iter_sites(model)}


def unbiased_sites(block: nn.Module) -> list[str]:
    """Module paths of the Linears in `block` that compaction needs biased but that have no bias."""
    return [site_name(kind) for kind in BIASED_KINDS if site_linear(block, kind).bias is None]


# -- widths ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockDims:
    """Widths of one block (timm, gated, masked or compact).

    `size`: the built input width of each site; `kept`: the non-zero gates of a gated (or masked)
    site, else its built width; `v_dims`: the built V dims per head (uneven only in compact blocks);
    `num_heads`: the built heads (a compact block drops heads with no V dims: `removed_heads`);
    `removed_sublayers`: "attn" / "mlp" when a compact block has removed that sublayer whole (no kept dims).
    """

    num_heads: int
    head_dim: int  # Q/K head dim (VTP never prunes Q/K)
    size: dict[str, int]
    kept: dict[str, int]
    v_dims: list[int]
    compact: bool
    removed_heads: int = 0
    removed_sublayers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDims:
    """Shape facts of a ViT; `num_heads`, `head_dim`, `mlp_hidden` and `qkv_bias` are block 0's."""

    embed_dim: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_hidden: int  # built hidden width (the full one unless the model is compact)
    qkv_bias: bool
    tokens: int | None  # sequence length: patches + prefix tokens
    img_size: list[int] | None
    in_chans: int
    num_classes: int
    blocks: list[BlockDims]


def _kept(module: nn.Module) -> int:
    gate = getattr(module, "gate", None)
    return int((gate != 0).sum()) if gate is not None else unwrap(module).in_features


def read_block_dims(block: nn.Module) -> BlockDims:
    attn = block.attn
    compact = hasattr(attn, "v_dims")
    v_dims = [int(v) for v in attn.v_dims] if compact else [int(attn.head_dim)] * int(attn.num_heads)
    return BlockDims(
        num_heads=int(attn.num_heads),
        head_dim=int(attn.head_dim),
        size={kind: site_linear(block, kind).in_features for kind in GATE_KINDS},
        kept={kind: _kept(site(block, kind)) for kind in GATE_KINDS},
        v_dims=v_dims,
        compact=compact,
        removed_heads=len(getattr(attn, "removed_heads", ())),
        removed_sublayers=tuple(p for p in _SUBLAYERS if getattr(getattr(block, p), "removed", False)),
    )


def read_dims(model: nn.Module) -> ModelDims:
    """The widths of a timm ViT, gated, masked or compact; UnsupportedModelError for other models."""
    blocks = vit_blocks(model)
    if not len(blocks) or not all(site(b, kind) is not None for b in blocks for kind in GATE_KINDS):
        raise UnsupportedModelError(f"{type(model).__name__}: not a ViT with attn.qkv/proj and mlp.fc1/fc2 blocks")
    dims = [read_block_dims(b) for b in blocks]
    pe = model.patch_embed
    n = getattr(pe, "num_patches", None)
    return ModelDims(
        embed_dim=int(model.embed_dim),
        depth=len(blocks),
        num_heads=dims[0].num_heads,
        head_dim=dims[0].head_dim,
        mlp_hidden=dims[0].size["mlp_hidden"],
        qkv_bias=site_linear(blocks[0], "qkv_in").bias is not None,
        tokens=int(n) + int(getattr(model, "num_prefix_tokens", 1)) if n else None,
        img_size=[int(v) for v in pe.img_size] if pe.img_size is not None else None,
        in_chans=int(pe.proj.in_channels),
        num_classes=int(getattr(model, "num_classes", 0)),
        blocks=dims,
    )
