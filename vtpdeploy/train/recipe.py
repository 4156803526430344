"""Recipes: typed, validated pipeline configuration. The defaults are the embedded quickstart."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ..data import DataSection, quickstart_data
from ..errors import RecipeError
from ..fileio import read_yaml
from ..prune.compat import omit_defaults


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field("vit_tiny_patch16_224", description="timm model name, e.g. deit_small_patch16_224")
    kwargs: dict[str, Any] = Field(
        description="timm.create_model kwargs, e.g. {num_classes: 2} (must match the checkpoint)",
        default_factory=lambda: {
            "img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 6,
            "mlp_ratio": 4.0, "num_classes": 10,
        }
    )
    checkpoint: Path | None = Field(None, description="local safetensors or torch state dict (weights_only)")
    pretrained: bool = Field(False, description="download timm weights (needs internet)")


class OptimSection(Section):
    epochs: int = Field(10, ge=0, description="epochs of this stage (0: skip training)")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (cosine schedule)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_epochs: int = Field(1, ge=0, description="linear lr warm-up epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    checkpoint_every: int = Field(1, gt=0, description="epochs between resume checkpoints")
    checkpoint_every_steps: int = Field(0, ge=0, description="also checkpoint every N optimizer steps (0: off)")
    clip_grad: float | None = Field(5.0, gt=0, description="gradient-norm clipping (null: off)")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep a timm EMA of the weights (e.g. 0.9998); "
                                                                  "the stage's result is the EMA model")


class TrainSection(OptimSection):
    """Pretraining from scratch, used only when the model has no checkpoint and no pretrained weights."""

    epochs: int = Field(50, ge=0)
    lr: float = Field(1e-3, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class SparsifySection(OptimSection):
    enabled: bool = Field(True, description="false: prune without sparse training (the prune-only baseline)")
    lam: float = Field(2e-3, ge=0, description="L1 weight λ on the gate scores (paper, ImageNet: 1e-4)")
    gate_lr: float | None = Field(1e-2, gt=0, description="lr for gates (null: same as lr)")
    epochs: int = Field(8, ge=0)
    lr: float = Field(2e-4, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    qk_dims: Literal["full", "tied"] = Field(
        "full", description="gate layout: full keeps every Q/K head dim (the paper); tied lets the attn_v gate of "
        "head h, dim j also scale query dim j, so plans remove Q, K and V dim j of a head together (not with RoPE "
        "or qk-norm; latency-guided plans refuse it)")

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        # Run dirs made before `qk_dims` existed keep their sparsify (and later) stage keys.
        return omit_defaults(handler(self), {"qk_dims": "full"})


class PruneSection(Section):
    rate: float = Field(0.4, description="share of gated dims to remove, in (0, 1)")
    scope: Literal["global", "per_kind", "per_layer"] = Field(
        "global", description="where the rate applies: one threshold for all gates, per gate kind, or per layer")
    importance: Literal["gate", "weight_l1"] = Field(
        "gate", description="rank dims by learned gate scores (VTP) or weight L1 norm (baseline)")
    atol: float = Field(1e-4, gt=0, description="compact vs hard-mask tolerance on logits")
    hardware: str = Field("cpu", description="width profile: none (paper-faithful), cpu, cpu-gather, cpu-nogather, "
                                             "gpu-fp16, gpu-int8, jetson-orin")
    granularity: Literal["dim", "head", "head+dim"] = Field(
        "dim", description="attention: prune V dims (dim), whole heads (head) or both (head+dim)")
    drop_sublayers: bool = Field(False, description="an attention whose every head falls under the threshold, or "
                                                    "an MLP whose every hidden unit does, is removed whole (with a "
                                                    "latency target, attentions go first: scores do not see Q/K)")
    target_macs: float | None = Field(None, gt=0, lt=1, description="MAC-guided plan: keep this share of the "
                                      "unpruned MACs, e.g. 0.5 for 2x fewer (rate is then searched, within 1 %)")
    target_latency_ms: float | None = Field(None, gt=0, description="latency-guided plan: meet this budget "
                                                                     "(rate is then ignored)")
    latency_backend: Literal["torch", "ort", "openvino"] = Field(
        "ort", description="latency-guided plan: runtime the latency table is measured on")
    latency_batch: int = Field(1, gt=0, description="latency-guided plan: batch it is measured at")
    latency_steps: int = Field(3, ge=1, le=10, description="latency-guided plan: measure-and-correct steps "
                               "(1 = trust the table)")
    latency_cache: Path | None = Field(None, description="latency table cache dir (default $VTPDEPLOY_LATENCY_CACHE, else "
                                          "~/.cache/vtpdeploy/latency)")

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        # Run dirs made before `granularity` / `drop_sublayers` / `target_macs` existed keep their prune stage key.
        return omit_defaults(handler(self), {"granularity": "dim", "drop_sublayers": False, "target_macs": None})

    @field_validator("hardware")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        from ..prune.profiles import profile_names

        if v not in profile_names():
            raise ValueError(f"unknown hardware profile {v!r}; choose one of {', '.join(profile_names())}")
        return v

    @field_validator("rate")
    @classmethod
    def _rate_in_range(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"rate must be in (0, 1), got {v}")
        return v


class FinetuneSection(OptimSection):
    epochs: int = Field(10, ge=0)
    lr: float = Field(5e-4, gt=0)
    distill: Literal["none", "soft", "hard"] = Field(
        "none", description="teacher = the unpruned model: soft KL, or DeiT-style hard labels")
    distill_alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    distill_tau: float = Field(2.0, gt=0, description="soft-distillation temperature")


def _export_config():
    from ..deploy.export.config import ExportConfig

    return ExportConfig


class OutputSection(Section):
    dir: Path = Field(Path("runs/quickstart"), description="run directory (the pipeline's --out overrides it)")


class Recipe(Section):
    seed: int = Field(0, description="seed of init, data order and splits")
    device: str = Field("cpu", description="cpu, cuda or cuda:N (checked before any work)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision on CUDA")
    log: list[Literal["csv", "tensorboard"]] = Field(
        default_factory=lambda: ["csv"], description="per-epoch logs of train/sparsify/finetune under logs/<stage>/: "
        "csv (timm-style summary.csv), tensorboard (needs the tensorboard extra); [] turns both and the per-epoch "
        "validation off. Not part of any stage key.")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=quickstart_data)
    train: TrainSection = Field(default_factory=TrainSection)
    sparsify: SparsifySection = Field(default_factory=SparsifySection)
    prune: PruneSection = Field(default_factory=PruneSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    export: _export_config() = Field(default_factory=_export_config())  # type: ignore[valid-type]
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _tied_qk_plans(self):
        if self.sparsify.qk_dims == "tied" and self.prune.target_latency_ms is not None:
            raise ValueError("sparsify.qk_dims tied cannot be planned by latency yet (prune.target_latency_ms: the "
                             "latency tables time full Q/K heads); use prune.rate or prune.target_macs")
        return self


def _format_error(exc: ValidationError, origin: str) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{loc}'{_did_you_mean(e['loc'])}; `vtpdeploy recipe` lists every key"
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{origin}: {loc + ': ' if loc else ''}{msg}{more}"


def _did_you_mean(loc: tuple) -> str:
    """' (did you mean 'prune.rate'?)' for the closest known key of the same section, else ''."""
    import difflib

    section: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        inner = getattr(field, "annotation", None) if field else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return ""
        section = inner
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1, cutoff=0.6)
    prefix = "".join(f"{p}." for p in loc[:-1])
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text!r}: '{p}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (None: the embedded quickstart), apply `--set` overrides, validate.

    Overrides apply to the resolved recipe, so `--set model.kwargs.depth=6` changes one kwarg and
    keeps the others.
    """
    origin = str(path) if path is not None else "quickstart"
    data = read_yaml(path) if path is not None else {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_error(exc, origin)) from None
    if not overrides:
        return recipe
    data = apply_overrides(recipe.model_dump(mode="json"), overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_error(exc, f"{origin} with --set")) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def section_json(recipe: Recipe, name: str) -> str:
    import json

    return json.dumps(getattr(recipe, name).model_dump(mode="json"), sort_keys=True)
