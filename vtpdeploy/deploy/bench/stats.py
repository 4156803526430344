"""Latency summaries and the bootstrap speedup interval (seeded numpy, no timing of its own)."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize(latencies_ms) -> dict[str, float]:
    """{mean, p50, p90, p95, p99, min, max} of per-iteration latencies in ms."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latencies to summarize")
    out = {"mean": float(a.mean())}
    for q, v in zip(PERCENTILES, np.percentile(a, PERCENTILES)):
        out[f"p{q}"] = float(v)
    out["min"] = float(a.min())
    out["max"] = float(a.max())
    return out


def throughput(latencies_ms, batch: int) -> float:
    """Images per second: batch x queries per second over the measured iterations."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    return float(batch * a.size / (a.sum() / 1000.0))


def bootstrap_speedup(
    baseline, candidate, *, n_boot: int = 2000, seed: int = 0, paired: bool = True, conf: float = 0.95
) -> tuple[float, float, float]:
    """(speedup, lo, hi): speedup = mean(baseline) / mean(candidate), percentile bootstrap CI.

    `baseline` and `candidate` are latency samples (block means or per-iteration latencies).
    paired=True resamples *indices shared by both arrays* (rounds of the interleaved schedule:
    round i holds one baseline block and one candidate block measured back to back), so slow
    machine drift cancels in the ratio. paired=False resamples each array independently.
    The interval is widened to contain the point estimate if the percentile bootstrap misses it.
    """
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    if b.size == 0 or c.size == 0:
        raise ValueError("bootstrap needs non-empty samples")
    point = float(b.mean() / c.mean())
    rng = np.random.default_rng(seed)
    if paired:
        n = min(b.size, c.size)
        b, c = b[:n], c[:n]
        idx = rng.integers(0, n, size=(n_boot, n))
        ratios = b[idx].mean(axis=1) / c[idx].mean(axis=1)
    else:
        ib = rng.integers(0, b.size, size=(n_boot, b.size))
        ic = rng.integers(0, c.size, size=(n_boot, c.size))
        ratios = b[ib].mean(axis=1) / c[ic].mean(axis=1)
    alpha = (1.0 - conf) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return point, float(min(lo, point)), float(max(hi, point))
