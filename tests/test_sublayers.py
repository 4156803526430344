"""Removed sublayers (`drop_sublayers`): an attention whose every head is dead, or an MLP with no hidden unit,
outputs only its constant proj / fc2 bias; compaction removes it whole, LayerNorm included, exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import gated_random, image_batch, make_vit, max_diff
from rich.console import Console
from test_compact import VARIANTS, _variant_id
from test_structures import _exact

import vtpdeploy
from vtpdeploy import PlanError, plan
from vtpdeploy.prune.gates import iter_gates
from vtpdeploy.prune.inspection import block_table, render_table
from vtpdeploy.prune.profiles import check_model, check_plan, constraints_for
from vtpdeploy.prune.sites import read_dims



@torch.no_grad()
def _weaken(model, sites: dict[int, str], factor: float = 1e-3) -> None:
    """Scale the gates of `sites` ({block: kind}) far below every other gate: a global τ then takes them all."""
    for ref in iter_gates(model):
        if sites.get(ref.block) == ref.kind:
            ref.module.gate.mul_(factor)


def _constraints(profile: str, granularity: str = "dim", drop: bool = True):
    return constraints_for(profile).model_copy(update={"granularity": granularity, "drop_sublayers": drop})


def _removed(small) -> dict[int, tuple[str, ...]]:
    return {i: b.removed_sublayers for i, b in enumerate(read_dims(small).blocks) if b.removed_sublayers}


@pytest.mark.parametrize("profile, granularity", [("cpu", "dim"), ("cpu", "head"), ("cpu-gather", "dim"),
                                                  ("none", "dim"), ("none", "head+dim")])
def test_dead_sublayers_are_removed_exactly(profile, granularity):
    model = gated_random(make_vit(depth=3), seed=4)
    _weaken(model, {0: "mlp_hidden", 1: "attn_v"})
    p = plan(model, 0.5, constraints=_constraints(profile, granularity))
    assert p.gate(1, "attn_v").kept == [] and p.gate(0, "mlp_hidden").kept == []
    assert p.removed_sublayers() == p.summary()["removed_sublayers"] == {"attn": [1], "mlp": [0]}
    small = _exact(model, p)
    assert _removed(small) == {0: ("mlp",), 1: ("attn",)}
    assert check_plan(p) == [] and check_model(small, p.constraints) == []
    attn, mlp = small.blocks[1].attn, small.blocks[0].mlp
    assert attn.removed and attn.num_heads == 0 and attn.qkv.weight.numel() == attn.proj.weight.numel() == 0
    assert mlp.removed and mlp.fc1.weight.numel() == mlp.fc2.weight.numel() == 0
    assert "removed" in repr(attn) and "removed" in repr(mlp)
    assert not small.blocks[0].attn.removed and not small.blocks[1].mlp.removed
    if p.constraints.shared_input_order:
        assert small.vtp_spec.input_slices  # the dead sublayers' input gates do not break the nesting


def test_without_drop_sublayers_every_sublayer_keeps_its_minimum():
    model = gated_random(make_vit(depth=3), seed=4)
    _weaken(model, {0: "mlp_hidden", 1: "attn_v"})
    for granularity in ("dim", "head"):
        c = _constraints("cpu", granularity, drop=False)
        p = plan(model, 0.5, constraints=c)
        assert p.gate(1, "attn_v").kept and len(p.gate(0, "mlp_hidden").kept) == c.min_for("mlp_hidden")
        assert _removed(vtpdeploy.compact(model, p)) == {}
        dead = p.model_copy(deep=True)
        dead.gate(1, "attn_v").kept = []
        assert any("attn_v: kept 0" in v for v in check_plan(dead))  # 0 is not a feasible width without the flag
        assert not any("attn_v: kept 0" in v for v in check_plan(dead, _constraints("cpu", granularity)))


def test_only_attn_v_and_mlp_hidden_may_keep_nothing():
    model = gated_random(make_vit(depth=2))
    p = plan(model, 0.5)
    p.gate(0, "attn_v").kept = []
    p.gate(1, "mlp_hidden").kept = []
    p.check_consistent()  # removable sublayers
    _exact(model, p)  # a hand-made plan compacts exactly too, whatever its constraints say
    p.gate(0, "qkv_in").kept = []
    with pytest.raises(PlanError, match="blocks.0.qkv_in: kept dims must be non-empty") as info:
        p.check_consistent()
    assert "\n" not in str(info.value)


def test_removed_sublayers_leave_the_onnx_graph_and_round_trip(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from vtpdeploy.deploy.export import export_onnx

    model = gated_random(make_vit(depth=3), seed=4)
    _weaken(model, {0: "mlp_hidden", 1: "attn_v", 2: "attn_v"})
    p = plan(model, 0.5, constraints=_constraints("cpu"))
    small = _exact(model, p)
    assert _removed(small) == {0: ("mlp",), 1: ("attn",), 2: ("attn",)}
    res = export_onnx(small, tmp_path / "m.onnx", openvino=False)  # validates ORT vs torch (1e-4)
    ops = [n.op_type for n in onnx.load(str(res.path)).graph.node]
    assert ops.count("Softmax") == 1  # only block 0 attends
    assert ops.count("LayerNormalization") == 2 * 3 + 1 - 3  # a removed sublayer takes its LayerNorm along
    assert not any(0 in tuple(i.dims) for i in onnx.load(str(res.path)).graph.initializer)
    # saving: the spec records zero widths and rebuilds the same modules
    vtpdeploy.save(small, tmp_path / "m")
    spec = json.loads((tmp_path / "m.json").read_text())
    assert [sum(b["v_dims"]) == 0 for b in spec["blocks"]] == [False, True, True]
    assert [b["mlp_hidden"] for b in spec["blocks"]][0] == 0
    back = vtpdeploy.load(tmp_path / "m").eval()
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(back(x), small(x)) == 0.0
    # inspection: a removed sublayer keeps 0 dims at each of its places and counts no MACs
    rows, totals = block_table(small, None)
    assert rows[1]["removed"] == ["attn"] and rows[1]["qkv_in"] == rows[1]["attn_v"] == 0
    assert rows[0]["removed"] == ["mlp"] and rows[0]["mlp_in"] == rows[0]["mlp_hidden"] == 0
    fc1, fc2 = small.blocks[1].mlp.fc1, small.blocks[1].mlp.fc2
    assert rows[1]["macs"] == read_dims(small).tokens * (fc1.in_features * fc1.out_features + fc2.in_features * 48)
    console = Console(record=True, width=200)
    console.print(render_table(rows, totals))
    assert "removed" in console.export_text()


def test_removed_sublayers_pass_readiness_and_cost_nothing_in_latency_tables(tmp_path):
    from helpers import FakeMeasure

    from vtpdeploy.latency import measure_table
    from vtpdeploy.deploy.export.readiness import model_widths
    from vtpdeploy.latency import plan_for_latency

    model = gated_random(make_vit(embed_dim=192, num_heads=3, depth=2), seed=7)
    _weaken(model, {1: "attn_v"})
    p = plan(model, 0.5, constraints=_constraints("cpu"))
    small = vtpdeploy.compact(model, p)
    widths = model_widths(small)
    assert [a["name"] for a in widths["attention"]] == ["blocks.0.attn"]
    assert all(lin["in"] and lin["out"] for lin in widths["linear"])
    c = _constraints("cpu")
    table = measure_table(model, "ort", cache_dir=tmp_path, measure_fn=FakeMeasure(), device_label="x", points=5,
                          constraints=c)
    assert table.attn_ms(192, 0) == 0.0 and table.mlp_ms(192, 0) == 0.0 and table.attn_ms(192, 8) > 0
    # with a budget below what the narrowest live widths cost, only removing a sublayer reaches it
    narrowest = table.stem_ms + 2 * (table.attn_ms(32, 8) + table.mlp_ms(32, 64))
    lp = plan_for_latency(model, 0.98 * table.calibrated(narrowest), table, c)
    assert lp.gate(1, "attn_v").kept == []  # the weakened attention is the one removed
    assert check_plan(lp) == []
    with pytest.raises(PlanError, match="not reachable"):
        plan_for_latency(model, 0.98 * table.calibrated(narrowest), table, _constraints("cpu", drop=False))


def test_recipe_flag_reaches_the_plan_and_stays_out_of_old_recipes():
    from vtpdeploy.latency import make_plan
    from vtpdeploy.train.recipe import Recipe

    r = Recipe.model_validate({"prune": {"rate": 0.5, "hardware": "cpu"}})
    assert "drop_sublayers" not in r.prune.model_dump()
    assert "drop_sublayers" not in json.loads(plan(gated_random(make_vit(depth=2)), 0.4,
                                                   constraints=constraints_for("cpu")).model_dump_json())["constraints"]
    model = gated_random(make_vit(depth=3), seed=4)
    _weaken(model, {1: "attn_v"})
    on = Recipe.model_validate({"prune": {"rate": 0.5, "hardware": "cpu", "drop_sublayers": True}})
    assert on.prune.model_dump()["drop_sublayers"] is True
    p_on, _ = make_plan(model, on.prune)
    p_off, _ = make_plan(model, r.prune)
    assert p_on.constraints.drop_sublayers and p_on.gate(1, "attn_v").kept == []
    assert p_off.gate(1, "attn_v").kept


@pytest.mark.slow  # 10 timm variants: a minute on 2 shared cores
@pytest.mark.parametrize("name, kwargs, scope, rate, batch", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def test_removed_sublayers_are_exact_on_spine_variants(name, kwargs, scope, rate, batch):
    model = gated_random(make_vit(name, **kwargs), seed=7)  # gated_random randomizes LayerScale too
    last = len(model.blocks) - 1
    _weaken(model, {0: "attn_v", last: "mlp_hidden"})
    for profile, granularity in [("cpu", "head"), ("none", "dim")]:
        p = plan(model, min(rate, 0.5), constraints=_constraints(profile, granularity))  # one global τ
        small = _exact(model, p)
        assert _removed(small) == {0: ("attn",), last: ("mlp",)}
        assert check_model(small, p.constraints) == []
