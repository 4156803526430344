"""Issue 13 structures: gather-free compact models (`cpu-nogather`; `cpu`, whose inputs are sliced), dead heads
removed whole, and head-granular plans (`granularity` head / head+dim). Each is exact against the hard-mask model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import gated_random, image_batch, make_vit, masked_and_compact, max_diff
from test_compact import VARIANTS, _variant_id

import vtpdeploy
from vtpdeploy import PlanError, WidthConstraints, plan
from vtpdeploy.errors import RecipeError
from vtpdeploy.prune.gates import iter_gates
from vtpdeploy.prune.inspection import block_table
from vtpdeploy.prune.profiles import check_model, check_plan, constraints_for
from vtpdeploy.prune.schema import PrunePlan
from vtpdeploy.prune.sites import read_dims
from vtpdeploy.prune.widths import rate_bound

ATOL = 1e-4
MID = {"embed_dim": 192, "num_heads": 3, "depth": 2}  # head_dim 64 as DeiT
# (profile, granularity): the new structures
STRUCTURES = [("cpu-nogather", "dim"), ("cpu", "head"), ("cpu", "head+dim"), ("none", "head")]


def _exact(model, p) -> torch.nn.Module:
    """compact vs hard mask on all tokens and logits (<= ATOL); returns the compact model."""
    masked, small = masked_and_compact(model, p)
    x = image_batch(model, batch=2)
    with torch.no_grad():
        f_ref, f_out = masked.forward_features(x), small.forward_features(x)
        assert max_diff(f_ref, f_out) <= ATOL
        ref, out = masked.forward_head(f_ref), small.forward_head(f_out)
        assert max_diff(ref, out) <= ATOL
        assert max_diff(model(x), ref) > 1e-3  # the plan changes the function, so the checks can fail
    return small


def _check_structure(model, p, small, profile: str, granularity: str) -> None:
    D, hd = model.embed_dim, model.blocks[0].attn.head_dim
    assert check_plan(p) == [] and check_model(small, p.constraints) == []
    for b, blk in enumerate(small.blocks):
        attn, v = blk.attn, p.v_dims_per_head(b)
        live = [d for d in v if d]
        assert attn.num_heads == p.live_heads(b) == len(live) >= 1
        assert attn.v_dims == live and attn.removed_heads == [h for h, d in enumerate(v) if d == 0]
        assert attn.qkv.out_features == 2 * len(live) * hd + sum(live)  # dead heads lose Q/K rows too
        if profile == "cpu-nogather":
            assert attn.qkv.in_features == blk.mlp.fc1.in_features == D
            assert not attn.gather_input and not blk.mlp.gather_input
        if p.constraints.shared_input_order:  # `cpu`: pruned inputs are slices of the reordered residual stream
            assert not attn.gather_input and not blk.mlp.gather_input
            assert attn.slice_input == (attn.in_width < D) and blk.mlp.slice_input == (blk.mlp.in_width < D)
        if granularity == "head":
            assert set(live) == {hd}  # whole heads only
        if profile != "none":
            assert len(set(live)) == 1  # head-aligned among the live heads


@pytest.mark.slow  # 10 timm variants x 4 structures: minutes on 2 shared cores
@pytest.mark.parametrize("name, kwargs, scope, rate, batch", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def test_structures_equal_hard_mask_on_spine_variants(name, kwargs, scope, rate, batch):
    model = gated_random(make_vit(name, **kwargs), seed=7)  # gated_random randomizes LayerScale too
    removed = 0
    for profile, granularity in STRUCTURES:
        r = min(rate, 0.5)  # cpu-nogather prunes 5/7 of the gated dims: 0.7+ is out of its reach
        p = plan(model, r, scope=scope, constraints=constraints_for(profile), granularity=granularity)
        assert p.constraints.granularity == granularity
        small = _exact(model, p)
        _check_structure(model, p, small, profile, granularity)
        removed += sum(len(b.attn.removed_heads) for b in small.blocks)
    assert removed > 0  # head granularity removed whole heads somewhere


def _handmade(model, v_kept: dict[int, list[int]]) -> PrunePlan:
    p = plan(model, 0.3, scope="per_layer")
    for b, kept in v_kept.items():
        p.gate(b, "attn_v").kept = sorted(kept)
    p.check_consistent()
    return p


def _attention_macs(tokens: int, blk) -> int:
    a = blk.attn
    linears = [a.qkv, a.proj, blk.mlp.fc1, blk.mlp.fc2]
    return tokens * sum(m.in_features * m.out_features for m in linears) + tokens**2 * a.num_heads * (a.head_dim + a.max_v)


def test_dead_heads_are_removed_and_counted_saved_inspected(tmp_path):
    model = gated_random(make_vit(depth=2), seed=3)  # 3 heads of 16
    # block 0: head 1 dead, uneven live heads; block 1: only head 2 lives
    p = _handmade(model, {0: list(range(16)) + [32 + d for d in range(5)], 1: [32, 40, 47]})
    small = _exact(model, p)
    b0, b1 = small.blocks[0].attn, small.blocks[1].attn
    assert (b0.num_heads, b0.v_dims, b0.removed_heads) == (2, [16, 5], [1])
    assert (b1.num_heads, b1.v_dims, b1.removed_heads) == (1, [3], [0, 1])
    assert "removed_heads=[0, 1]" in repr(b1)
    # read_dims / inspection see the live heads
    dims = read_dims(small)
    assert [(b.num_heads, b.removed_heads, b.v_dims) for b in dims.blocks] == [(2, 1, [16, 5]), (1, 2, [3])]
    rows, totals = block_table(small, None)
    tokens = dims.tokens
    # counting: the per-block MACs are exactly the live heads' QK^T / AV plus the Linears
    assert [r["macs"] for r in rows] == [_attention_macs(tokens, blk) for blk in small.blocks]
    assert rows[1]["v_dims"] == [3]
    # the same plan without dead heads costs more: every head keeps 1 V dim
    p_live = _handmade(model, {0: list(range(16)) + [16] + [32 + d for d in range(5)], 1: [0, 16, 32, 40, 47]})
    assert vtpdeploy.count(vtpdeploy.compact(model, p_live))["macs"] > totals["macs"]
    # saving: safetensors + JSON spec round trip rebuilds the reduced heads
    vtpdeploy.save(small, tmp_path / "m")
    spec = json.loads((tmp_path / "m.json").read_text())
    assert [blk["v_dims"] for blk in spec["blocks"]] == [[16, 0, 5], [0, 0, 3]]
    back = vtpdeploy.load(tmp_path / "m")
    assert repr(back) == repr(small)
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(back(x), small(x)) == 0.0


def test_dead_heads_leave_the_onnx_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from vtpdeploy.deploy.export import export_onnx

    model = gated_random(make_vit(depth=2), seed=3)
    p = _handmade(model, {0: list(range(16)) + [32 + d for d in range(5)], 1: [32, 40, 47]})
    small = vtpdeploy.compact(model, p).eval()
    res = export_onnx(small, tmp_path / "m.onnx", simplify=False, openvino=False)  # validates vs torch (1e-4)
    shapes = [tuple(i.dims) for i in onnx.load(str(res.path)).graph.initializer]
    qkv_in = [len(p.gate(b, "qkv_in").kept) for b in range(2)]
    assert (qkv_in[0], 2 * 2 * 16 + 21) in shapes or (2 * 2 * 16 + 21, qkv_in[0]) in shapes
    assert (qkv_in[1], 2 * 16 + 3) in shapes or (2 * 16 + 3, qkv_in[1]) in shapes
    for full_rows in (2 * 3 * 16 + 21, 2 * 3 * 16 + 3):  # what qkv would be with the dead heads' Q/K rows
        assert not any(full_rows in s for s in shapes)


@pytest.mark.parametrize("granularity", ["head", "head+dim"])
def test_head_plans_keep_a_head_per_block_even_at_high_rates(granularity):
    model = gated_random(make_vit(**MID), seed=11)
    for scope, rate in [("global", 0.9), ("per_layer", 0.95)]:
        p = plan(model, rate, scope=scope, constraints=constraints_for("cpu"), granularity=granularity)
        assert all(p.live_heads(b) >= 1 for b in range(p.num_blocks))
        _exact(model, p)
    c = constraints_for("cpu").model_copy(update={"min_width": {"attn_v": 100}})  # 100 dims: 2 heads of 64
    p = plan(model, 0.9, constraints=c, granularity="head")
    assert all(p.live_heads(b) == 2 for b in range(p.num_blocks))


@pytest.mark.parametrize("importance", ["gate", "weight_l1"])
def test_head_granularity_removes_the_heads_with_least_v_mass(importance):
    model = gated_random(make_vit(depth=2), seed=5)  # 3 heads of 16 per block
    mass = {0: [0.9, 0.2, 0.6], 1: [0.3, 0.8, 0.5]}
    with torch.no_grad():
        for ref in iter_gates(model):
            if ref.kind == "attn_v":
                ref.module.gate.copy_(torch.tensor(mass[ref.block]).repeat_interleave(16))
        if importance == "weight_l1":  # equal column norms: only the gate scales the score
            for blk in model.blocks:
                w = blk.attn.proj.linear.weight
                w.copy_(w.sign() * w.abs().mean())
    # per_layer: every attn_v gate loses 1/3 -> exactly its lowest-mass head goes
    p = plan(model, 1 / 3, scope="per_layer", importance=importance, granularity="head")
    assert p.v_dims_per_head(0) == [16, 0, 16] and p.v_dims_per_head(1) == [0, 16, 16]
    _exact(model, p)


@pytest.mark.parametrize("profile, granularity", STRUCTURES + [("gpu-int8", "head"), ("gpu-fp16", "head+dim")])
@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_new_structures_realise_the_rate(profile, granularity, rate):
    model = gated_random(make_vit(**MID), seed=21)
    c = constraints_for(profile).model_copy(update={"granularity": granularity})
    p = plan(model, rate, constraints=c)
    sizes = {(g.block, g.kind): g.size for g in p.gates}
    bound = rate_bound(c, sizes, 3, 64)
    assert abs(p.realised_rate - rate) <= max(bound, 1.0 / p.total_dims), (p.realised_rate, bound)
    assert abs(p.realised_rate - rate) <= 0.02  # as the existing profiles (tests/test_hardware.py RATE_TOL)
    assert check_plan(p) == []


def test_nogather_moves_the_input_share_to_v_and_hidden_and_refuses_what_it_cannot_reach():
    model = gated_random(make_vit(**MID), seed=2)
    p = plan(model, 0.4, constraints=constraints_for("cpu-nogather"))
    kinds = p.summary()["per_kind"]
    assert kinds["qkv_in"]["kept"] == kinds["qkv_in"]["total"] and kinds["mlp_in"]["kept"] == kinds["mlp_in"]["total"]
    removed = sum(k["total"] - k["kept"] for k in kinds.values())
    assert abs(removed - 0.4 * p.total_dims) <= 64  # one V head step
    for scope in ("per_kind", "per_layer"):
        assert abs(plan(model, 0.4, scope=scope, constraints=constraints_for("cpu-nogather")).realised_rate - 0.4) < 0.03
    with pytest.raises(PlanError, match="too high for profile cpu-nogather") as info:
        plan(model, 0.75, constraints=constraints_for("cpu-nogather"))
    assert "\n" not in str(info.value)
    with pytest.raises(PlanError, match="unknown granularity"):
        plan(model, 0.4, granularity="heads")
    with pytest.raises(ValueError, match="unknown gate kind"):
        WidthConstraints.model_validate({"keep_full": ["qkv"]})


def test_plan_json_and_recipe_stay_byte_identical_by_default(tmp_path):
    from vtpdeploy.train.recipe import load_recipe, section_json

    model = gated_random(make_vit(**MID), seed=4)
    default = plan(model, 0.4, constraints=constraints_for("cpu"))
    text = default.save(tmp_path / "d.json").read_text()
    assert "granularity" not in text and "keep_full" not in text
    assert "granularity" not in section_json(load_recipe(None), "prune")
    for profile, granularity in STRUCTURES:
        p = plan(model, 0.4, constraints=constraints_for(profile), granularity=granularity)
        back = PrunePlan.load(p.save(tmp_path / f"{profile}-{granularity}.json"))
        assert back == p and check_plan(back) == []
        assert back.constraints.granularity == granularity
    r = load_recipe(None, ["prune.granularity=head+dim", "prune.hardware=cpu-nogather"])
    assert (r.prune.granularity, r.prune.hardware) == ("head+dim", "cpu-nogather")
    with pytest.raises(RecipeError):
        load_recipe(None, ["prune.granularity=block"])


def test_nogather_onnx_has_no_more_gathers_than_the_unpruned_model(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from vtpdeploy.deploy.export import export_onnx

    def gathers(module, name) -> int:
        res = export_onnx(module, tmp_path / f"{name}.onnx", simplify=False, openvino=False)  # validated vs torch
        return sum(n.op_type == "Gather" for n in onnx.load(str(res.path)).graph.node)

    model = gated_random(make_vit(depth=2), seed=8)
    unpruned = gathers(make_vit(depth=2), "unpruned")
    default = gathers(vtpdeploy.compact(model, plan(model, 0.4, constraints=constraints_for("cpu"))).eval(), "cpu")
    p = plan(model, 0.4, constraints=constraints_for("cpu-nogather"))
    assert gathers(vtpdeploy.compact(model, p).eval(), "nogather") == unpruned < default  # the per-block input gathers are gone


def test_whole_heads_split_qkv_like_the_unpruned_model(tmp_path):
    """Whole-head V (every live V head full width) takes timm's one reshape/permute of qkv: the ONNX graph has
    as many Split / Transpose / Slice nodes as the unpruned model's, not an extra Slice + Transpose per block."""
    pytest.importorskip("onnxruntime")
    from collections import Counter

    import onnx

    from vtpdeploy.deploy.export import export_onnx

    def ops(module, name) -> Counter:
        res = export_onnx(module, tmp_path / f"{name}.onnx", openvino=False)  # simplified, validated vs torch
        return Counter(n.op_type for n in onnx.load(str(res.path)).graph.node)

    model = gated_random(make_vit(depth=2), seed=8)
    heads = vtpdeploy.compact(model, plan(model, 0.4, constraints=constraints_for("cpu-nogather"),
                                          granularity="head")).eval()
    dims = vtpdeploy.compact(model, plan(model, 0.4, constraints=constraints_for("cpu-nogather"))).eval()
    assert all(b.attn.full_v for b in heads.blocks) and not any(b.attn.full_v for b in dims.blocks)
    assert any(b.attn.removed_heads for b in heads.blocks)
    unpruned, whole, narrow = ops(make_vit(depth=2), "unpruned"), ops(heads, "heads"), ops(dims, "dims")
    for op in ("Split", "Transpose", "Slice"):
        assert whole[op] == unpruned[op], op
    assert narrow["Transpose"] > unpruned["Transpose"]  # narrower V heads still need their own transpose
