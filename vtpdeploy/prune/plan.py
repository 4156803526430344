"""Prune plans: which dims of every gate are kept, chosen by ranking importance scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import PlanError
from ..fileio import atomic_write_text
from .gates import _GATE_SITES, GATE_KINDS, GatedLinear, check_supported, iter_gates

Scope = Literal["global", "per_kind", "per_layer"]
Importance = Literal["gate", "weight_l1"]


class WidthConstraints(BaseModel):
    """Width rules a plan must satisfy. `profile: none` is the paper-faithful plan (no rounding)."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "none"
    round_to: dict[str, int] = Field(default_factory=dict, description="kind -> kept count multiple")
    head_aligned_v: bool = Field(False, description="every head of a block keeps the same V dim count")
    v_head_dims: list[int] | None = Field(None, description="allowed per-head V dims (fused-MHA limits)")
    min_width: dict[str, int] = Field(default_factory=dict, description="kind -> minimum kept count")

    def min_for(self, kind: str) -> int:
        return max(1, self.min_width.get(kind, 1))


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

    def v_dims_per_head(self, block: int) -> list[int]:
        kept = self.gate(block, "attn_v").kept
        counts = [0] * self.num_heads
        for idx in kept:
            counts[idx // self.head_dim] += 1
        return counts

    def summary(self) -> dict:
        """Per-block kept counts per gate kind, per-kind totals and the realised rate."""
        blocks = []
        for b in range(self.num_blocks):
            row = {"block": b}
            for kind in GATE_KINDS:
                g = self.gate(b, kind)
                row[kind] = len(g.kept)
                row[f"{kind}_size"] = g.size
            row["v_dims_per_head"] = self.v_dims_per_head(b)
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
            "kept_dims": self.kept_dims,
            "total_dims": self.total_dims,
            "per_kind": per_kind,
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
            if not g.kept or sorted(set(g.kept)) != g.kept or g.kept[0] < 0 or g.kept[-1] >= g.size:
                raise PlanError(f"{g.name}: kept dims must be sorted, unique, non-empty and < {g.size}")

    def check_fits(self, model: nn.Module) -> None:
        """Raise PlanError unless every gate of the plan matches the model's widths."""
        sizes = _site_sizes(model)
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


def _site_sizes(model: nn.Module) -> dict[tuple[int, str], int]:
    sizes = {}
    for i, block in enumerate(model.blocks):
        for kind, (parent, linear) in _GATE_SITES.items():
            mod = getattr(getattr(block, parent), linear)
            lin = mod.linear if isinstance(mod, GatedLinear) else mod
            sizes[(i, kind)] = lin.in_features
    return sizes


# -- scoring -----------------------------------------------------------------------------------
def importance_scores(model: nn.Module, importance: Importance = "gate") -> dict[tuple[int, str], torch.Tensor]:
    """Per gate site, one non-negative score per input dim.

    `gate` ranks |â| (needs gates). `weight_l1` ranks the L1 norm of the reading Linear's input
    column (times |â| when gated), normalised by its per-site mean so one global τ is meaningful
    across layers of different scale.
    """
    scores: dict[tuple[int, str], torch.Tensor] = {}
    gates = {(r.block, r.kind): r.module for r in iter_gates(model)}
    if importance == "gate":
        if not gates:
            raise PlanError("importance 'gate' needs a gated model (add_gates + sparse training)")
        for key, mod in gates.items():
            scores[key] = mod.gate.detach().abs().float().cpu()
        return scores
    if importance != "weight_l1":
        raise PlanError(f"unknown importance {importance!r} (use 'gate' or 'weight_l1')")
    for i, block in enumerate(model.blocks):
        for kind, (parent, linear) in _GATE_SITES.items():
            mod = getattr(getattr(block, parent), linear)
            lin = mod.linear if isinstance(mod, GatedLinear) else mod
            s = lin.weight.detach().abs().float().sum(dim=0).cpu()
            if isinstance(mod, GatedLinear):
                s = s * mod.gate.detach().abs().float().cpu()
            scores[(i, kind)] = s / s.mean().clamp_min(1e-12)
    return scores


# -- planning ----------------------------------------------------------------------------------
def plan(
    model: nn.Module,
    rate: float,
    scope: Scope = "global",
    importance: Importance = "gate",
    constraints: WidthConstraints | None = None,
) -> PrunePlan:
    """Rank scores and drop the `rate` fraction of gated dims with the lowest scores.

    `global` uses one threshold τ over all gates (the paper), `per_kind` one τ per gate kind,
    `per_layer` removes `rate` of every gate. Each gate keeps at least its minimum width, so the
    realised rate can differ slightly from the requested one; the plan reports it.
    """
    if not 0.0 < rate < 1.0:
        raise PlanError(f"prune rate must be in (0, 1), got {rate}")
    if scope not in ("global", "per_kind", "per_layer"):
        raise PlanError(f"unknown scope {scope!r} (use global, per_kind or per_layer)")
    check_supported(model)
    constraints = constraints or WidthConstraints()
    scores = importance_scores(model, importance)
    attn = model.blocks[0].attn

    groups: dict[str, list[tuple[int, str]]] = {}
    for key in scores:
        group = {"global": "global", "per_kind": key[1], "per_layer": f"blocks.{key[0]}.{key[1]}"}[scope]
        groups.setdefault(group, []).append(key)

    kept_counts: dict[tuple[int, str], int] = {}
    thresholds: dict[str, float] = {}
    for group, keys in groups.items():
        flat = torch.cat([scores[k] for k in keys])
        n_remove = int(round(rate * flat.numel()))
        if n_remove == 0:
            thresholds[group] = float(flat.min())
            for k in keys:
                kept_counts[k] = scores[k].numel()
            continue
        order = torch.argsort(flat, stable=True)
        removed = torch.zeros(flat.numel(), dtype=torch.bool)
        removed[order[:n_remove]] = True
        thresholds[group] = float(flat[order[n_remove - 1]])
        offset = 0
        for k in keys:
            n = scores[k].numel()
            kept_counts[k] = int((~removed[offset : offset + n]).sum())
            offset += n

    from .widths import allocate, select_kept

    kept_counts = allocate(kept_counts, scores, constraints, attn.num_heads, attn.head_dim, groups.values())

    gate_plans = []
    for (block, kind), s in sorted(scores.items(), key=lambda kv: (kv[0][0], GATE_KINDS.index(kv[0][1]))):
        kept = select_kept(s, kept_counts[(block, kind)], kind, constraints, attn.num_heads, attn.head_dim)
        gate_plans.append(GatePlan(block=block, kind=kind, size=s.numel(), kept=kept))
    result = PrunePlan(
        rate=rate,
        scope=scope,
        importance=importance,
        num_heads=attn.num_heads,
        head_dim=attn.head_dim,
        thresholds=thresholds,
        constraints=constraints,
        gates=gate_plans,
    )
    result.check_consistent()
    return result


def apply_mask(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Zero the gates of pruned dims in place: the reference hard-mask model."""
    gates = {(r.block, r.kind): r.module for r in iter_gates(model)}
    if not gates:
        raise PlanError("apply_mask needs a gated model (call add_gates first)")
    plan.check_fits(model)
    with torch.no_grad():
        for g in plan.gates:
            gate = gates[(g.block, g.kind)].gate
            mask = torch.zeros_like(gate, dtype=torch.bool)
            mask[torch.tensor(g.kept, dtype=torch.long, device=gate.device)] = True
            gate.masked_fill_(~mask, 0.0)
    return model
