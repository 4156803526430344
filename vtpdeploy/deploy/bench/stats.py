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
    """(speedup, lo, hi): speedup = mean(baseline) / mean(candidate), scipy's percentile bootstrap CI.

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
    if paired:
        n = min(b.size, c.size)
        b, c = b[:n], c[:n]
    lo, hi = _percentile_ci(b, c, paired, n_boot, conf, seed)
    return point, float(min(lo, point)), float(max(hi, point))


def _percentile_ci(b: np.ndarray, c: np.ndarray, paired: bool, n_boot: int, conf: float, seed: int):
    """scipy's percentile bootstrap of mean(b) / mean(c). scipy resamples only samples of two or more
    observations; a one-observation sample resamples to itself, so it enters as a constant."""
    from scipy.stats import bootstrap

    if (paired and b.size < 2) or (b.size < 2 and c.size < 2):
        ratio = float(b.mean() / c.mean())
        return ratio, ratio
    if b.size < 2:
        data, statistic = (c,), lambda cc, axis=-1: b[0] / np.mean(cc, axis=axis)
    elif c.size < 2:
        data, statistic = (b,), lambda bb, axis=-1: np.mean(bb, axis=axis) / c[0]
    else:
        data, statistic = (b, c), lambda bb, cc, axis=-1: np.mean(bb, axis=axis) / np.mean(cc, axis=axis)
    res = bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=n_boot, confidence_level=conf,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
