"""MAC-guided plans: the rate that makes the compact model keep a given share of the unpruned MACs.

Users think in cost ("2x fewer MACs"), the threshold thinks in gated dims; width rounding and unequal MACs per dim
(an MLP hidden unit costs 2 x embed MACs per token, a V dim less, a tied Q/K+V dim more) make the map between the two
uneven. Bisection on the rate, counting each candidate's compact model, finds it; the plan records the share it
reached. Where the rate's plans step over the 1 % window (coarse widths, e.g. 32 hidden units of a small model), up
to three one-width moves of different gates from the closest plan close the gap (`_step_widths`). Candidates are
counted on compact skeletons without weight init (`compact_macs`): the same count, a fraction of the time.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..errors import PlanError
from .arch import create_timm, describe
from .compact import build, compact_spec
from .counting import count
from .plan import plan, ranking_scores, with_counts
from .schema import Importance, PrunePlan, Scope, WidthConstraints
from .sites import full_site_keys
from .widths import feasible_counts

MAC_TOLERANCE = 0.01  # relative: the frontier benchmark matches arms within +-1 % of the target MACs


def compact_macs(model: nn.Module, p: PrunePlan, base: nn.Module | None = None) -> int:
    """MACs of one image through the compact model `p` makes of the gated `model`, counted on its skeleton: the same
    ops and shapes as `compact(model, p)`, with zeros for weights and index buffers (built on the meta device, then
    given CPU storage: no init; values never change a MAC count). `base`: `meta_base(model)`, made once."""
    p.check_fits(model)
    spec = compact_spec(model, p)
    with torch.device("meta"):
        skeleton = build(spec, base if base is not None else create_timm(spec.name, spec.kwargs))
    skeleton = skeleton.to_empty(device="cpu")
    with torch.no_grad():
        for t in (*skeleton.parameters(), *skeleton.buffers()):
            t.zero_()  # index buffers (gathers, padding) must hold valid indices
    return count(skeleton)["macs"]


def meta_base(model: nn.Module) -> nn.Module:
    """The plain timm model behind the gated `model`, on the meta device (no weights): `build`'s base."""
    spec = describe(model)
    with torch.device("meta"):
        return create_timm(spec.name, spec.kwargs)


def plan_to_macs(model: nn.Module, keep: float, *, scope: Scope = "global", importance: Importance = "gate",
                 constraints: WidthConstraints | None = None, steps: int = 24) -> PrunePlan:
    """The plan whose compact model keeps the share `keep` of the gated model's MACs (closest found)."""
    if not 0.0 < keep < 1.0:
        raise PlanError(f"target MAC share must be in (0, 1), got {keep}")
    full, base = count(model)["macs"], meta_base(model)
    lo, hi = 1e-4, 0.999
    best: tuple[float, PrunePlan] | None = None
    for _ in range(steps):
        rate = (lo + hi) / 2
        try:
            p = plan(model, rate, scope=scope, importance=importance, constraints=constraints)
        except PlanError:  # above the profile's highest rate (e.g. inputs kept full): search below it
            hi = rate
            continue
        share = compact_macs(model, p, base) / full
        if best is None or abs(share - keep) < abs(best[0] - keep):
            best = (share, p)
        if abs(share - keep) <= MAC_TOLERANCE * keep / 2:
            break
        lo, hi = (rate, hi) if share > keep else (lo, rate)
    if best is None:
        raise PlanError(f"no valid plan under profile {(constraints or WidthConstraints()).profile!r}")
    share, p = best
    if abs(share - keep) > MAC_TOLERANCE * keep:  # only where bisection misses: its plans stay as they were
        share, p = _step_widths(model, p, share, keep, full, base)
    if abs(share - keep) > MAC_TOLERANCE * keep:
        raise PlanError(f"no plan keeps {keep:.3f} of the MACs within 1 % under profile "
                        f"{p.constraints.profile!r}: closest is {share:.3f} (rate {p.rate:.3f})")
    return p.model_copy(update={"thresholds": {**p.thresholds, "macs_share": round(share, 5)}})


def _one_width_moves(model: nn.Module, p: PrunePlan, scores, share: float, full: int, base: nn.Module) -> list[tuple]:
    """Every move of one gate by one feasible width from `p`: (share change, kept importance change, gate, count)."""
    counts = {(g.block, g.kind): len(g.kept) for g in p.gates}
    moves, fixed, kept = [], full_site_keys(model), _kept_score(p, scores)
    for key, n in counts.items():
        choices = feasible_counts(key[1], scores[key].numel(), p.constraints, p.num_heads, p.head_dim)
        if key in fixed or n not in choices:
            continue
        i = choices.index(n)
        for c in (choices[j] for j in (i - 1, i + 1) if 0 <= j < len(choices)):
            q = with_counts(p, scores, {**counts, key: c})
            moves.append((compact_macs(model, q, base) / full - share, _kept_score(q, scores) - kept, key, c))
    return moves


def _step_widths(model: nn.Module, p: PrunePlan, share: float, keep: float, full: int, base: nn.Module,
                 max_moves: int = 3, checks: int = 3) -> tuple[float, PrunePlan]:
    """Where no rate's plan lands within 1 % of `keep` (every width step is wider than the window): combine up to
    `max_moves` one-width moves of different gates from the closest plan `p`. A combination's share is predicted
    as the sum of its measured moves (exact where they touch different blocks, or the attention and the MLP of one
    block with their inputs fixed), and measured before it is taken; of those within the window, the one keeping
    the most importance."""
    scores = ranking_scores(model, p.importance, p.constraints)
    singles = _one_width_moves(model, p, scores, share, full, base)
    combos = []
    for k in range(1, max_moves + 1):
        for group in itertools.combinations(singles, k):
            if len({m[2] for m in group}) == k:
                combos.append((sum(m[0] for m in group), sum(m[1] for m in group), {m[2]: m[3] for m in group}))
    inside = sorted((c for c in combos if abs(share + c[0] - keep) <= MAC_TOLERANCE * keep), key=lambda c: -c[1])
    counts = {(g.block, g.kind): len(g.kept) for g in p.gates}
    for _, _, change in inside[:checks]:
        q = with_counts(p, scores, {**counts, **change})
        measured = compact_macs(model, q, base) / full
        if abs(measured - keep) <= MAC_TOLERANCE * keep:
            return measured, q
    return share, p


def _kept_score(p: PrunePlan, scores) -> float:
    return sum(float(scores[(g.block, g.kind)][g.kept].sum()) for g in p.gates)
