"""Architecture records: how to rebuild a timm ViT (name + kwargs) without pickle or network."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer
from torch import nn

from ..errors import UnsupportedModelError
from .compat import omit_defaults
from .sites import image_chans, read_dims, site, unwrap


class BlockWidths(BaseModel):
    """Widths of one compact block: kept qkv inputs, V dims per head, kept fc1 inputs, hidden width, and the Q/K
    dims per head (None: the source head dim in every live head; tied Q/K: the V dims)."""

    model_config = ConfigDict(extra="forbid")

    qkv_in: int
    v_dims: list[int]
    mlp_in: int
    mlp_hidden: int
    qk_dims: list[int] | None = None

    @model_serializer(mode="wrap")
    def _omit_full_qk(self, handler):
        # Models saved before qk_dims existed keep byte-identical architecture files.
        return omit_defaults(handler(self), {"qk_dims": None})


class ArchSpec(BaseModel):
    """Enough to rebuild the module skeleton; weights come from safetensors."""

    model_config = ConfigDict(extra="forbid")

    format: str = "vtpdeploy-model"
    version: int = 1
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    gated: bool = False
    blocks: list[BlockWidths] | None = None  # None: the original timm blocks
    data_config: dict[str, Any] = Field(default_factory=dict)
    # True: the residual stream is reordered so every block's kept LayerNorm outputs are a prefix (sliced).
    input_slices: bool = False
    # The gate layout of a gated model (`gates.add_gates`): "tied" when the attn_v gates also scale Q.
    qk_dims: Literal["full", "tied"] = "full"

    @model_serializer(mode="wrap")
    def _omit_default_slices(self, handler):
        # Models saved before input_slices / qk_dims existed keep byte-identical architecture files.
        return omit_defaults(handler(self), {"input_slices": False, "qk_dims": "full"})


def create_timm(name: str, kwargs: dict[str, Any] | None = None, pretrained: bool = False) -> nn.Module:
    """timm.create_model with a one-line error for unknown names or bad kwargs."""
    import timm

    if not timm.is_model(name):
        raise UnsupportedModelError(f"unknown timm model {name!r}")
    try:
        model = timm.create_model(name, pretrained=pretrained, **(kwargs or {}))
        model.vtp_kwargs = dict(kwargs or {})  # what `describe` records for models whose kwargs cannot be read back
        return model
    except UnsupportedModelError:
        raise
    except Exception as exc:  # timm raises assorted errors for bad kwargs
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnsupportedModelError(f"cannot create {name!r} with {kwargs or {}}: {msg}") from None


def infer_kwargs(model: nn.Module) -> dict[str, Any]:
    """The create_model kwargs that pin this model's shapes: read back from a VisionTransformer (plus any other
    kwargs `create_timm` was given); for an Eva, the kwargs `create_timm` was given."""
    from timm.layers import LayerScale

    from .families import block_map, label

    dims = read_dims(model)
    recorded = getattr(model, "vtp_kwargs", None)
    if block_map(model) == "eva":
        if recorded is None:
            raise UnsupportedModelError(f"{label(model)}: create it with vtpdeploy.prune.arch.create_timm so its "
                                        "kwargs can be recorded (an Eva's cannot be read back)")
        return dict(recorded)
    blk = model.blocks[0]
    kwargs = {
        "img_size": dims.img_size,
        "patch_size": list(model.patch_embed.patch_size),
        "in_chans": dims.in_chans,
        "num_classes": model.num_classes,
        "global_pool": model.global_pool,
        "embed_dim": dims.embed_dim,
        "depth": dims.depth,
        "num_heads": dims.num_heads,
        "mlp_ratio": unwrap(site(blk, "mlp_in")).out_features / dims.embed_dim,  # fc1 width (both halves of a GLU)
        "qkv_bias": dims.qkv_bias,
        "init_values": 1e-5 if isinstance(blk.ls1, LayerScale) else None,
        "class_token": model.cls_token is not None,
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "fc_norm": not isinstance(model.fc_norm, nn.Identity),
        "pre_norm": not isinstance(model.norm_pre, nn.Identity),
        "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False)),
    }
    act = _act_name(blk.mlp.act)
    if act is not None:
        kwargs["act_layer"] = act
    if not isinstance(blk.attn.q_norm, nn.Identity):
        kwargs["qk_norm"] = True
    if unwrap(site(blk, "attn_v")).bias is None:
        kwargs["proj_bias"] = False
    return {**kwargs, **{k: v for k, v in (recorded or {}).items() if k not in kwargs}}


def _act_name(act: nn.Module) -> str | None:
    """timm's name for a non-default MLP activation (None for plain GELU, the ViT default)."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else None
    return {nn.ReLU: "relu", nn.SiLU: "silu", nn.Mish: "mish"}.get(type(act))


def describe(model: nn.Module) -> ArchSpec:
    """ArchSpec for a timm ViT created with timm.create_model (gated or plain)."""
    from timm.data import resolve_data_config

    from .gates import iter_gates, qk_layout

    gated = any(True for _ in iter_gates(model))
    known = getattr(model, "vtp_spec", None)
    if isinstance(known, ArchSpec):
        return known.model_copy(update={"gated": gated, "qk_dims": qk_layout(model)}, deep=True)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no timm architecture name; create it with timm.create_model"
        )
    data_config = resolve_data_config(model=model)
    img = model.patch_embed.img_size
    if img is not None:  # pretrained_cfg keeps the name's default size even when img_size is overridden
        data_config["input_size"] = (image_chans(model), int(img[0]), int(img[1]))
    return ArchSpec(
        name=name,
        kwargs=infer_kwargs(model),
        gated=gated,
        qk_dims=qk_layout(model),
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    )
