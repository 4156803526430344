"""Compaction: the compact model equals the hard-mask model (<= 1e-4, fp32) and is really smaller."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    gate_values,
    gated_random,
    image_batch,
    make_vit,
    masked_and_compact,
    max_diff,
    randomize_layer_scale,
)
from torch import nn

import vtpdeploy
from vtpdeploy import GATE_KINDS, PlanError, WidthConstraints, compact, plan
from vtpdeploy.prune.compact import CompactAttention, CompactBlock, compact_validated
from vtpdeploy.prune.gates import GatedLinear, iter_gates

ATOL = 1e-4


def _assert_exact(model: nn.Module, p, batch: int = 2) -> tuple[nn.Module, nn.Module]:
    """compact vs hard mask on logits and on all tokens of forward_features; returns (masked, small)."""
    before = gate_values(model)
    masked, small = masked_and_compact(model, p)
    x = image_batch(model, batch=batch)
    with torch.no_grad():
        # all tokens (cls / dist / register / patch) and the logits computed from them
        feat_ref, feat_out = masked.forward_features(x), small.forward_features(x)
        d_feat = max_diff(feat_ref, feat_out)
        assert d_feat <= ATOL, f"features: max |diff| {d_feat:.3e}"
        ref, out = masked.forward_head(feat_ref), small.forward_head(feat_out)
        d = max_diff(ref, out)
        assert d <= ATOL, f"compact vs hard mask: max |diff| {d:.3e}"
        # the plan really changes the model, so the comparisons above can fail
        full = model(x)
        assert max_diff(full, ref) > 1e-3
        assert ref.abs().max() > 1e-2
    # compact leaves the source model alone
    assert all(torch.equal(before[k], v) for k, v in gate_values(model).items())
    assert not any(isinstance(m, GatedLinear) for m in small.modules())
    assert not any(name.endswith("gate") for name, _ in small.named_parameters())
    assert sum(q.numel() for q in small.parameters()) < sum(q.numel() for q in model.parameters())
    return masked, small


# name, kwargs, scope, rate, batch
VARIANTS = [
    ("deit_tiny_patch16_224", {}, "global", 0.5, 2),
    ("deit_small_patch16_224", {}, "per_kind", 0.4, 1),
    ("deit_base_patch16_224", {}, "global", 0.5, 1),
    ("deit_base_distilled_patch16_224", {}, "global", 0.4, 1),
    ("vit_small_patch16_224", {}, "per_layer", 0.5, 1),
    ("deit3_small_patch16_224", {}, "global", 0.5, 1),
    # custom-sized timm ViTs
    ("vit_tiny_patch16_224", dict(img_size=48, patch_size=12, embed_dim=64, depth=3, num_heads=4), "global", 0.6, 2),
    (
        "vit_tiny_patch16_224",
        dict(img_size=(32, 48), patch_size=8, embed_dim=96, depth=2, num_heads=6, mlp_ratio=3.0, qkv_bias=False),
        "per_kind",
        0.5,
        2,
    ),
    (
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=2, class_token=False,
             global_pool="avg", fc_norm=True, reg_tokens=2, init_values=0.1),
        "global",
        0.7,
        2,
    ),
    (
        "vit_tiny_patch16_224",
        dict(img_size=40, patch_size=8, embed_dim=40, depth=2, num_heads=5, pre_norm=True, no_embed_class=True),
        "per_layer",
        0.8,
        2,
    ),
]


def _variant_id(v) -> str:
    name, kw = v[0], v[1]
    if not kw:
        return name
    return "custom-" + "-".join(f"{k}{kw[k]}" for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"))


@pytest.mark.parametrize("name, kwargs, scope, rate, batch", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def test_compact_equals_hard_mask(name, kwargs, scope, rate, batch):
    model = make_vit(name, **kwargs)
    if "deit3" in name or kwargs.get("init_values"):
        assert randomize_layer_scale(model) == 2 * len(model.blocks)  # ls1 + ls2 gammas
    gated_random(model, seed=7)
    p = plan(model, rate, scope=scope)
    _, small = _assert_exact(model, p, batch=batch)
    if "distilled" in name:
        assert small.dist_token is not None and isinstance(small.head_dist, nn.Linear)
        small.set_distilled_training(True)
        small.train()
        with torch.no_grad():
            x = image_batch(model, batch=1)
            out, out_dist = small(x)  # two heads, two tokens, both still there
        assert out.shape == out_dist.shape == (1, 1000)
    # a paper-faithful plan on random gates leaves uneven V dims somewhere
    if scope != "per_layer":
        assert any(len(set(b.attn.v_dims)) > 1 for b in small.blocks)


def test_compact_validated_returns_the_model_and_its_diff():
    model = gated_random(make_vit(depth=3))
    p = plan(model, 0.5)
    small, diff = compact_validated(model, p, image_batch(model), atol=ATOL)
    assert 0.0 <= diff <= ATOL
    assert isinstance(small.blocks[0], CompactBlock) and not small.training


def _handmade_plan(model, v_kept: dict[int, list[int]], rate: float = 0.3):
    """A plan from the model, with the attn_v kept dims of some blocks overridden."""
    p = plan(model, rate, scope="per_layer")
    for b, kept in v_kept.items():
        p.gate(b, "attn_v").kept = sorted(kept)
    p.check_consistent()
    return p


def _head(h: int, dims) -> list[int]:
    return [16 * h + d for d in dims]


@pytest.mark.parametrize(
    "v_kept, expected",
    [
        # uneven heads; head 2 of block 0 lost all its V dims
        ({0: _head(0, range(16)) + _head(1, range(1, 16, 2)), 1: _head(0, [0, 5, 9]) + _head(2, range(10))},
         {0: [16, 8, 0], 1: [3, 0, 10]}),
        # only one head keeps anything, a single dim
        ({0: _head(1, [7]), 1: _head(2, [0, 15])}, {0: [0, 1, 0], 1: [0, 0, 2]}),
        # even but pruned heads (the uniform fast path with a V width != head_dim)
        ({0: _head(0, range(5)) + _head(1, range(3, 8)) + _head(2, range(11, 16)), 1: _head(0, [3]) + _head(1, [4]) + _head(2, [5])},
         {0: [5, 5, 5], 1: [1, 1, 1]}),
    ],
    ids=["uneven", "single-head", "even-pruned"],
)
def test_uneven_and_empty_heads_are_exact(v_kept, expected):
    model = gated_random(make_vit(depth=2), seed=3)
    p = _handmade_plan(model, v_kept)
    for b, dims in expected.items():
        assert p.v_dims_per_head(b) == dims
    _, small = _assert_exact(model, p)
    for b, dims in expected.items():
        attn = small.blocks[b].attn
        assert isinstance(attn, CompactAttention)
        live = [d for d in dims if d]  # heads with no V dim are removed whole (tests/test_structures.py)
        assert attn.v_dims == live and attn.num_heads == len(live)
        assert attn.uniform_v == (len(set(live)) == 1)
        assert attn.proj.in_features == sum(dims)
        assert attn.qkv.out_features == 2 * 16 * len(live) + sum(dims)  # live heads keep full-width Q/K


def test_compact_weights_are_physically_smaller():
    model = gated_random(make_vit(depth=3), seed=4)
    p = plan(model, 0.5)
    small = compact(model, p)
    D, A = 48, 48
    for b, blk in enumerate(small.blocks):
        k = {kind: p.gate(b, kind).kept for kind in GATE_KINDS}
        attn, mlp = blk.attn, blk.mlp
        assert attn.qkv.in_features == len(k["qkv_in"]) < D
        assert attn.qkv.out_features == 2 * A + len(k["attn_v"])
        assert attn.proj.in_features == len(k["attn_v"]) < A
        assert attn.proj.out_features == D
        assert mlp.fc1.in_features == len(k["mlp_in"]) < D
        assert mlp.fc1.out_features == len(k["mlp_hidden"]) < 4 * D
        assert mlp.fc2.in_features == len(k["mlp_hidden"])
        assert mlp.fc2.out_features == D
        assert attn.in_index.tolist() == k["qkv_in"]
        assert mlp.in_index.tolist() == k["mlp_in"]
        assert attn.v_dims == p.v_dims_per_head(b)
    # exact parameter count: non-block parameters unchanged, blocks rebuilt from the kept widths
    plain = make_vit(depth=3)
    non_block = sum(q.numel() for n, q in plain.named_parameters() if not n.startswith("blocks."))
    expected = non_block
    for b in range(3):
        qi, v, mi, h = (len(p.gate(b, kind).kept) for kind in GATE_KINDS)
        expected += 4 * D  # norm1, norm2
        expected += (qi + 1) * (2 * A + v) + (v + 1) * D + (mi + 1) * h + (h + 1) * D
    assert sum(q.numel() for q in small.parameters()) == expected
    assert not list(iter_gates(small))
    # smaller in MACs too
    c_gated, c_small = vtpdeploy.count(model), vtpdeploy.count(small)
    assert c_small["params"] < c_gated["params"] and c_small["macs"] < c_gated["macs"]


def test_head_aligned_constraint_gives_equal_rounded_widths_and_stays_exact():
    model = gated_random(make_vit(embed_dim=96, num_heads=3, depth=2), seed=5)  # head_dim 32, hidden 384
    c = WidthConstraints(head_aligned_v=True, round_to={"attn_v": 8, "mlp_hidden": 16})
    p = plan(model, 0.5, constraints=c)
    _, small = _assert_exact(model, p)
    for b, blk in enumerate(small.blocks):
        v = blk.attn.v_dims
        assert len(set(v)) == 1 and v[0] % 8 == 0 and 0 < v[0] < 32
        assert blk.attn.uniform_v
        assert blk.mlp.fc1.out_features % 16 == 0 and 0 < blk.mlp.fc1.out_features < 384
        assert v == p.v_dims_per_head(b)


def test_compact_at_high_rate_and_in_train_mode_and_after_masking():
    model = gated_random(make_vit(depth=2), seed=6)
    p = plan(model, 0.9, scope="per_layer")
    _assert_exact(model, p)
    # compact keeps the training flag
    assert compact(model.train(), p).training
    model.eval()
    # compacting an already masked model gives the same function
    masked = vtpdeploy.apply_mask(copy.deepcopy(model), p)
    a, b = compact(model, p).eval(), compact(masked, p).eval()
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(a(x), b(x)) <= 1e-6
