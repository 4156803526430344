"""Latency tables (cache, keys, interpolation) and the latency-guided planner on synthetic tables."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import gated_random, image_batch, make_vit, masked_and_compact, max_diff
from helpers import FakeMeasure

import vtpdeploy
from vtpdeploy import PlanError
from vtpdeploy.latency import (
    LatencyTable,
    kept_importance,
    latency_report,
    measure_table,
    model_dims,
    plan_for_latency,
    predicted_ms,
)
from vtpdeploy.latency.cache import cache_path
from vtpdeploy.prune.plan import importance_scores
from vtpdeploy.prune.profiles import check_plan, constraints_for

MID = dict(embed_dim=192, num_heads=3, depth=2)


@pytest.fixture(scope="module")
def model():
    return gated_random(make_vit(**MID), seed=7)


def test_second_call_hits_the_cache(model, tmp_path):
    fake = FakeMeasure()
    t1 = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=3)
    n = fake.calls
    assert n == t1.measurements == 3 * 3 * 2 + 1 + 3  # grid, stem, 3 calibration models
    t2 = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=3)
    assert fake.calls == n + 2  # only the check before reuse: the unpruned and the narrowest whole model
    assert t2 == t1
    assert len(list(tmp_path.glob("*.json"))) == 1
    # refresh forces a re-measure
    measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="cpu-A", points=3, refresh=True)
    assert fake.calls == 2 * n + 2


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
    assert t.measurements == 2 * 2 * 2 + 1 + 3
    assert all(v > 0 for row in t.attn.ms + t.mlp.ms for v in row) and t.stem_ms > 0
    assert t.rounds in (2, 4) and t.spread_pct is not None and t.spread_pct >= 0  # 4: the first try was too noisy
    assert [p["keep"] for p in t.calibration.points] == [1.0, 0.7, 0.4]
    assert all(p["measured_ms"] > 0 and p["part_sum_ms"] > 0 for p in t.calibration.points)
    assert t.key["backend"] == "torch" and t.key["backend_version"].startswith("torch==")


def test_calibration_maps_the_part_sum_to_whole_model_latency(model, tmp_path):
    """Parts timed alone miss the glue between them: a device whose whole model costs 1.15x its part sum
    + 0.3 ms makes an uncalibrated plan miss its target by ~15 %; the calibrated table predicts the whole
    model exactly (the fake is linear) and its plan meets the target."""
    from vtpdeploy.prune.compact import widths_from_plan

    fake = FakeMeasure(whole_factor=1.15, whole_offset=0.3)
    dims = model_dims(model)
    c = constraints_for("cpu")
    raw = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="x", points=5, calibrate=())
    cal = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=fake, device_label="x", points=5, constraints=c)
    assert raw.calibration is None and cal.key != raw.key
    assert cal.calibration.scale == pytest.approx(1.15, rel=1e-6)
    assert cal.calibration.offset_ms == pytest.approx(0.3, abs=1e-6)
    assert cal.calibration.max_residual_pct < 1e-6
    true_full = fake("model", tuple(widths_from_plan(plan_for_latency(model, 1e9, cal, c))), dims)
    assert cal.full_ms() == pytest.approx(true_full, rel=1e-9)
    for fraction in (0.5, 0.65, 0.8):
        target = fraction * true_full
        on_device = {}
        for name, table in (("raw", raw), ("calibrated", cal)):
            p = plan_for_latency(model, target, table, c, importance="gate")
            on_device[name] = fake("model", tuple(widths_from_plan(p)), dims)
            if name == "calibrated":
                assert predicted_ms(p, table) == pytest.approx(on_device[name], rel=1e-9)
                assert p.thresholds["predicted_ms"] == pytest.approx(on_device[name], rel=1e-9)
        assert on_device["calibrated"] <= target + 1e-9
        assert on_device["raw"] > 1.1 * target  # what the issue saw: consistently over target
        rep = latency_report(p, cal, measured_ms=on_device["calibrated"])
        assert abs(rep["error_pct"]) < 1e-6 and rep["calibrated"] is True


def test_ladder_plan_keeps_the_fraction_on_feasible_widths(model):
    from vtpdeploy.latency import ladder_plan

    c = constraints_for("cpu")
    full = ladder_plan(model, 1.0, c)
    assert full.kept_dims == full.total_dims
    half = ladder_plan(model, 0.5, c)
    assert check_plan(half, c) == []
    for g in half.gates:
        assert len(g.kept) <= max(0.5 * g.size, min(len(h.kept) for h in half.gates if h.kind == g.kind))
    assert 0.4 <= half.realised_rate <= 0.6
    with pytest.raises(PlanError, match="keep fraction"):
        ladder_plan(model, 0.0, c)


def test_closed_loop_corrects_a_table_that_is_off(model, tmp_path):
    """The table says x ms, the device runs the plan 1.2x slower: one measured step fixes the budget, and the
    next step's prediction (made before its measurement) matches the device."""
    from vtpdeploy.latency import plan_to_target
    from vtpdeploy.prune.compact import widths_from_plan

    c = constraints_for("cpu")
    table = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=FakeMeasure(), device_label="x", points=5,
                          constraints=c)
    measured = []

    def device(p):  # 1.2 x what the table predicts for these widths
        measured.append(1.2 * table.predict_widths(widths_from_plan(p)))
        return measured[-1]

    target = 0.7 * table.full_ms()
    p, steps = plan_to_target(model, target, table, c, "gate", measure=device, steps=3)
    assert len(steps) == 2 and steps[0]["error_pct"] > 10  # the table-only plan misses by ~+20 %
    assert -6.0 <= steps[1]["error_pct"] <= 2.0
    assert steps[1]["correction"] == pytest.approx(1.2, rel=1e-6)
    assert steps[1]["predicted_ms"] == pytest.approx(steps[1]["measured_ms"], rel=1e-3)
    assert p.thresholds["measured_ms"] == pytest.approx(measured[-1]) and p.thresholds["target_ms"] == target
    rep = latency_report(p, table, p.thresholds["measured_ms"])
    assert abs(rep["error_pct"]) < 0.1
    only_table, one = plan_to_target(model, target, table, c, "gate", measure=device, steps=1)
    assert len(one) == 1 and only_table.thresholds["correction"] == 1.0
    with pytest.raises(PlanError, match="not reachable"):
        plan_to_target(model, 0.01 * table.full_ms(), table, c, "gate", measure=device)
