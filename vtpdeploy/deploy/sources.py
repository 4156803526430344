"""Resolving what a command was pointed at: a run dir, a saved model, or a timm model name.

Run dir layout (written by `vtpdeploy pipeline`):
    recipe.yaml, manifest.json, plan.json, report.json
    model.safetensors + model.json         the compact, fine-tuned model
    unpruned.safetensors + unpruned.json   the trained model before pruning (bench baseline)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, VtpError


@dataclass
class ModelSource:
    model: nn.Module
    label: str
    data_config: dict[str, Any]
    run_dir: Path | None = None
    saved_path: Path | None = None  # `dir/model` base path when loaded from disk
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.data_config["input_size"])


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def saved_base(path: str | Path) -> Path | None:
    """`dir/model` if `path` names a saved model (with or without suffix), else None."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    if base.with_name(base.name + ".json").is_file() and base.with_name(base.name + ".safetensors").is_file():
        return base
    return None


def load_source(source: str | Path | None = None, timm_name: str | None = None, which: str = "model") -> ModelSource:
    """Load a model from a run dir (`which`: model | unpruned), a saved model, or a timm name."""
    from ..prune.arch import create_timm, describe
    from ..prune.saving import load, read_spec

    if timm_name:
        model = create_timm(timm_name).eval()
        return ModelSource(model, timm_name, describe(model).data_config)
    if source is None:
        raise VtpError("give a SOURCE (run dir or saved model) or --model TIMM_NAME")
    path = Path(source)
    if is_run_dir(path):
        base = path / which
        if saved_base(base) is None:
            raise CheckpointError(f"{path}: run dir has no finished {which}.safetensors/{which}.json")
        spec = read_spec(base)
        return ModelSource(load(base), f"{path.name}/{which}", spec.data_config, run_dir=path, saved_path=base)
    base = saved_base(path)
    if base is not None:
        spec = read_spec(base)
        return ModelSource(load(base), base.name, spec.data_config, saved_path=base)
    if not path.exists():
        raise VtpError(f"{path}: no such run dir or saved model")
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
        raise VtpError(f"{path}: a raw checkpoint, not a run dir or saved model; prune it first: set model.checkpoint "
                       f"to it in recipes/own_model.yaml and run `vtpdeploy pipeline recipes/own_model.yaml`, then "
                       "export the run dir")
    raise VtpError(f"{path}: not a run dir (manifest.json) nor a saved model (X.safetensors + X.json); give the "
                   "--out of `vtpdeploy pipeline`, or --model TIMM_NAME")
