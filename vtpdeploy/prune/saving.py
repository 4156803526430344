"""save/load: weights as safetensors, architecture as JSON. No pickle, no network."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_text
from .arch import ArchSpec, describe


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def save(model: nn.Module, path: str | Path) -> tuple[Path, Path]:
    """Write `path.safetensors` (weights) and `path.json` (architecture); returns both paths."""
    from safetensors.torch import save_file

    weights, arch = _paths(path)
    spec = describe(model)
    check_rebuildable(model, spec)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "vtpdeploy-model"})
    atomic_write_text(arch, spec.model_dump_json(indent=1))
    return weights, arch


def _structure(model: nn.Module) -> list[tuple[str, str, str]]:
    return [(name, type(m).__name__, m.extra_repr()) for name, m in model.named_modules()]


def check_rebuildable(model: nn.Module, spec: ArchSpec) -> None:
    """Refuse to save what `load` would rebuild differently (e.g. a non-default activation)."""
    from ..errors import UnsupportedModelError
    from .compact import build

    with torch.device("meta"):
        rebuilt = build(spec)
    for mine, theirs in zip(_structure(model), _structure(rebuilt)):
        if mine != theirs:
            raise UnsupportedModelError(
                f"cannot record the architecture: module '{mine[0]}' is {mine[1]}({mine[2]}) but would be "
                f"rebuilt as {theirs[1]}({theirs[2]})")
    if len(_structure(model)) != len(_structure(rebuilt)):
        raise UnsupportedModelError("cannot record the architecture: module trees differ")


def read_spec(path: str | Path) -> ArchSpec:
    _, arch = _paths(path)
    try:
        return ArchSpec.model_validate(json.loads(arch.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{arch}: architecture file not found") from None
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0]
        raise CheckpointError(f"{arch}: not a vtpdeploy architecture file ({msg})") from None


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the module saved by `save(model, path)`, in eval mode."""
    from .compact import build

    weights, _ = _paths(path)
    spec = read_spec(path)
    model = build(spec)
    load_weights(model, weights)
    return model.to(device).eval()


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a safetensors file (or a `weights_only` torch state dict) strictly into `model`."""
    state = read_state_dict(weights)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{weights}: does not fit the model ({mismatch}); check model.name and model.kwargs "
                              "(e.g. num_classes, img_size) against the checkpoint")
    model.load_state_dict(state, strict=True)


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], shown: int = 2) -> str:
    """Whole-word summary of missing keys, unexpected keys and shape mismatches ('' when they fit)."""
    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = [f"{len(missing)} missing: {names(missing)}" if missing else "",
             f"{len(unexpected)} unexpected: {names(unexpected)}" if unexpected else "",
             f"{len(shapes)} shape mismatch(es): {names(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            first = "contains pickled code or objects; refused (weights_only=True)"
        raise CheckpointError(f"{path}: unreadable checkpoint: {first}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}
