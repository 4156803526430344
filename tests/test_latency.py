"""Latency tables (cache, keys, interpolation) and the latency-guided planner on synthetic tables."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import gated_random, image_batch, make_vit, masked_and_compact, max_diff

import vtpdeploy
from vtpdeploy import PlanError
from vtpdeploy.deploy.bench.latency_table import cache_path, measure_table
from vtpdeploy.prune.latency_plan import (
    LatencyTable,
    kept_importance,
    latency_report,
    plan_for_latency,
    predicted_ms,
)
from vtpdeploy.prune.plan import importance_scores
from vtpdeploy.prune.profiles import check_plan, constraints_for

MID = dict(embed_dim=192, num_heads=3, depth=2)


@pytest.fixture(scope="module")
def model():
    return gated_random(make_vit(**MID), seed=7)


class FakeMeasure:
    """A deterministic 'device': latency proportional to each part's MACs, counting calls."""

    def __init__(self, scale: float = 1.0):
        self.calls = 0
        self.scale = scale

    def __call__(self, part, widths, dims):
        self.calls += 1
        n, d, heads, hd = dims["tokens"], dims["embed_dim"], dims["num_heads"], dims["head_dim"]
        if part == "attn":
            w_in, v = widths
            macs = n * w_in * (2 * heads * hd + heads * v) + n * n * heads * (hd + v) + n * heads * v * d
        elif part == "mlp":
            w_in, h = widths
            macs = n * w_in * h + n * h * d
        else:
            macs = n * d * 200
        return self.scale * (0.01 + macs / 1e6)


def test_second_call_hits_the_cache(model, tmp_path):
    fake = FakeMeasure()
    t1 = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=3)
    n = fake.calls
    assert n == t1.measurements == 3 * 3 * 2 + 1
    t2 = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=3)
    assert fake.calls == n  # no measurement
    assert t2 == t1
    assert len(list(tmp_path.glob("*.json"))) == 1
    # refresh forces a re-measure
    measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=3, refresh=True)
    assert fake.calls == 2 * n


def test_cache_key_changes_with_backend_device_and_batch(model, tmp_path):
    fake = FakeMeasure()
    base = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=2)
    n = fake.calls
    other = [
        dict(backend="torch", device_label="cpu-A"),
        dict(backend="ort", device_label="cpu-B"),
        dict(backend="ort", device_label="cpu-A", batch=8),
    ]
    paths = {cache_path(base.key, tmp_path)}
    for i, kw in enumerate(other, start=2):
        backend = kw.pop("backend")
        t = measure_table(model, backend, cache_dir=tmp_path, measure_fn=fake, points=2, **kw)
        assert fake.calls == i * n  # each new key measures
        assert t.key != base.key
        paths.add(cache_path(t.key, tmp_path))
    assert len(paths) == 4 == len(list(tmp_path.glob("*.json")))
    key = base.key
    for field in ("device", "backend", "backend_version", "batch", "tokens", "embed_dim"):
        assert field in key
    assert key["tokens"] == 17 and key["embed_dim"] == 192 and key["device"] == "cpu-A"


def test_table_round_trip_and_interpolation(model, tmp_path):
    t = measure_table(model, "torch", cache_dir=tmp_path, measure_fn=FakeMeasure(), device_label="x", points=3)
    path = t.save(tmp_path / "t.json")
    assert LatencyTable.load(path) == t
    a, b = t.attn.a, t.attn.b
    assert t.attn_ms(a[0], b[0]) == pytest.approx(t.attn.ms[0][0])
    mid = t.attn_ms((a[0] + a[1]) / 2, b[0])
    assert mid == pytest.approx((t.attn.ms[0][0] + t.attn.ms[1][0]) / 2)
    assert t.attn_ms(10_000, 10_000) == pytest.approx(t.attn.ms[-1][-1])  # clamped
    assert t.full_ms() > t.stem_ms
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(vtpdeploy.VtpError, match="not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    json.loads(path.read_text())


@pytest.mark.parametrize("profile", ["none", "cpu", "gpu-int8"])
def test_planner_meets_target_on_synthetic_table(model, tmp_path, profile):
    t = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=FakeMeasure(), device_label="x", points=5)
    target = 0.7 * t.full_ms()
    c = constraints_for(profile)
    p = plan_for_latency(model, target, t, c, importance="gate")
    assert predicted_ms(p, t) <= target + 1e-9
    assert p.constraints.profile == profile and check_plan(p) == []
    assert 0.0 < p.realised_rate < 1.0
    rep = latency_report(p, t, measured_ms=None)
    assert rep["predicted_ms"] <= target + 1e-6 and rep["measured_ms"] is None
    masked, small = masked_and_compact(model, p)
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(masked(x), small(x)) <= 1e-4
    # a looser target prunes less and keeps more importance
    scores = importance_scores(model, "gate")
    q = plan_for_latency(model, 0.9 * t.full_ms(), t, c, importance="gate")
    assert q.kept_dims >= p.kept_dims and kept_importance(q, scores) >= kept_importance(p, scores)
    # a budget above the full model prunes nothing
    full = plan_for_latency(model, 2 * t.full_ms(), t, c)
    assert full.kept_dims == full.total_dims


def test_planner_rejects_unreachable_targets_and_other_shapes(model, tmp_path):
    t = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=FakeMeasure(), device_label="x", points=3)
    with pytest.raises(PlanError, match="not reachable"):
        plan_for_latency(model, 0.5 * t.stem_ms, t, constraints_for("cpu"))
    with pytest.raises(PlanError, match="> 0"):
        plan_for_latency(model, 0.0, t)
    other = gated_random(make_vit(depth=1), seed=1)
    with pytest.raises(PlanError, match="different model shape"):
        plan_for_latency(other, 10.0, t)


def test_real_measurement_with_the_torch_runner(tmp_path):
    """The default measure function runs parts through the torch runner (values not asserted)."""
    small = gated_random(make_vit(), seed=3)
    t = measure_table(small, "torch", cache_dir=tmp_path, points=2, iters=2)
    assert t.measurements == 2 * 2 * 2 + 1
    assert all(v > 0 for row in t.attn.ms + t.mlp.ms for v in row) and t.stem_ms > 0
    assert t.key["backend"] == "torch" and t.key["backend_version"].startswith("torch==")
