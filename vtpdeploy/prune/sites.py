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

The same names hold in timm's Eva blocks (EVA-02, DINOv3, RoPE ViTs, Perception Encoder) once `families.prepare`
has fused their separate q/k/v projections into one `attn.qkv`. A SwiGLU MLP reads its input with two Linears
(`fc1_g`, `fc1_x`): the `mlp_in` site is `fc1_x`, and `fc1_g` shares its gate (`gates.SharedGateLinear`).
Under the tied Q/K layout (`gates.add_gates(model, qk_dims="tied")`) the `attn_v` gate also scales the Q rows of the
qkv output (same head, same dim): no new kind, the plan's attn_v dims are Q/K/V dims (`BlockDims.qk_dims`).
A site behind a norm over its own features (attention scale-norm, the MLP inner norm) is gated after the norm
and kept full by every plan (`full_sites`): removing a feature there would change the norm's statistics.

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

# Module names a site may have instead of SITES' (separate q/k/v before `families.prepare` fuses them; SwiGLU).
_ALIASES: dict[str, tuple[str, ...]] = {"qkv": ("qkv", "q_proj"), "fc1": ("fc1", "fc1_x")}

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


def _site_attr(block: nn.Module, kind: str) -> tuple[nn.Module | None, str | None]:
    parent_name, linear_name = SITES[kind]
    parent = getattr(block, parent_name, None)
    for name in _ALIASES.get(linear_name, (linear_name,)):
        if parent is not None and getattr(parent, name, None) is not None:
            return parent, name
    return parent, None


def site(block: nn.Module, kind: str) -> nn.Module | None:
    """The module at a gate site of `block`: a Linear, a GatedLinear, or None when the block has no such site."""
    parent, name = _site_attr(block, kind)
    return getattr(parent, name) if name is not None else None


def set_site(block: nn.Module, kind: str, module: nn.Module) -> None:
    parent, name = _site_attr(block, kind)
    setattr(parent, name, module)


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


def full_sites(block: nn.Module) -> tuple[str, ...]:
    """The kinds of `block` that every plan keeps full: the attention output under a scale-norm (it normalises
    over all heads' V dims) and the MLP hidden units under an inner norm."""
    norms = {"attn_v": getattr(block.attn, "norm", None), "mlp_hidden": getattr(block.mlp, "norm", None)}
    return tuple(k for k, norm in norms.items() if norm is not None and not isinstance(norm, nn.Identity))


def full_site_keys(model: nn.Module) -> set[Key]:
    """(block, kind) of every site of `model` that plans keep full (`full_sites`)."""
    return {(i, kind) for i, block in enumerate(vit_blocks(model)) for kind in full_sites(block)}


def image_chans(model: nn.Module) -> int:
    """The channels of the model's input image: `in_chans` (timm ViT and Eva keep it), else the data config.

    Never the patch projection's input: behind a hybrid (CNN) stem that is the backbone's output."""
    chans = getattr(model, "in_chans", None)
    if chans is None:
        spec = getattr(model, "vtp_spec", None)
        size = (spec.data_config if spec is not None else {}).get("input_size") or \
            (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if not size:
            raise UnsupportedModelError(f"{type(model).__name__}: cannot tell its input channels (no in_chans)")
        chans = size[0]
    return int(chans)


# -- widths ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockDims:
    """Widths of one block (timm, gated, masked or compact).

    `size`: the built input width of each site; `kept`: the non-zero gates of a gated (or masked)
    site, else its built width; `v_dims`: the built V dims per head (uneven only in compact blocks);
    `qk_dims`: the built Q/K dims per head (`head_dim` each, unless a compact block has tied Q/K dims);
    `num_heads`: the built heads (a compact block drops heads with no V dims: `removed_heads`);
    `removed_sublayers`: "attn" / "mlp" when a compact block has removed that sublayer whole (no kept dims).
    """

    num_heads: int
    head_dim: int  # the source's head dim (Q/K keep it unless tied: `qk_dims`)
    size: dict[str, int]
    kept: dict[str, int]
    v_dims: list[int]
    compact: bool
    removed_heads: int = 0
    removed_sublayers: tuple[str, ...] = ()
    qk_dims: tuple[int, ...] = ()


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
        qk_dims=tuple(int(q) for q in getattr(attn, "qk_dims", None) or [attn.head_dim] * len(v_dims)),
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
        in_chans=image_chans(model),
        num_classes=int(getattr(model, "num_classes", 0)),
        blocks=dims,
    )
