"""Prune plans: scopes, thresholds, importance, constraints, validation and JSON round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import gate_values, make_vit, randomize_gates

import vtpdeploy
from vtpdeploy import (
    GATE_KINDS,
    PlanError,
    PrunePlan,
    WidthConstraints,
    add_gates,
    apply_mask,
    plan,
)
from vtpdeploy.prune.gates import iter_gates

DEPTH = 3
SIZES = {"qkv_in": 48, "attn_v": 48, "mlp_in": 48, "mlp_hidden": 192}
TOTAL = DEPTH * sum(SIZES.values())  # 1008


@pytest.fixture
def gated():
    model = add_gates(make_vit(depth=DEPTH))
    randomize_gates(model, seed=11)
    return model


def _scores(model) -> dict[tuple[int, str], torch.Tensor]:
    return {(r.block, r.kind): r.module.gate.detach().abs() for r in iter_gates(model)}


def _kept_pruned(p: PrunePlan, scores, keys) -> tuple[torch.Tensor, torch.Tensor]:
    kept, pruned = [], []
    for key in keys:
        s = scores[key]
        mask = torch.zeros(s.numel(), dtype=torch.bool)
        mask[p.gate(*key).kept] = True
        kept.append(s[mask])
        pruned.append(s[~mask])
    return torch.cat(kept), torch.cat(pruned)


@pytest.mark.parametrize("rate", [0.1, 0.37, 0.5, 0.8])
def test_global_removes_round_rate_total_with_one_threshold(gated, rate):
    scores = _scores(gated)
    assert len({float(v) for s in scores.values() for v in s}) == TOTAL  # untied scores
    p = plan(gated, rate, scope="global")
    assert p.total_dims == TOTAL
    assert p.kept_dims == TOTAL - round(rate * TOTAL)
    assert abs(p.realised_rate - rate) <= 1 / TOTAL
    kept, pruned = _kept_pruned(p, scores, list(scores))
    assert kept.min() > pruned.max()  # every kept score beats every pruned score
    assert set(p.thresholds) == {"global"}
    assert p.thresholds["global"] == pytest.approx(float(pruned.max()))
    # global: gates of different kinds lose different fractions (scores are iid, sizes differ)
    assert p.scope == "global" and p.importance == "gate" and p.rate == rate
    assert (p.num_heads, p.head_dim) == (3, 16)


@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_per_kind_removes_rate_of_each_kind(gated, rate):
    scores = _scores(gated)
    p = plan(gated, rate, scope="per_kind")
    assert set(p.thresholds) == set(GATE_KINDS)
    for kind in GATE_KINDS:
        keys = [(b, kind) for b in range(DEPTH)]
        kind_total = DEPTH * SIZES[kind]
        kept, pruned = _kept_pruned(p, scores, keys)
        assert kind_total - kept.numel() == round(rate * kind_total), kind
        assert kept.min() > pruned.max(), kind
        assert p.thresholds[kind] == pytest.approx(float(pruned.max()))


@pytest.mark.parametrize("rate", [0.3, 0.55])
def test_per_layer_removes_rate_of_each_gate(gated, rate):
    scores = _scores(gated)
    p = plan(gated, rate, scope="per_layer")
    assert len(p.thresholds) == 4 * DEPTH
    for key, s in scores.items():
        g = p.gate(*key)
        assert g.size == SIZES[key[1]]
        assert g.size - len(g.kept) == round(rate * g.size), key
        kept, pruned = _kept_pruned(p, scores, [key])
        assert kept.min() > pruned.max(), key


def test_plan_does_not_touch_the_model_and_apply_mask_zeroes_exactly_the_pruned(gated):
    before = gate_values(gated)
    p = plan(gated, 0.4)
    assert all(torch.equal(before[k], v) for k, v in gate_values(gated).items())
    out = apply_mask(gated, p)
    assert out is gated
    after = gate_values(gated)
    for g in p.gates:
        old, new = before[g.name], after[g.name]
        kept = torch.zeros(g.size, dtype=torch.bool)
        kept[g.kept] = True
        assert torch.equal(new[kept], old[kept])
        assert torch.all(new[~kept] == 0)
    # masking is idempotent and a re-plan of the masked model at the same rate keeps the same dims
    p2 = plan(gated, 0.4)
    assert [g.kept for g in p2.gates] == [g.kept for g in p.gates]


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rate_outside_open_unit_interval_raises(gated, rate):
    with pytest.raises(PlanError, match="prune rate must be in"):
        plan(gated, rate)


def test_unknown_scope_or_importance_raises(gated):
    with pytest.raises(PlanError, match="scope"):
        plan(gated, 0.5, scope="per_head")
    with pytest.raises(PlanError, match="importance"):
        plan(gated, 0.5, importance="taylor")


def test_gate_importance_needs_gates():
    with pytest.raises(PlanError, match="gated model"):
        plan(make_vit(), 0.5, importance="gate")


def test_weight_l1_on_ungated_model_ranks_normalised_column_norms():
    model = make_vit(depth=DEPTH)
    p = plan(model, 0.4, importance="weight_l1")
    assert p.importance == "weight_l1"
    assert p.kept_dims == TOTAL - round(0.4 * TOTAL)
    scores = {}
    for b, blk in enumerate(model.blocks):
        for kind, lin in zip(GATE_KINDS, (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2)):
            s = lin.weight.detach().abs().sum(0)
            scores[(b, kind)] = s / s.mean()
    kept, pruned = _kept_pruned(p, scores, list(scores))
    assert kept.min() >= pruned.max()
    # the plan made without gates fits the gated model and compacts exactly
    add_gates(model)
    p.check_fits(model)
    from conftest import image_batch, masked_and_compact, max_diff

    masked, small = masked_and_compact(model, p)
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(masked(x), small(x)) <= 1e-4


def test_weight_l1_on_gated_model_includes_gate_magnitude(gated):
    with torch.no_grad():
        gated.blocks[1].mlp.fc2.gate[:10] = 1e-6  # near-dead hidden units
    p = plan(gated, 0.05, importance="weight_l1", scope="per_layer")
    assert not set(range(10)) & set(p.gate(1, "mlp_hidden").kept)


def test_min_width_and_default_minimum_of_one(gated):
    p = plan(gated, 0.95, scope="per_layer", constraints=WidthConstraints(min_width={"mlp_hidden": 64}))
    for b in range(DEPTH):
        assert len(p.gate(b, "mlp_hidden").kept) == 64
        assert len(p.gate(b, "qkv_in").kept) == round(0.05 * 48)
    # rate so high that round(r * size) == size: each gate still keeps one dim
    p = plan(gated, 0.999, scope="per_layer")
    assert all(len(g.kept) == 1 for g in p.gates)
    assert p.realised_rate < 0.999


def test_round_to_and_head_aligned_constraints(gated):
    c = WidthConstraints(profile="gpu", head_aligned_v=True, round_to={"attn_v": 8, "mlp_hidden": 16})
    p = plan(gated, 0.5, constraints=c)
    for b in range(DEPTH):
        per_head = p.v_dims_per_head(b)
        assert len(set(per_head)) == 1 and per_head[0] % 8 == 0 and per_head[0] > 0
        assert len(p.gate(b, "mlp_hidden").kept) % 16 == 0
        # within a head the best-scoring dims are kept
        gate = gated.blocks[b].attn.proj.gate.detach().abs()
        kept = set(p.gate(b, "attn_v").kept)
        for h in range(3):
            dims = range(16 * h, 16 * h + 16)
            k = [gate[i] for i in dims if i in kept]
            d = [gate[i] for i in dims if i not in kept]
            if k and d:
                assert min(k) > max(d)
    assert p.constraints == c
    assert p.summary()["profile"] == "gpu"


def test_v_head_dims_constraint_picks_an_allowed_width(gated):
    p = plan(gated, 0.5, constraints=WidthConstraints(v_head_dims=[4, 16]))
    for b in range(DEPTH):
        per_head = p.v_dims_per_head(b)
        assert len(set(per_head)) == 1 and per_head[0] in (4, 16)


def test_summary_and_v_dims_per_head(gated):
    p = plan(gated, 0.45)
    s = p.summary()
    assert s["requested_rate"] == 0.45
    assert s["realised_rate"] == pytest.approx(p.realised_rate, abs=1e-6)
    assert s["kept_dims"] == p.kept_dims and s["total_dims"] == TOTAL
    assert sum(v["kept"] for v in s["per_kind"].values()) == p.kept_dims
    assert {k: v["total"] for k, v in s["per_kind"].items()} == {k: DEPTH * n for k, n in SIZES.items()}
    assert len(s["blocks"]) == DEPTH
    for row in s["blocks"]:
        b = row["block"]
        for kind in GATE_KINDS:
            assert row[kind] == len(p.gate(b, kind).kept)
            assert row[f"{kind}_size"] == SIZES[kind]
        assert row["v_dims_per_head"] == p.v_dims_per_head(b)
        assert sum(row["v_dims_per_head"]) == row["attn_v"]
        kept = p.gate(b, "attn_v").kept
        assert row["v_dims_per_head"] == [sum(1 for i in kept if i // 16 == h) for h in range(3)]
    json.dumps(s)  # JSON-serialisable
    with pytest.raises(PlanError, match="no gate blocks.9.qkv_in"):
        p.gate(9, "qkv_in")


def test_plan_json_round_trip(gated, tmp_path):
    p = plan(gated, 0.33, scope="per_kind", constraints=WidthConstraints(round_to={"mlp_hidden": 8}))
    path = p.save(tmp_path / "sub" / "plan.json")
    assert path.is_file()
    data = json.loads(path.read_text())
    assert data["format"] == "vtpdeploy-plan" and data["scope"] == "per_kind"
    q = PrunePlan.load(path)
    assert q == p
    assert q.summary() == p.summary()
    assert q.model_dump() == p.model_dump()
    assert not list(tmp_path.glob("sub/*.tmp"))  # atomic write left no temp file


def _write(tmp_path, obj) -> str:
    path = tmp_path / "bad.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_plan_load_errors_are_one_line_plan_errors(gated, tmp_path):
    good = json.loads(plan(gated, 0.5).model_dump_json())
    cases = {
        "not found": tmp_path / "missing.json",
        "not a readable JSON plan": _write(tmp_path, "{not json"),
    }
    for what, path in cases.items():
        with pytest.raises(PlanError, match=what) as info:
            PrunePlan.load(path)
        assert "\n" not in str(info.value)
    bad_variants = []
    v = json.loads(json.dumps(good)); v["gates"][0]["kept"] = [5, 3]; bad_variants.append(v)  # unsorted
    v = json.loads(json.dumps(good)); v["gates"][0]["kept"] = [0, 48]; bad_variants.append(v)  # out of range
    v = json.loads(json.dumps(good)); v["gates"][0]["kept"] = []; bad_variants.append(v)  # empty
    v = json.loads(json.dumps(good)); v["gates"][0]["kept"] = [1, 1, 2]; bad_variants.append(v)  # duplicate
    v = json.loads(json.dumps(good)); v["gates"][0]["kind"] = "qk"; bad_variants.append(v)  # unknown kind
    v = json.loads(json.dumps(good)); v["surprise"] = 1; bad_variants.append(v)  # extra key
    v = json.loads(json.dumps(good)); v["format"] = "other"; bad_variants.append(v)
    v = json.loads(json.dumps(good)); del v["gates"]; bad_variants.append(v)
    for v in bad_variants:
        with pytest.raises(PlanError) as info:
            PrunePlan.load(_write(tmp_path, v))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "other_kwargs",
    [dict(depth=2), dict(embed_dim=64, num_heads=4), dict(mlp_ratio=2.0)],
    ids=["depth", "width", "mlp_ratio"],
)
def test_plan_from_a_different_model_does_not_fit(gated, other_kwargs):
    p = plan(gated, 0.5)
    p.check_fits(gated)  # fits its own model
    other = add_gates(make_vit(**{"depth": DEPTH, **other_kwargs}))
    with pytest.raises(PlanError, match="plan does not fit the model"):
        p.check_fits(other)
    with pytest.raises(PlanError, match="does not fit"):
        apply_mask(other, p)
    with pytest.raises(PlanError, match="does not fit"):
        vtpdeploy.compact(other, p)
    assert all(torch.all(r.module.gate == 1) for r in iter_gates(other))  # untouched


def test_apply_mask_and_compact_need_gates(gated):
    p = plan(gated, 0.5)
    with pytest.raises(PlanError, match="gated model"):
        apply_mask(make_vit(depth=DEPTH), p)
    with pytest.raises(PlanError, match="gated model"):
        vtpdeploy.compact(make_vit(depth=DEPTH), p)


def test_low_rate_keeps_everything_when_nothing_rounds_to_removal(gated):
    p = plan(gated, 0.0004)  # round(0.0004 * 1008) == 0
    assert p.kept_dims == TOTAL and p.realised_rate == 0.0
    assert math.isfinite(p.thresholds["global"])
