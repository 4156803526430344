"""vtpdeploy: VTP pruning of timm Vision Transformers, compiled into real, smaller models."""

from .errors import (
    CheckpointError,
    DataError,
    NumericalMismatchError,
    PlanError,
    RecipeError,
    UnsupportedModelError,
    VtpError,
)
from .prune.compact import compact
from .prune.counting import count
from .prune.gates import add_gates, iter_gates, l1_penalty
from .prune.plan import apply_mask, plan
from .prune.saving import load, save
from .prune.schema import PrunePlan, WidthConstraints
from .prune.sites import GATE_KINDS

__version__ = "0.1.0"

__all__ = [
    "GATE_KINDS",
    "CheckpointError",
    "DataError",
    "NumericalMismatchError",
    "PlanError",
    "PrunePlan",
    "RecipeError",
    "UnsupportedModelError",
    "VtpError",
    "WidthConstraints",
    "add_gates",
    "apply_mask",
    "compact",
    "count",
    "iter_gates",
    "l1_penalty",
    "load",
    "plan",
    "save",
]
