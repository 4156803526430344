"""MAC-guided plans: the rate that makes the compact model keep a given share of the unpruned MACs.

Users think in cost ("2x fewer MACs"), the threshold thinks in gated dims; width rounding and unequal MACs per dim
(an MLP hidden unit costs 2 x embed MACs per token, a V dim less) make the map between the two uneven. Bisection on the
rate, counting each candidate's compact model, finds it; the plan records the share it reached.
"""

from __future__ import annotations

from torch import nn

from ..errors import PlanError
from .compact import compact
from .counting import count
from .plan import plan
from .schema import Importance, PrunePlan, Scope, WidthConstraints

MAC_TOLERANCE = 0.01  # relative: the frontier benchmark matches arms within +-1 % of the target MACs


def compact_macs(model: nn.Module, p: PrunePlan) -> int:
    """MACs of one image through the compact model `p` makes of the gated `model`."""
    return count(compact(model, p))["macs"]


def plan_to_macs(model: nn.Module, keep: float, *, scope: Scope = "global", importance: Importance = "gate",
                 constraints: WidthConstraints | None = None, steps: int = 24) -> PrunePlan:
    """The plan whose compact model keeps the share `keep` of the gated model's MACs (closest found)."""
    if not 0.0 < keep < 1.0:
        raise PlanError(f"target MAC share must be in (0, 1), got {keep}")
    full = count(model)["macs"]
    lo, hi = 1e-4, 0.999
    best: tuple[float, PrunePlan] | None = None
    for _ in range(steps):
        rate = (lo + hi) / 2
        try:
            p = plan(model, rate, scope=scope, importance=importance, constraints=constraints)
        except PlanError:  # above the profile's highest rate (e.g. inputs kept full): search below it
            hi = rate
            continue
        share = compact_macs(model, p) / full
        if best is None or abs(share - keep) < abs(best[0] - keep):
            best = (share, p)
        if abs(share - keep) <= MAC_TOLERANCE * keep / 2:
            break
        lo, hi = (rate, hi) if share > keep else (lo, rate)
    if best is None:
        raise PlanError(f"no valid plan under profile {(constraints or WidthConstraints()).profile!r}")
    share, p = best
    if abs(share - keep) > MAC_TOLERANCE * keep:
        raise PlanError(f"no plan keeps {keep:.3f} of the MACs within 1 % under profile "
                        f"{p.constraints.profile!r}: closest is {share:.3f} (rate {p.rate:.3f})")
    return p.model_copy(update={"thresholds": {**p.thresholds, "macs_share": round(share, 5)}})
