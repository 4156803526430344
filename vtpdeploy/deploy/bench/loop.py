"""The one timing loop: warm-up by time, then interleaved blocks of iterations across models.

Round r runs one block of `block_iters` iterations of every slot; even rounds go in slot order,
odd rounds in reverse (A B, B A, A B, ...), so each pair of rounds is balanced against drift and
order effects. Every iteration is `infer` + `synchronize`, timed with perf_counter (GPU runners
block in infer/synchronize, so the wall time covers the device work).
"""

from __future__ import annotations

import string
import time
from dataclasses import dataclass, field

import numpy as np

from ..runners.base import Runner

_CODES = string.ascii_uppercase + string.ascii_lowercase + string.digits


@dataclass
class Slot:
    label: str
    runner: Runner
    x: np.ndarray
    latencies_ms: list[float] = field(default_factory=list)
    block_means_ms: list[float] = field(default_factory=list)
    warmup_iters: int = 0
    warmup_ms: list[float] = field(default_factory=list)


def _one(slot: Slot) -> float:
    t0 = time.perf_counter()
    slot.runner.infer(slot.x)
    slot.runner.synchronize()
    return (time.perf_counter() - t0) * 1000.0


def warmup(slots: list[Slot], warmup_s: float, min_iters: int = 2) -> None:
    """Round-robin single iterations until every slot has run for `warmup_s` (and `min_iters`)."""
    spent = [0.0] * len(slots)
    while True:
        pending = [i for i, s in enumerate(slots) if spent[i] < warmup_s * 1000.0 or s.warmup_iters < min_iters]
        if not pending:
            return
        for i in pending:
            ms = _one(slots[i])
            spent[i] += ms
            slots[i].warmup_iters += 1
            slots[i].warmup_ms.append(ms)


def block_size(slots: list[Slot], block_iters: int, duration_s: float | None) -> int:
    """`block_iters`, shrunk so the slowest model's block stays under a fifth of the duration."""
    if duration_s is None:
        return block_iters
    slowest = max(float(np.median(s.warmup_ms[-5:])) for s in slots)
    return max(1, min(block_iters, int(duration_s * 1000.0 / 5.0 / max(slowest, 1e-6))))


def measure(slots: list[Slot], *, duration_s: float | None, iters: int | None, block_iters: int,
            max_rounds: int = 1_000_000) -> dict:
    """Interleaved measurement. With `iters`: each slot runs exactly `iters` iterations.
    With `duration_s`: rounds continue until duration_s x len(slots) seconds of timed work
    (at least 2 rounds). Returns the schedule: {block_iters, rounds, order, sequence}."""
    if not slots:
        raise ValueError("nothing to measure")
    if len(slots) > len(_CODES):
        raise ValueError(f"at most {len(_CODES)} models per interleaved run")
    block = block_size(slots, block_iters, duration_s)
    sequence: list[str] = []
    total_ms, rounds = 0.0, 0
    budget_ms = None if duration_s is None else duration_s * 1000.0 * len(slots)
    while rounds < max_rounds:
        if iters is not None:
            n = min(block, iters - len(slots[0].latencies_ms))
            if n <= 0:
                break
        else:
            n = block
            if rounds >= 2 and total_ms >= budget_ms:
                break
        order = range(len(slots)) if rounds % 2 == 0 else range(len(slots) - 1, -1, -1)
        for i in order:
            lat = [_one(slots[i]) for _ in range(n)]
            slots[i].latencies_ms.extend(lat)
            slots[i].block_means_ms.append(float(np.mean(lat)))
            total_ms += sum(lat)
            sequence.append(_CODES[i])
        rounds += 1
    return {
        "block_iters": block,
        "rounds": rounds,
        "pattern": "alternating (even rounds in slot order, odd rounds reversed)",
        "slots": {_CODES[i]: s.label for i, s in enumerate(slots)},
        "sequence": "".join(sequence),
    }
