"""Prune plans: which dims of every gate are kept, chosen by ranking importance scores.

`plan(model, rate, ..., constraints=...)` is the one rate-driven planning path: a threshold τ over the
scores gives each gate a kept count, `widths.allocate` moves the counts to widths the constraints (a
hardware profile) allow while keeping the total, and `widths.gate_plans` picks the kept dims.

Kinds the constraints keep full (`keep_full`, e.g. the `cpu-nogather` profile) and sites behind a norm over
their own features (`sites.full_sites`) are left out of the ranking and the others remove their share too, so
the plan still removes `rate` of all gated dims.
Under `granularity="head"` a head's V dims are ranked as one unit: each scores its head's mean.
Under `shared_input_order` (the `cpu` profile) the qkv_in / mlp_in counts come from the same threshold, but
their kept dims are the top of one ranking shared by all blocks (`widths.gate_plans`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PlanError
from .gates import check_supported, iter_gates
from .schema import (
    GRANULARITIES,
    GatePlan,
    Granularity,
    Importance,
    PrunePlan,
    Scope,
    WidthConstraints,
)
from .sites import Key, full_site_keys, iter_sites, unwrap
from .widths import allocate, gate_plans

__all__ = ["GatePlan", "PrunePlan", "WidthConstraints", "apply_mask", "importance_scores", "plan"]


# -- scoring -----------------------------------------------------------------------------------
def importance_scores(model: nn.Module, importance: Importance = "gate") -> dict[Key, torch.Tensor]:
    """Per gate site, one non-negative score per input dim.

    `gate` ranks |â| (needs gates). `weight_l1` ranks the L1 norm of the reading Linear's input
    column (times |â| when gated), normalised by its per-site mean so one global τ is meaningful
    across layers of different scale.
    """
    scores: dict[Key, torch.Tensor] = {}
    if importance == "gate":
        gates = list(iter_gates(model))
        if not gates:
            raise PlanError("importance 'gate' needs a gated model (add_gates + sparse training)")
        for ref in gates:
            scores[(ref.block, ref.kind)] = ref.module.gate.detach().abs().float().cpu()
        return scores
    if importance != "weight_l1":
        raise PlanError(f"unknown importance {importance!r} (use 'gate' or 'weight_l1')")
    for i, kind, module in iter_sites(model):
        s = unwrap(module).weight.detach().abs().float().sum(dim=0).cpu()
        gate = getattr(module, "gate", None)
        if gate is not None:
            s = s * gate.detach().abs().float().cpu()
        scores[(i, kind)] = s / s.mean().clamp_min(1e-12)
    return scores


# -- planning ----------------------------------------------------------------------------------
def _scope_groups(keys, scope: Scope) -> dict[str, list[Key]]:
    groups: dict[str, list[Key]] = {}
    for key in keys:
        group = {"global": "global", "per_kind": key[1], "per_layer": f"blocks.{key[0]}.{key[1]}"}[scope]
        groups.setdefault(group, []).append(key)
    return groups


def _head_mean_scores(s: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Every V dim scores its head's mean: a head is ranked as one unit against single dims."""
    return s.reshape(num_heads, head_dim).mean(dim=1, keepdim=True).expand(num_heads, head_dim).reshape(-1).clone()


def _prunable_rate(scores: dict[Key, torch.Tensor], ranked: dict[Key, torch.Tensor], constraints: WidthConstraints,
                   rate: float) -> float:
    """The rate the ranked gates must lose so that `rate` of all gated dims goes."""
    total = sum(s.numel() for s in scores.values())
    free = sum(s.numel() for s in ranked.values())
    if not free:
        raise PlanError(f"profile {constraints.profile} keeps every gate full: nothing to prune")
    effective = rate * total / free
    if effective >= 1.0:
        full = ", ".join(constraints.keep_full) or "the sites behind a norm"
        raise PlanError(f"rate {rate} is too high for profile {constraints.profile}: it keeps "
                        f"{full} full, so at most {free / total:.0%} of the gated dims can go")
    return effective


def _threshold_counts(scores: dict[Key, torch.Tensor], groups: dict[str, list[Key]],
                      rate: float) -> tuple[dict[Key, int], dict[str, float]]:
    """Per gate, the dims left after removing the lowest-scoring `rate` of each group; and each group's τ."""
    kept_counts: dict[Key, int] = {}
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
    return kept_counts, thresholds


def plan(
    model: nn.Module,
    rate: float,
    scope: Scope = "global",
    importance: Importance = "gate",
    constraints: WidthConstraints | None = None,
    granularity: Granularity | None = None,
) -> PrunePlan:
    """Rank scores and drop the `rate` fraction of gated dims with the lowest scores.

    `global` uses one threshold τ over all gates (the paper), `per_kind` one τ per gate kind,
    `per_layer` removes `rate` of every gate. Each gate keeps at least its minimum width, so the
    realised rate can differ slightly from the requested one; the plan reports it. `constraints`
    (e.g. `profiles.constraints_for("cpu")`) restricts the widths; the default is paper-faithful.
    `granularity` (default: the constraints', `dim`) sets how attention is cut: `head` removes whole
    heads (ranked by their V score mass), `head+dim` whole heads and V dims of the live heads.
    """
    if not 0.0 < rate < 1.0:
        raise PlanError(f"prune rate must be in (0, 1), got {rate}")
    if scope not in ("global", "per_kind", "per_layer"):
        raise PlanError(f"unknown scope {scope!r} (use global, per_kind or per_layer)")
    check_supported(model)
    constraints = constraints or WidthConstraints()
    if granularity is not None:
        if granularity not in GRANULARITIES:
            raise PlanError(f"unknown granularity {granularity!r} (use {', '.join(GRANULARITIES)})")
        constraints = constraints.model_copy(update={"granularity": granularity}, deep=True)
    scores = ranking_scores(model, importance, constraints)
    attn = model.blocks[0].attn
    fixed = full_site_keys(model)
    ranked = {k: s for k, s in scores.items() if k[1] not in constraints.keep_full and k not in fixed}
    groups = _scope_groups(ranked, scope)
    counts, thresholds = _threshold_counts(ranked, groups, _prunable_rate(scores, ranked, constraints, rate)
                                           if len(ranked) < len(scores) else rate)
    counts.update({k: s.numel() for k, s in scores.items() if k not in ranked})
    counts = allocate(counts, scores, constraints, attn.num_heads, attn.head_dim, groups.values())
    counts.update({k: s.numel() for k, s in scores.items() if k not in ranked})
    result = PrunePlan(
        rate=rate,
        scope=scope,
        importance=importance,
        num_heads=attn.num_heads,
        head_dim=attn.head_dim,
        thresholds=thresholds,
        constraints=constraints,
        gates=gate_plans(scores, counts, constraints, attn.num_heads, attn.head_dim),
    )
    result.check_consistent()
    return result


def ranking_scores(model: nn.Module, importance: Importance, constraints: WidthConstraints) -> dict[Key, torch.Tensor]:
    """The scores `plan` ranks: `importance_scores`, with a head's mean for every V dim under head granularity."""
    scores = importance_scores(model, importance)
    attn = model.blocks[0].attn
    if constraints.granularity == "head":
        scores = {k: _head_mean_scores(s, attn.num_heads, attn.head_dim) if k[1] == "attn_v" else s
                  for k, s in scores.items()}
    return scores


def with_counts(p: PrunePlan, scores: dict[Key, torch.Tensor], counts: dict[Key, int]) -> PrunePlan:
    """`p` with other kept counts per gate (each a feasible count of its constraints), the dims re-selected."""
    gates = gate_plans(scores, counts, p.constraints, p.num_heads, p.head_dim)
    result = p.model_copy(update={"gates": gates}, deep=True)
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
