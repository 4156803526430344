"""The one map of a timm ViT (`prune.sites`): site access, unwrap, the width reader, bias-free Linears and image channels."""

from __future__ import annotations

import pytest
import torch
from conftest import gated_random, make_vit, masked_and_compact, max_diff
from torch import nn

import vtpdeploy
from vtpdeploy import GATE_KINDS, UnsupportedModelError
from vtpdeploy.latency import model_dims
from vtpdeploy.deploy.export.readiness import model_widths
from vtpdeploy.prune.arch import infer_kwargs
from vtpdeploy.prune.gates import GatedLinear
from vtpdeploy.prune.inspection import block_widths
from vtpdeploy.prune.arch import create_timm
from vtpdeploy.prune.sites import image_chans, read_dims, site, site_sizes, unwrap

# conftest's tiny ViT: 4x4 patches + cls = 17 tokens, embed 48, 3 heads of 16 dims, hidden 192, depth 2.
FULL = {"qkv_in": 48, "attn_v": 48, "mlp_in": 48, "mlp_hidden": 192}


def test_sites_are_the_linears_behind_the_gates(tiny_vit):
    model = tiny_vit()
    linears = {(i, kind): site(b, kind) for i, b in enumerate(model.blocks) for kind in GATE_KINDS}
    assert all(isinstance(m, nn.Linear) for m in linears.values())
    vtpdeploy.add_gates(model)
    for ref in vtpdeploy.iter_gates(model):
        gated = site(model.blocks[ref.block], ref.kind)
        assert isinstance(gated, GatedLinear) and unwrap(gated) is linears[(ref.block, ref.kind)]
    assert site_sizes(model) == {(i, k): FULL[k] for i in range(2) for k in GATE_KINDS}


def test_read_dims_of_plain_gated_masked_and_compact_models():
    model = gated_random(make_vit(), seed=3)
    p = vtpdeploy.plan(model, 0.5)
    masked, small = masked_and_compact(model, p)
    plain = make_vit()
    for m in (plain, model, masked, small):
        d = read_dims(m)
        assert (d.embed_dim, d.depth, d.num_heads, d.head_dim, d.tokens, d.in_chans, d.num_classes) == \
            (48, 2, 3, 16, 17, 3, 10)
        assert d.img_size == [32, 32] and d.qkv_bias
    for m in (plain, model):  # nothing pruned: kept == built == full
        assert all(b.size == FULL == b.kept and b.v_dims == [16] * 3 and not b.compact for b in read_dims(m).blocks)
    kept = {b: {k: len(p.gate(b, k).kept) for k in GATE_KINDS} for b in range(2)}
    assert kept[0] != FULL  # the plan prunes something, so the checks below can tell kept from built
    for b, dims in enumerate(read_dims(masked).blocks):  # masked: built widths stay, kept = non-zero gates
        assert dims.size == FULL and dims.kept == kept[b] and not dims.compact
    for b, dims in enumerate(read_dims(small).blocks):  # compact: built == kept, per-head V from the plan
        assert dims.size == dims.kept == kept[b] and dims.v_dims == p.v_dims_per_head(b) and dims.compact
    assert read_dims(small).mlp_hidden == kept[0]["mlp_hidden"] and read_dims(model).mlp_hidden == 192


def test_every_width_reader_agrees_with_the_plan():
    model = gated_random(make_vit(), seed=4)
    p = vtpdeploy.plan(model, 0.45)
    masked, small = masked_and_compact(model, p)
    kw = infer_kwargs(model)
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["mlp_ratio"], kw["qkv_bias"]) == (48, 2, 3, 4.0, True)
    assert model_dims(model) == {"embed_dim": 48, "num_heads": 3, "head_dim": 16, "mlp_hidden": 192, "depth": 2,
                                 "tokens": 17, "img_size": [32, 32], "in_chans": 3, "num_classes": 10}
    attn = model_widths(small)["attention"]
    assert [a["name"] for a in attn] == ["blocks.0.attn", "blocks.1.attn"]
    assert [a["v_dims"] for a in attn] == [p.v_dims_per_head(b) for b in range(2)]
    assert all(a["v_head_dim"] == max(a["v_dims"]) and a["qk_head_dim"] == 16 for a in attn)
    assert "v_dims" not in model_widths(masked)["attention"][0]  # the exported graph of a masked model is full width
    for b, blk in enumerate(masked.blocks):
        assert {k: block_widths(blk)[k] for k in GATE_KINDS} == {k: len(p.gate(b, k).kept) for k in GATE_KINDS}


def test_read_dims_rejects_a_model_that_is_not_a_vit():
    with pytest.raises(UnsupportedModelError) as info:
        read_dims(nn.Sequential(nn.Linear(4, 4)))
    assert "\n" not in str(info.value) and "not a ViT" in str(info.value)


def test_bias_free_linears_compact_exactly(tiny_vit):
    """proj/fc1/fc2 without a bias: compaction folds LayerScale into a zero bias and keeps fc1 unbiased."""
    model = gated_random(tiny_vit(proj_bias=False), seed=5)
    p = vtpdeploy.plan(model, 0.3)
    masked, small = masked_and_compact(model, p)
    x = torch.randn(2, 3, 32, 32)
    assert max_diff(masked(x), small(x)) <= 1e-5
    assert small.blocks[0].mlp.fc1.bias is None and small.blocks[0].attn.proj.bias is not None


def test_image_channels_come_from_the_model_not_the_patch_projection():
    """Behind a hybrid stem the patch projection reads the backbone's channels (or is an Identity)."""
    model = create_timm("vit_base_mci_224", {"img_size": 64, "depth": 1, "in_chans": 1})
    assert image_chans(model) == 1 and read_dims(model).in_chans == 1
