"""Model and data setup before any stage runs: the recipe's timm model, its micro-batching, the cheap checks."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..data import data_config_for, num_classes_of, validate_data
from ..errors import CheckpointError, RecipeError
from ..prune.arch import create_timm, describe
from ..prune.gates import check_supported, check_tied_qk
from ..prune.saving import load_weights
from .epoch_log import require_tensorboard
from .checkpoints import seed_everything
from .recipe import Recipe


def create_model(recipe: Recipe) -> nn.Module:
    """The recipe's timm model, with the recipe's preprocessing recorded in its data config."""
    m = recipe.model
    seed_everything(recipe.seed)  # reproducible init, identical on every rank
    model = create_timm(m.name, m.kwargs, pretrained=m.pretrained)
    check_supported(model)
    if recipe.sparsify.qk_dims == "tied":
        check_tied_qk(model)  # refused before training, not at the sparsify stage
    cfg = data_config_for(model_data_config(model), recipe.data)
    model.pretrained_cfg = {**(model.pretrained_cfg or {}), **{k: cfg[k] for k in ("interpolation", "crop_pct", "mean", "std")}}
    if m.checkpoint is not None:
        load_weights(model, m.checkpoint)
    return model


def model_data_config(model: nn.Module) -> dict:
    """The model's own preprocessing (input size, interpolation, crop, mean, std)."""
    return describe(model).data_config


def micro_batching(recipe: Recipe, world_size: int) -> tuple[int, int]:
    """Split the global batch into per-rank micro-batches and accumulation steps (exactly)."""
    global_bs = recipe.data.batch_size
    micro = recipe.data.micro_batch_size or global_bs // world_size
    if micro < 1 or global_bs % (micro * world_size):
        raise RecipeError(f"data.batch_size {global_bs} is not a multiple of micro_batch_size {micro} x "
                          f"world size {world_size}")
    return micro, global_bs // (micro * world_size)


def validate_inputs(recipe: Recipe, world_size: int = 1) -> nn.Module:
    """Everything that can be checked before expensive work; returns the created model."""
    validate_data(recipe.data)
    micro_batching(recipe, world_size)
    if "tensorboard" in recipe.log:
        require_tensorboard()
    if recipe.model.checkpoint is not None and not Path(recipe.model.checkpoint).is_file():
        raise CheckpointError(f"model.checkpoint: {recipe.model.checkpoint} not found")
    model = create_model(recipe)
    classes = num_classes_of(recipe.data)
    if classes is not None and model.num_classes != classes:
        raise RecipeError(f"model.kwargs.num_classes is {model.num_classes} but data has {classes} classes")
    return model
