"""Numerical comparison of model outputs, used after every transform."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import NumericalMismatchError


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def max_abs_diff(reference, candidate) -> float:
    ref, out = _as_numpy(reference), _as_numpy(candidate)
    if ref.shape != out.shape:
        raise NumericalMismatchError(f"output shape {out.shape} != reference {ref.shape}", float("inf"), 0.0)
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.max(np.abs(ref - out))) if ref.size else 0.0


def top1_agreement(reference, candidate) -> float:
    ref, out = _as_numpy(reference), _as_numpy(candidate)
    return float((ref.argmax(-1) == out.argmax(-1)).mean())


def assert_close(reference, candidate, atol: float, what: str) -> float:
    """Return the max |diff|; raise NumericalMismatchError naming `what` if it exceeds `atol`."""
    diff = max_abs_diff(reference, candidate)
    if not diff <= atol:
        raise NumericalMismatchError(what, diff, atol)
    return diff
