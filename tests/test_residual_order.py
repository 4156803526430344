"""The default `cpu` profile: qkv/fc1 inputs keep the top of one shared residual ranking, so the compact model
reorders the residual stream once and slices its LayerNorm outputs instead of gathering them."""

from __future__ import annotations

import collections
import json

import onnx
import pytest
import torch
from conftest import gated_random, image_batch, make_vit, masked_and_compact, max_diff

import vtpdeploy
from vtpdeploy import plan
from vtpdeploy.deploy.export import export_onnx
from vtpdeploy.prune.inspection import input_selection
from vtpdeploy.prune.profiles import check_model, check_plan, constraints_for
from vtpdeploy.prune.residual import RestoreOrder, permute_outer, residual_order
from vtpdeploy.prune.schema import GatePlan, PrunePlan

ATOL = 1e-4
INPUTS = ("qkv_in", "mlp_in")
# (name, kwargs): the residual stream's outer tensors differ (dist token + second head, register tokens + fc_norm
# + LayerScale, pre-norm + no class embedding)
MODELS = [
    ("deit_tiny_patch16_224", dict(depth=3)),
    ("deit_base_distilled_patch16_224", dict(depth=2, embed_dim=192, num_heads=3)),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, embed_dim=96, depth=2, num_heads=3, class_token=False,
                                  global_pool="avg", fc_norm=True, reg_tokens=2, init_values=0.1)),
    ("vit_tiny_patch16_224", dict(img_size=40, patch_size=8, embed_dim=96, depth=2, num_heads=3, pre_norm=True,
                                  no_embed_class=True)),
]


def _gated(name: str, kwargs: dict, seed: int = 7):
    return gated_random(make_vit(name, **kwargs), seed=seed)  # gated_random randomizes LayerScale too


def _input_sets(p: PrunePlan) -> list[list[int]]:
    return [g.kept for g in p.gates if g.kind in INPUTS]


@pytest.mark.parametrize("name, kwargs", MODELS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MODELS)])
@pytest.mark.parametrize("rate", [0.4, 0.7])
def test_sliced_inputs_equal_the_hard_mask_model(name, kwargs, rate):
    model = _gated(name, kwargs)
    p = plan(model, rate, constraints=constraints_for("cpu"))
    assert p.constraints.shared_input_order
    sets = sorted(_input_sets(p), key=len)
    assert any(len(s) < model.embed_dim for s in sets)  # the plan does prune inputs, so slicing is exercised
    for small, big in zip(sets, sets[1:]):  # one shared ranking: every kept set holds the smaller ones
        assert set(small) <= set(big)
    masked, small = masked_and_compact(model, p)
    x = image_batch(model, batch=2)
    with torch.no_grad():
        ref, out = masked(x), small(x)
        assert max_diff(masked.forward_features(x), small.forward_features(x)) <= ATOL  # every token, original order
        assert max_diff(model(x), ref) > 1e-3  # the plan changes the function, so the check can fail
    assert max_diff(ref, out) <= ATOL
    assert small.vtp_spec.input_slices
    for blk, b in zip(small.blocks, range(p.num_blocks)):
        for module, kind in ((blk.attn, "qkv_in"), (blk.mlp, "mlp_in")):
            kept = len(p.gate(b, kind).kept)
            assert not module.gather_input and not hasattr(module, "in_index")
            assert module.slice_input == (kept < model.embed_dim) and module.in_width == kept
    assert check_plan(p) == [] and check_model(small, p.constraints) == []


def test_the_shared_ranking_keeps_the_cpu_gather_widths():
    """Only which input dims are kept changes: widths, params and MACs equal the per-block plan's."""
    model = _gated("deit_tiny_patch16_224", dict(depth=3))
    shared, own = (plan(model, 0.5, constraints=constraints_for(n)) for n in ("cpu", "cpu-gather"))
    assert [len(g.kept) for g in shared.gates] == [len(g.kept) for g in own.gates]
    assert [g.kept for g in shared.gates if g.kind not in INPUTS] == [g.kept for g in own.gates if g.kind not in INPUTS]
    assert _input_sets(shared) != _input_sets(own)  # per-block choices differ on random gates
    a, b = (vtpdeploy.compact(model, q) for q in (shared, own))
    assert vtpdeploy.count(a) == vtpdeploy.count(b)
    assert not b.vtp_spec.input_slices and any(blk.attn.gather_input for blk in b.blocks)
    assert residual_order(own) is None  # per-block sets do not nest: compaction keeps the gathers
    assert "shared_input_order" not in own.constraints.model_dump()  # older plan files stay byte-identical


def _gate_plans(sets: list[list[int]], size: int = 8) -> PrunePlan:
    gates = []
    for b, (qkv, mlp) in enumerate(zip(sets[::2], sets[1::2])):
        gates += [GatePlan(block=b, kind="qkv_in", size=size, kept=qkv),
                  GatePlan(block=b, kind="attn_v", size=size, kept=list(range(size))),
                  GatePlan(block=b, kind="mlp_in", size=size, kept=mlp),
                  GatePlan(block=b, kind="mlp_hidden", size=4 * size, kept=list(range(4 * size)))]
    return PrunePlan(rate=0.1, scope="global", importance="gate", num_heads=2, head_dim=4, thresholds={},
                     gates=gates)


def test_residual_order_makes_every_kept_set_a_prefix():
    sets = [[1, 3, 5, 6], [1, 5], list(range(8)), [0, 1, 3, 5, 6]]
    order = residual_order(_gate_plans(sets))
    assert sorted(order) == list(range(8))
    for s in sets:
        assert set(order[: len(s)]) == set(s)
    assert residual_order(_gate_plans([[1, 3], [1, 4], list(range(8)), list(range(8))])) is None  # same size, differ
    assert residual_order(_gate_plans([[1, 3], [2, 3, 4], list(range(8)), list(range(8))])) is None  # not nested
    assert residual_order(_gate_plans([list(range(8))] * 4)) is None  # nothing pruned: nothing to slice


@pytest.mark.parametrize("kwargs", [dict(global_pool="map", class_token=False), dict(num_classes=0)],
                         ids=["attention-pool", "feature-extractor"])
def test_features_and_heads_see_the_original_channel_order(kwargs):
    """The trunk runs on the reordered stream; after the final norm the order is restored, so features (a
    num_classes=0 model's output), attention pooling and heads are exactly the hard-mask model's."""
    model = gated_random(make_vit(depth=2, **kwargs), seed=3)
    p = plan(model, 0.5, constraints=constraints_for("cpu"))
    masked, small = masked_and_compact(model, p)
    x = image_batch(model, batch=2)
    with torch.no_grad():
        assert max_diff(masked.forward_features(x), small.forward_features(x)) <= ATOL
        assert max_diff(masked(x), small(x)) <= ATOL
    assert small.vtp_spec.input_slices and isinstance(small.norm, RestoreOrder)


def test_an_unknown_trunk_tensor_keeps_the_gathers():
    order = [2, 0, 1]
    state = {"cls_token": torch.arange(3.0).view(1, 1, 3), "norm.weight": torch.tensor([10.0, 11.0, 12.0])}
    out = permute_outer(state, order)
    assert out["cls_token"].flatten().tolist() == [2.0, 0.0, 1.0] and out["norm.norm.weight"].tolist() == [12.0, 10.0, 11.0]
    assert out["norm.index"].tolist() == [1, 2, 0]  # restores: permuted[index] is the original order
    assert permute_outer({**state, "mystery.weight": torch.ones(3)}, order) is None
    model = _gated("deit_tiny_patch16_224", dict(depth=2))
    gathered = vtpdeploy.compact(model, plan(model, 0.5, constraints=constraints_for("cpu-gather")))
    assert any("slices it" in v for v in check_model(gathered, constraints_for("cpu")))  # the promise is checked


def test_a_hand_edited_plan_that_does_not_nest_is_flagged():
    model = _gated("deit_tiny_patch16_224", dict(depth=2))
    p = plan(model, 0.5, constraints=constraints_for("cpu"))
    g = p.gate(1, "mlp_in")
    g.kept = sorted(set(range(g.size)) - set(g.kept[:16]))[: len(g.kept)]
    p.check_consistent()
    assert residual_order(p) is None
    assert any("not nested" in v for v in check_plan(p))


def test_sliced_model_saves_reloads_and_exports_without_input_gathers(tmp_path):
    model = _gated("deit_tiny_patch16_224", dict(depth=2))
    p = plan(model, 0.5, constraints=constraints_for("cpu"))
    small = vtpdeploy.compact(model, p).eval()
    vtpdeploy.save(small, tmp_path / "m")
    assert json.loads((tmp_path / "m.json").read_text())["input_slices"] is True
    back = vtpdeploy.load(tmp_path / "m").eval()
    x = image_batch(model, batch=2)
    with torch.no_grad():
        assert max_diff(back(x), small(x)) == 0.0
    export_onnx(small, tmp_path / "m.onnx", dynamic_batch=True, sample=x, atol=1e-4, threads=1)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    ops = collections.Counter(n.op_type for n in graph.node)
    layer_norm_picks = [n for n in graph.node if n.op_type in ("Gather", "Slice")  # of the blocks' norm1/norm2
                        and producers.get(n.input[0]) is not None
                        and producers[n.input[0]].op_type == "LayerNormalization"
                        and "/blocks/" in producers[n.input[0]].name]  # /model/blocks/...: traced behind forward(x)
    assert layer_norm_picks and {n.op_type for n in layer_norm_picks} == {"Slice"}
    assert ops["Slice"] >= len(layer_norm_picks)
    gathered = vtpdeploy.compact(model, plan(model, 0.5, constraints=constraints_for("cpu-gather")))
    vtpdeploy.save(gathered, tmp_path / "g")
    assert "input_slices" not in json.loads((tmp_path / "g.json").read_text())  # old files stay byte-identical
    assert input_selection(small).startswith("qkv/fc1 inputs: sliced in blocks 0, 1")  # what `inspect` prints
    assert input_selection(gathered).startswith("qkv/fc1 inputs: gathered")
