"""Turning a kept count into kept indices under width constraints (rounding, head alignment)."""

from __future__ import annotations

import torch

from .plan import WidthConstraints


def _round_to(n: int, multiple: int, lo: int, hi: int) -> int:
    if multiple <= 1:
        return max(lo, min(hi, n))
    rounded = int(round(n / multiple)) * multiple
    lo_m = -(-lo // multiple) * multiple  # smallest multiple >= lo
    hi_m = (hi // multiple) * multiple
    if hi_m < lo_m:  # no multiple fits: keep the full width
        return hi
    return max(lo_m, min(hi_m, rounded))


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
    """The `n_keep` best-scoring dims of one gate, adjusted to the constraints."""
    size = scores.numel()
    multiple = constraints.round_to.get(kind, 1)
    lo = min(size, constraints.min_for(kind))
    if kind == "attn_v" and (constraints.head_aligned_v or constraints.v_head_dims):
        per_head = _round_to(int(round(n_keep / num_heads)), multiple, max(1, -(-lo // num_heads)), head_dim)
        if constraints.v_head_dims:
            allowed = [d for d in constraints.v_head_dims if d <= head_dim] or [head_dim]
            per_head = min(allowed, key=lambda d: (abs(d - per_head), -d))
        kept: list[int] = []
        for h in range(num_heads):
            head_scores = scores[h * head_dim : (h + 1) * head_dim]
            kept += [h * head_dim + i for i in _top(head_scores, per_head)]
        return sorted(kept)
    return _top(scores, _round_to(n_keep, multiple, lo, size))
