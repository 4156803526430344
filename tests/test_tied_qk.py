"""Tied Q/K gates (`add_gates(model, qk_dims="tied")`): the attn_v gate also scales Q, so plans prune Q/K head dims
with V. Gate placement, compact vs hard mask (fp64), ONNX Runtime parity, save/load, refusals, stage-key stability
and a 3x-fewer-MACs plan with the block inputs kept full."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import timm
import torch
from conftest import image_batch, masked_and_compact, max_diff, randomize_gates, randomize_head, randomize_layer_scale
from helpers import make_vit

import vtpdeploy
from vtpdeploy import PlanError, UnsupportedModelError, add_gates, plan
from vtpdeploy.prune.arch import create_timm
from vtpdeploy.prune.gates import GatedLinear, TiedQKGatedLinear, iter_gates, l1_penalty
from vtpdeploy.prune.mac_target import MAC_TOLERANCE, compact_macs, plan_to_macs
from vtpdeploy.prune.profiles import check_model, constraints_for
from vtpdeploy.prune.sites import read_dims

torch.set_num_threads(1)  # as test_families: tiny models, 2 shared cores
SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}


def _tied(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random LayerScale, head and (signed, untied) gates on a tied Q/K gated `model`, in eval mode."""
    randomize_layer_scale(model, seed + 1)
    randomize_head(model, seed + 2)
    add_gates(model, qk_dims="tied")
    return randomize_gates(model, seed).eval()


def test_tied_gate_scales_the_query_dims_of_its_head():
    model = add_gates(make_vit(), qk_dims="tied")
    attn = model.blocks[0].attn
    assert isinstance(attn.qkv, TiedQKGatedLinear) and isinstance(attn.proj, GatedLinear)
    assert attn.qkv._v_site[0].gate is attn.proj.gate  # one parameter, read by reference
    assert len(list(iter_gates(model))) == 8 and sum(k.endswith(".gate") for k in model.state_dict()) == 8
    with torch.no_grad():  # attn_v counted once
        assert float(l1_penalty(model)) == float(l1_penalty(add_gates(make_vit())))
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        before = attn.qkv(x)
        attn.proj.gate[16 + 5] = 0.0  # head 1, dim 5
        attn.proj.gate[2] = -0.5  # head 0, dim 2
        after = attn.qkv(x)
    assert torch.equal(after[..., 21], torch.zeros_like(after[..., 21]))  # Q of head 1, dim 5 removed
    assert torch.allclose(after[..., 2], -0.5 * before[..., 2])
    assert torch.equal(after[..., 48:], before[..., 48:])  # K and V untouched
    others = [i for i in range(48) if i not in (2, 21)]
    assert torch.equal(after[..., others], before[..., others])


def test_tied_gates_at_init_equal_the_ungated_model():
    model = make_vit()
    randomize_head(model)
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(model(x), add_gates(copy.deepcopy(model), qk_dims="tied").eval()(x)) <= 1e-6


@pytest.mark.parametrize("profile, rate, dead_head", [("none", 0.5, False), ("cpu", 0.5, False), ("none", 0.3, True)])
def test_tied_compact_equals_hard_mask_in_fp64(profile, rate, dead_head):
    model = _tied(create_timm("deit3_small_patch16_224", SMALL).double())  # LayerScale folds into proj too
    p = plan(model, rate, constraints=constraints_for(profile))
    if dead_head:  # head 1 of block 0 keeps no V (so no Q/K) dim; head 0 keeps 3
        p.gate(0, "attn_v").kept = [0, 5, 9, 32, 40]
    masked, small = masked_and_compact(model, p)
    x = image_batch(model, batch=3).double()
    with torch.no_grad():
        ref, out = masked(x), small(x)
    assert max_diff(ref, out) <= 1e-9 and ref.abs().max() > 1e-3
    for b, block in enumerate(small.blocks):
        v = [n for n in p.v_dims_per_head(b) if n]
        assert block.attn.qk_dims == v == block.attn.v_dims  # Q/K keep exactly the V dims of each live head
        assert block.attn.qkv.out_features == 3 * sum(v)
    assert read_dims(small).blocks[0].qk_dims == tuple(small.blocks[0].attn.qk_dims)
    if dead_head:
        assert small.blocks[0].attn.removed_heads == [1]
    assert compact_macs(model, p) == vtpdeploy.count(small)["macs"]  # the meta-device count is the real one
    full = vtpdeploy.compact(_full_layout(model), p)
    assert vtpdeploy.count(small)["macs"] < vtpdeploy.count(full)["macs"]


def _full_layout(tied: torch.nn.Module) -> torch.nn.Module:
    """The same weights and gates with full Q/K gates."""
    model = copy.deepcopy(tied)
    for block in model.blocks:
        block.attn.qkv = GatedLinear(block.attn.qkv.linear, "qkv_in")
    with torch.no_grad():
        for a, b in zip(iter_gates(model), iter_gates(tied)):
            a.module.gate.copy_(b.module.gate)
    return model


def test_tied_compact_exports_to_onnx_within_tolerance(tmp_path):
    from vtpdeploy.deploy.export import export_onnx

    model = _tied(make_vit())
    small = vtpdeploy.compact(model, plan(model, 0.5)).eval()  # paper-faithful: uneven heads, padded Q/K and V
    assert len(set(small.blocks[0].attn.qk_dims)) > 1 and small.blocks[0].attn.scale == 16 ** -0.5
    res = export_onnx(small, tmp_path / "tied.onnx", batch=2, simplify=False, openvino=False)
    assert res.opset == 17 and res.validations and all(v["passed"] for v in res.validations)
    assert max(v["max_abs_diff"] for v in res.validations) <= 1e-4


def test_tied_gated_and_compact_models_save_and_load(tmp_path):
    model = _tied(make_vit())
    x = image_batch(model)
    vtpdeploy.save(model, tmp_path / "gated")
    assert json.loads((tmp_path / "gated.json").read_text())["qk_dims"] == "tied"
    back = vtpdeploy.load(tmp_path / "gated")
    assert isinstance(back.blocks[1].attn.qkv, TiedQKGatedLinear)
    assert back.blocks[1].attn.qkv._v_site[0] is back.blocks[1].attn.proj
    small = vtpdeploy.compact(back, plan(back, 0.5))
    vtpdeploy.save(small, tmp_path / "small")
    spec = json.loads((tmp_path / "small.json").read_text())
    assert "qk_dims" not in spec and spec["blocks"][0]["qk_dims"] == spec["blocks"][0]["v_dims"]
    with torch.no_grad():
        assert max_diff(back(x), model(x)) == 0.0
        assert max_diff(vtpdeploy.load(tmp_path / "small")(x), small.eval()(x)) == 0.0
    vtpdeploy.save(vtpdeploy.compact(_full_layout(model), plan(model, 0.5)), tmp_path / "full")
    assert "qk_dims" not in (tmp_path / "full.json").read_text()  # the full layout's files are as before


@pytest.mark.parametrize("name, kwargs, words", [
    ("vit_tiny_patch16_224", {**SMALL, "qk_norm": True}, "qk-norm"),
    ("eva02_tiny_patch14_224", SMALL, "RoPE"),
])
def test_tied_gates_are_refused_where_they_are_not_exact(name, kwargs, words):
    model = create_timm(name, kwargs)
    with pytest.raises(UnsupportedModelError, match=words) as err:
        add_gates(model, qk_dims="tied")
    assert "\n" not in str(err.value)
    assert not list(iter_gates(model))  # refused before any gate is placed


def test_latency_guided_planning_refuses_tied_gates_in_one_line():
    from vtpdeploy.latency import make_plan
    from vtpdeploy.train.recipe import load_recipe

    model = add_gates(make_vit(), qk_dims="tied")
    prune = load_recipe(None, ["prune.target_latency_ms=1.0"]).prune
    with pytest.raises(PlanError, match="tied Q/K") as err:
        make_plan(model, prune)
    assert "\n" not in str(err.value) and "sparsify.qk_dims" in str(err.value)


def test_qk_dims_default_keeps_the_stage_keys():
    from vtpdeploy.errors import RecipeError
    from vtpdeploy.train.recipe import load_recipe, section_json

    def digest(recipe, section):
        return hashlib.sha256(section_json(recipe, section).encode()).hexdigest()[:16]

    # The Fashion-MNIST recipe now defaults to the frontier's winner; its paper-faithful arms pin the old settings
    # (benchmarks/fashion_arms.PAPER_GATES, PINNED_PRUNE and prune.hardware=cpu) and must keep their run dirs' keys.
    paper = ["sparsify.qk_dims=full", "sparsify.lam=0.0005", "prune.hardware=cpu", "prune.target_macs=null",
             "prune.drop_sublayers=false"]
    quick, fashion = load_recipe(None), load_recipe("recipes/fashion_mnist.yaml", paper)
    # Recorded before qk_dims existed: existing run dirs (benchmarks/fashion_base included) keep their keys.
    assert digest(quick, "sparsify") == "0ff07f98315f0cbd" and digest(fashion, "sparsify") == "a2ef383dc05bb054"
    assert digest(quick, "prune") == digest(fashion, "prune") == "59dec70526ca17fa"
    tied = load_recipe(None, ["sparsify.qk_dims=tied"])
    assert tied.sparsify.qk_dims == "tied" and '"qk_dims": "tied"' in section_json(tied, "sparsify")
    with pytest.raises(RecipeError, match="qk_dims"):
        load_recipe(None, ["sparsify.qk_dims=half"])


def test_tied_compact_model_meets_the_gpu_fp16_profile():
    model = _tied(make_vit(embed_dim=96))  # head dim 32: the profile allows 16, 24 or 32 Q/K/V dims per head
    c = constraints_for("gpu-fp16")
    small = vtpdeploy.compact(model, plan(model, 0.5, constraints=c))
    dims = read_dims(small).blocks
    assert all(d.qk_dims == tuple(d.v_dims) for d in dims)
    assert {q for d in dims for q in d.qk_dims} <= {16, 24, 32} and min(q for d in dims for q in d.qk_dims) < 32
    assert check_model(small, c) == []
    from vtpdeploy.deploy.export.readiness import model_widths

    assert [b["qk_head_dim"] for b in model_widths(small)["attention"]] == [max(d.qk_dims) for d in dims]


def test_a_third_of_the_macs_is_reachable_with_tied_qk_and_full_inputs():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, embed_dim=96,
                              depth=6, num_heads=3, num_classes=10).eval()  # recipes/fashion_mnist.yaml's model
    randomize_gates(add_gates(model, qk_dims="tied"), signed=False)
    p = plan_to_macs(model, 1 / 3, constraints=constraints_for("cpu-nogather"))
    share = compact_macs(model, p) / vtpdeploy.count(model)["macs"]
    assert abs(share - 1 / 3) <= MAC_TOLERANCE / 3 and p.thresholds["macs_share"] == round(share, 5)
    assert all(len(p.gate(b, k).kept) == 96 for b in range(6) for k in ("qkv_in", "mlp_in"))  # inputs full
    assert sum(len(g.kept) for g in p.gates if g.kind == "attn_v") < 6 * 96  # Q/K/V head dims pruned


@pytest.mark.parametrize("sets, words", [
    (["prune.target_latency_ms=2"], ("sparsify.qk_dims tied", "target_latency_ms")),
    (["model.name=eva02_tiny_patch14_224"], ("RoPE",)),
])
def test_pipeline_refuses_tied_qk_before_any_stage(tmp_path, sets, words):
    from helpers import assert_one_line_error, run_cli_inprocess, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", {"sparsify.qk_dims": "tied"})
    args = [a for s in sets for a in ("--set", s)]
    proc = run_cli_inprocess("pipeline", recipe, "--out", tmp_path / "run", *args)
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "run" / "unpruned.safetensors").exists()  # refused before training
