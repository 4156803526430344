"""Plan records: width constraints, the kept dims of every gate, and their JSON round trip.

Kept apart from the algorithms (`plan`, `widths`, `profiles`, and `latency.planner` above them), which all produce or
read these records, so none of them imports another just for the types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer
from torch import nn

from ..errors import PlanError
from ..fileio import atomic_write_text
from .compat import omit_defaults
from .sites import GATE_KINDS, SITES, SUBLAYER_KINDS, site_sizes

Scope = Literal["global", "per_kind", "per_layer"]
Importance = Literal["gate", "weight_l1"]
Granularity = Literal["dim", "head", "head+dim"]
GRANULARITIES: tuple[str, ...] = ("dim", "head", "head+dim")


class WidthConstraints(BaseModel):
    """Width rules a plan must satisfy. `profile: none` is the paper-faithful plan (no rounding)."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "none"
    round_to: dict[str, int] = Field(default_factory=dict, description="kind -> kept count multiple")
    head_aligned_v: bool = Field(False, description="every head of a block keeps the same V dim count")
    v_head_dims: list[int] | None = Field(None, description="allowed per-head V dims (fused-MHA limits)")
    min_width: dict[str, int] = Field(default_factory=dict, description="kind -> minimum kept count")
    keep_full: list[str] = Field(
        default_factory=list,
        description="kinds never pruned; their share of the rate goes to the other kinds (qkv_in + mlp_in: "
                    "the compact model has no input gathers)")
    granularity: Granularity = Field(
        "dim", description="attn_v: dim (per V dim), head (whole heads only), head+dim (whole heads and V dims)")
    shared_input_order: bool = Field(
        False, description="qkv_in / mlp_in keep the top dims of one ranking shared by all blocks, so their kept "
                           "sets are nested and the compact model slices the LayerNorm output instead of gathering")
    drop_sublayers: bool = Field(
        False, description="attn_v and mlp_hidden may keep no dims: a block's attention (every head dead) or MLP "
                           "is then removed whole, with its LayerNorm and fixed-cost ops; its output is the "
                           "constant proj / fc2 bias")

    @field_validator("keep_full")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in GATE_KINDS]
        if bad:
            raise ValueError(f"unknown gate kind {bad[0]!r} in keep_full; kinds: {', '.join(GATE_KINDS)}")
        return sorted(set(v), key=GATE_KINDS.index)

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        # Plans written before keep_full/granularity/shared_input_order/drop_sublayers existed stay byte-identical.
        return omit_defaults(handler(self), {"shared_input_order": False, "drop_sublayers": False,
                                             "keep_full": None, "granularity": "dim"})

    def min_for(self, kind: str) -> int:
        return max(1, self.min_width.get(kind, 1))

    def min_heads(self, head_dim: int) -> int:
        """Live heads a block keeps at least under head granularity (from `min_width["attn_v"]`)."""
        return max(1, -(-self.min_for("attn_v") // head_dim))


class GatePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block: int
    kind: str
    size: int
    kept: list[int]

    @property
    def name(self) -> str:
        return f"blocks.{self.block}.{self.kind}"


class PrunePlan(BaseModel):
    """The kept dims of every gate. JSON round-trips through `save`/`load`."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["vtpdeploy-plan"] = "vtpdeploy-plan"
    version: int = 1
    rate: float
    scope: Scope
    importance: Importance
    num_heads: int
    head_dim: int
    thresholds: dict[str, float] = Field(default_factory=dict, description="scope key -> tau")
    constraints: WidthConstraints = Field(default_factory=WidthConstraints)
    gates: list[GatePlan]

    # -- queries -------------------------------------------------------------------------
    def gate(self, block: int, kind: str) -> GatePlan:
        for g in self.gates:
            if g.block == block and g.kind == kind:
                return g
        raise PlanError(f"plan has no gate blocks.{block}.{kind}")

    @property
    def num_blocks(self) -> int:
        return 1 + max(g.block for g in self.gates)

    @property
    def total_dims(self) -> int:
        return sum(g.size for g in self.gates)

    @property
    def kept_dims(self) -> int:
        return sum(len(g.kept) for g in self.gates)

    @property
    def realised_rate(self) -> float:
        return 1.0 - self.kept_dims / self.total_dims

    def live_heads(self, block: int) -> int:
        """Heads of `block` that keep at least one V dim (the others are removed whole by compaction)."""
        return sum(1 for v in self.v_dims_per_head(block) if v)

    def v_dims_per_head(self, block: int) -> list[int]:
        kept = self.gate(block, "attn_v").kept
        counts = [0] * self.num_heads
        for idx in kept:
            counts[idx // self.head_dim] += 1
        return counts

    def removed_sublayers(self) -> dict[str, list[int]]:
        """The blocks whose attention ("attn": no V dim) or MLP ("mlp": no hidden dim) compaction removes whole."""
        return {SITES[kind][0]: [b for b in range(self.num_blocks) if not self.gate(b, kind).kept]
                for kind in SUBLAYER_KINDS}

    def summary(self) -> dict:
        """Per-block kept counts per gate kind, per-kind totals, removed sublayers and the realised rate."""
        blocks = []
        for b in range(self.num_blocks):
            row = {"block": b}
            for kind in GATE_KINDS:
                g = self.gate(b, kind)
                row[kind] = len(g.kept)
                row[f"{kind}_size"] = g.size
            row["v_dims_per_head"] = self.v_dims_per_head(b)
            row["live_heads"] = self.live_heads(b)
            blocks.append(row)
        per_kind = {}
        for kind in GATE_KINDS:
            gs = [g for g in self.gates if g.kind == kind]
            per_kind[kind] = {"kept": sum(len(g.kept) for g in gs), "total": sum(g.size for g in gs)}
        return {
            "requested_rate": self.rate,
            "realised_rate": round(self.realised_rate, 6),
            "scope": self.scope,
            "importance": self.importance,
            "profile": self.constraints.profile,
            "granularity": self.constraints.granularity,
            "kept_dims": self.kept_dims,
            "total_dims": self.total_dims,
            "per_kind": per_kind,
            "removed_sublayers": self.removed_sublayers(),
            "blocks": blocks,
        }

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PrunePlan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"{path}: plan file not found") from None
        except (OSError, ValueError) as exc:
            raise PlanError(f"{path}: not a readable JSON plan ({exc})") from None
        try:
            plan = cls.model_validate(data)
        except Exception as exc:  # pydantic.ValidationError, one line
            raise PlanError(f"{path}: invalid plan ({_first_error(exc)})") from None
        plan.check_consistent()
        return plan

    def check_consistent(self) -> None:
        for g in self.gates:
            if g.kind not in GATE_KINDS:
                raise PlanError(f"{g.name}: unknown gate kind")
            if not g.kept and g.kind not in SUBLAYER_KINDS:
                raise PlanError(f"{g.name}: kept dims must be non-empty (only {' and '.join(SUBLAYER_KINDS)} may "
                                "keep none: the sublayer is then removed)")
            if sorted(set(g.kept)) != g.kept or (g.kept and (g.kept[0] < 0 or g.kept[-1] >= g.size)):
                raise PlanError(f"{g.name}: kept dims must be sorted, unique and < {g.size}")

    def check_fits(self, model: nn.Module) -> None:
        """Raise PlanError unless every gate of the plan matches the model's widths."""
        sizes = site_sizes(model)
        planned = {(g.block, g.kind): g.size for g in self.gates}
        if planned != sizes:
            missing = sorted(set(sizes) ^ set(planned))
            wrong = [k for k in sizes if k in planned and planned[k] != sizes[k]]
            detail = f"sites {missing[:3]}" if missing else f"widths at {wrong[:3]}"
            raise PlanError(f"plan does not fit the model ({detail})")


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc).splitlines()[0]
