"""Kept widths under hardware constraints: feasible counts, rate-preserving allocation, kept indices.

Three steps turn importance scores into a hardware-friendly plan:

1. `feasible_counts` — the kept counts a gate may have under a `WidthConstraints` (multiples of
   `round_to[kind]`, at least `min_width[kind]`, the full width always allowed; for `attn_v` with
   head alignment: `num_heads × d` where `d` is a per-head V width that is a multiple of
   `round_to["attn_v"]` or, with `v_head_dims`, one of those).
2. `allocate` — given the threshold's per-gate kept counts (one global τ, or one per group), pick a
   feasible count for every gate so that the group's total stays as close as possible to the
   unconstrained total: round each gate to its nearest feasible count, then add/remove one step on
   the gate whose marginal dims score best/worst while that brings the total closer, then swap
   equal-sized steps from low- to high-scoring gates while that raises the kept importance. Plain
   per-gate rounding drifts: with a global τ, most gates are near-full or near-empty, and rounding
   "to nearest" is biased by the clamps at both ends; the correction removes the drift.
3. `select_kept` — the kept indices of one gate: its best-scoring dims (per head for aligned V);
   `gate_plans` does it for every gate, ranking qkv_in / mlp_in by one shared score under
   `shared_input_order` (the `cpu` profile), so their kept sets nest and compaction can slice them.

`min_width[kind]` is a total per gate; for head-aligned `attn_v` the per-head minimum is
`ceil(min_width["attn_v"] / num_heads)` and `round_to["attn_v"]` is the per-head multiple.

Three further constraints shape `attn_v` and the kinds that may shrink:

- `keep_full`: those kinds have one rung, their full width (`plan` moves their share of the rate to the others).
- `drop_sublayers`: `attn_v` and `mlp_hidden` may also keep 0 dims (every head dead / no hidden unit):
  compaction then removes that attention or MLP whole, LayerNorm and fixed-cost ops included.
- `granularity`: `head` keeps whole heads only (counts `h × head_dim`, the heads with the largest V
  score mass); `head+dim` under head alignment keeps `h` live heads of `d` V dims each and picks, for
  each count, the `(h, d)` that keeps the most importance (`head_layouts`). Without head alignment
  `head+dim` is `dim`: a dim-level plan already removes a head whose V dims all fall under τ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from .schema import GatePlan, WidthConstraints
from .sites import INPUT_KINDS, SUBLAYER_KINDS, Key, site_order


def _aligned_v(kind: str, constraints: WidthConstraints) -> bool:
    return kind == "attn_v" and bool(constraints.head_aligned_v or constraints.v_head_dims)


def _head_mode(kind: str, constraints: WidthConstraints) -> str:
    """How an `attn_v` gate is cut: 'head' (whole heads), 'layout' (h heads × d dims) or '' (per dim)."""
    if kind != "attn_v" or kind in constraints.keep_full:
        return ""
    if constraints.granularity == "head":
        return "head"
    if constraints.granularity == "head+dim" and _aligned_v(kind, constraints):
        return "layout"
    return ""


def head_layouts(scores: torch.Tensor, constraints: WidthConstraints, num_heads: int,
                 head_dim: int) -> dict[int, tuple[float, list[int], int]]:
    """Kept count -> (importance kept, live heads, V dims per live head), the best layout per count.

    `head`: h whole heads with the largest score mass; `head+dim`: every (h, d) with d an allowed
    per-head V width, the h heads whose top-d scores sum highest.
    """
    s = scores.detach().float().cpu().reshape(num_heads, head_dim)
    cum = torch.cat([torch.zeros(num_heads, 1), s.sort(dim=1, descending=True).values.cumsum(dim=1)], dim=1)
    widths = [head_dim] if constraints.granularity == "head" else per_head_choices(constraints, num_heads, head_dim)
    best: dict[int, tuple[float, list[int], int]] = {0: (0.0, [], widths[0])} if constraints.drop_sublayers else {}
    for d in widths:
        mass = cum[:, d]
        order = torch.argsort(mass, descending=True, stable=True)
        acc = mass[order].cumsum(0)
        for h in range(min(constraints.min_heads(head_dim), num_heads), num_heads + 1):
            value = float(acc[h - 1])
            if h * d not in best or value > best[h * d][0]:
                best[h * d] = (value, sorted(int(i) for i in order[:h]), d)
    return best


def is_trivial(constraints: WidthConstraints) -> bool:
    """True when only minimum widths apply (the paper-faithful `none` profile)."""
    return (
        all(m <= 1 for m in constraints.round_to.values())
        and not constraints.head_aligned_v
        and not constraints.v_head_dims
        and constraints.granularity != "head"
    )


def per_head_choices(constraints: WidthConstraints, num_heads: int, head_dim: int) -> list[int]:
    """Allowed per-head V widths for head-aligned `attn_v`, ascending (never empty)."""
    if constraints.v_head_dims:
        allowed = sorted({int(d) for d in constraints.v_head_dims if 0 < d <= head_dim})
        return allowed or [head_dim]
    m = max(1, constraints.round_to.get("attn_v", 1))
    lo = max(1, -(-constraints.min_for("attn_v") // num_heads))
    lo = min(lo, head_dim)
    first = -(-lo // m) * m
    return sorted(set(range(first, head_dim + 1, m)) | {head_dim})


def feasible_counts(kind: str, size: int, constraints: WidthConstraints, num_heads: int, head_dim: int) -> list[int]:
    """Every kept count a gate of `size` dims may take, ascending (never empty; always ends at `size`
    unless aligned V dims forbid the full width; starts at 0 for attn_v / mlp_hidden under `drop_sublayers`)."""
    if kind in constraints.keep_full:
        return [size]
    choices = _nonzero_counts(kind, size, constraints, num_heads, head_dim)
    return [0, *choices] if constraints.drop_sublayers and kind in SUBLAYER_KINDS else choices


def _nonzero_counts(kind: str, size: int, constraints: WidthConstraints, num_heads: int, head_dim: int) -> list[int]:
    mode = _head_mode(kind, constraints)
    if mode == "head":
        return [h * head_dim for h in range(min(constraints.min_heads(head_dim), num_heads), num_heads + 1)]
    if mode == "layout":
        widths = per_head_choices(constraints, num_heads, head_dim)
        return sorted({h * d for d in widths for h in range(min(constraints.min_heads(head_dim), num_heads),
                                                                 num_heads + 1)})
    if _aligned_v(kind, constraints):
        return [d * num_heads for d in per_head_choices(constraints, num_heads, head_dim)]
    m = max(1, constraints.round_to.get(kind, 1))
    lo = min(size, constraints.min_for(kind))
    first = -(-lo // m) * m
    return sorted(set(range(first, size + 1, m)) | {size})


def nearest(choices: Sequence[int], n: int) -> int:
    """The choice closest to `n`; ties go to the larger (keeps more)."""
    return min(choices, key=lambda c: (abs(c - n), -c))


class WidthLadder:
    """One gate's feasible counts (its rungs), the importance kept at each, and the current rung `i`."""

    def __init__(self, scores: torch.Tensor, kind: str, constraints: WidthConstraints, num_heads: int, head_dim: int):
        s = scores.detach().float().cpu()
        self.choices = feasible_counts(kind, s.numel(), constraints, num_heads, head_dim)
        if _head_mode(kind, constraints):
            layouts = head_layouts(s, constraints, num_heads, head_dim)
            self.value = {c: layouts[c][0] for c in self.choices}
        elif _aligned_v(kind, constraints):
            per_head = s.reshape(num_heads, head_dim).sort(dim=1, descending=True).values
            cum = torch.cat([torch.zeros(num_heads, 1), per_head.cumsum(dim=1)], dim=1).sum(dim=0)
            self.value = {c: float(cum[c // num_heads]) for c in self.choices}
        else:
            cum = torch.cat([torch.zeros(1), s.sort(descending=True).values.cumsum(0)])
            self.value = {c: float(cum[c]) for c in self.choices}
        self.i = 0

    @property
    def count(self) -> int:
        return self.choices[self.i]

    def up(self) -> tuple[int, float] | None:
        """(step, mean score of the added dims) for one step up, or None at the top."""
        if self.i + 1 >= len(self.choices):
            return None
        a, b = self.choices[self.i], self.choices[self.i + 1]
        return b - a, (self.value[b] - self.value[a]) / (b - a)

    def down(self) -> tuple[int, float] | None:
        if self.i == 0:
            return None
        a, b = self.choices[self.i - 1], self.choices[self.i]
        return b - a, (self.value[b] - self.value[a]) / (b - a)


def allocate(
    counts: Mapping[Key, int],
    scores: Mapping[Key, torch.Tensor],
    constraints: WidthConstraints,
    num_heads: int,
    head_dim: int,
    groups: Iterable[Sequence[Key]] | None = None,
    max_swaps: int | None = None,
) -> dict[Key, int]:
    """Feasible kept counts whose total per group is as close as possible to `counts`' total.

    `counts`: the threshold's kept count per gate; `groups`: the plan's scope groups (one list of
    keys for `global`, one per kind / per gate otherwise; default: one group). With trivial
    constraints (profile `none`) only the minimum widths are applied, so the plan stays paper-faithful.
    Guarantee: within a group, |Σ allocated − Σ counts| ≤ s/2 where s is the smallest step of a
    gate that is not at its own bound, and no single step would bring the total closer.
    """
    keys_all = list(counts)
    groups = [list(g) for g in groups] if groups is not None else [keys_all]
    out: dict[Key, int] = {}
    for keys in groups:
        gates = {k: WidthLadder(scores[k], k[1], constraints, num_heads, head_dim) for k in keys}
        for k, g in gates.items():
            g.i = g.choices.index(nearest(g.choices, int(counts[k])))
        if not is_trivial(constraints):
            _correct_total(gates, sum(int(counts[k]) for k in keys))
            _swap_for_importance(gates, max_swaps if max_swaps is not None else 20 * len(keys) + 100)
        out.update({k: g.count for k, g in gates.items()})
    return out


def _correct_total(gates: dict[Key, WidthLadder], target: int) -> None:
    total = sum(g.count for g in gates.values())
    while total != target:
        gap = target - total
        best: tuple[float, Key] | None = None
        for k, g in gates.items():
            move = g.up() if gap > 0 else g.down()
            if move is None or move[0] >= 2 * abs(gap):  # must strictly shrink |gap|
                continue
            step, mean = move
            rank = -mean if gap > 0 else mean  # up: best-scoring first; down: worst-scoring first
            if best is None or (rank, k) < best:
                best = (rank, k)
        if best is None:
            return
        g = gates[best[1]]
        before = g.count
        g.i += 1 if gap > 0 else -1
        total += g.count - before


def _swap_for_importance(gates: dict[Key, WidthLadder], max_swaps: int) -> None:
    """Move one step from the gate with the worst marginal dims to the best, for equal steps."""
    for _ in range(max_swaps):
        ups: dict[int, tuple[float, Key]] = {}
        downs: dict[int, tuple[float, Key]] = {}
        for k, g in gates.items():
            u, d = g.up(), g.down()
            if u is not None and (u[0] not in ups or u[1] > ups[u[0]][0]):
                ups[u[0]] = (u[1], k)
            if d is not None and (d[0] not in downs or d[1] < downs[d[0]][0]):
                downs[d[0]] = (d[1], k)
        best = None
        for step, (up_mean, ku) in ups.items():
            if step in downs:
                down_mean, kd = downs[step]
                gain = (up_mean - down_mean) * step
                if ku != kd and gain > 1e-9 * max(1.0, abs(up_mean)) and (best is None or gain > best[0]):
                    best = (gain, ku, kd)
        if best is None:
            return
        gates[best[1]].i += 1
        gates[best[2]].i -= 1


def _top(scores: torch.Tensor, n: int) -> list[int]:
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(int(i) for i in order[:n])


def select_kept(
    scores: torch.Tensor,
    n_keep: int,
    kind: str,
    constraints: WidthConstraints,
    num_heads: int,
    head_dim: int,
) -> list[int]:
    """The best-scoring dims of one gate, `n_keep` moved to the nearest feasible count.

    Head-aligned `attn_v`: every head keeps the same number of V dims, ranked within each head; under
    head granularity only the layout's live heads keep dims (the others are removed whole).
    """
    size = scores.numel()
    n = nearest(feasible_counts(kind, size, constraints, num_heads, head_dim), int(n_keep))
    if _head_mode(kind, constraints):
        _, heads, per_head = head_layouts(scores, constraints, num_heads, head_dim)[n]
        kept = []
        for h in heads:
            kept += [h * head_dim + i for i in _top(scores[h * head_dim : (h + 1) * head_dim], per_head)]
        return sorted(kept)
    if _aligned_v(kind, constraints):
        per_head = n // num_heads
        kept: list[int] = []
        for h in range(num_heads):
            head_scores = scores[h * head_dim : (h + 1) * head_dim]
            kept += [h * head_dim + i for i in _top(head_scores, per_head)]
        return sorted(kept)
    return _top(scores, n)


def shared_input_scores(scores: Mapping[Key, torch.Tensor]) -> torch.Tensor | None:
    """One score per residual dim for every qkv_in / mlp_in gate: the sum of their scores, each normalised
    by its mean so every gate votes with equal weight. None when the model has no such gate."""
    inputs = [s for (_, kind), s in scores.items() if kind in INPUT_KINDS]
    if not inputs:
        return None
    return torch.stack([s.float() / s.float().mean().clamp_min(1e-12) for s in inputs]).sum(dim=0)


def gate_plans(
    scores: Mapping[Key, torch.Tensor],
    counts: Mapping[Key, int],
    constraints: WidthConstraints,
    num_heads: int,
    head_dim: int,
) -> list[GatePlan]:
    """The GatePlan of every gate (in site order): its `counts[key]` best-scoring dims.

    With `shared_input_order`, qkv_in / mlp_in gates rank one shared score (`shared_input_scores`): the
    counts stay the gates' own, and since every gate keeps the top of the same ranking, the kept sets nest.
    """
    shared = shared_input_scores(scores) if constraints.shared_input_order else None

    def ranked(key: Key) -> torch.Tensor:
        return shared if shared is not None and key[1] in INPUT_KINDS else scores[key]

    return [
        GatePlan(block=key[0], kind=key[1], size=scores[key].numel(),
                 kept=select_kept(ranked(key), counts[key], key[1], constraints, num_heads, head_dim))
        for key in sorted(scores, key=site_order)
    ]


def rate_bound(constraints: WidthConstraints, sizes: Mapping[Key, int], num_heads: int, head_dim: int) -> float:
    """A loose bound on |realised − requested| rate for a global plan: half the largest step over the total."""
    total = sum(sizes.values())
    steps = [1]
    for (_, kind), size in sizes.items():
        ch = feasible_counts(kind, size, constraints, num_heads, head_dim)
        steps += [b - a for a, b in zip(ch, ch[1:])]
    return math.ceil(max(steps) / 2) / total + 1.0 / total
