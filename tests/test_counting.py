"""count(): params and MACs (attention matmuls included, gate multiplies excluded)."""

from __future__ import annotations

import pytest
from conftest import gated_random, make_vit

import vtpdeploy
from vtpdeploy import WidthConstraints, add_gates, count, plan


def _vit_macs(img: tuple[int, int], patch: int, D: int, depth: int, H: int, C: int,
              widths: list[tuple[int, int, int, int]] | None = None, heads: int = 3) -> int:
    """Analytic MACs of a cls-token ViT for one image; `widths` = per block (qkv_in, v, mlp_in, hidden)."""
    P = (img[0] // patch) * (img[1] // patch)
    N = P + 1
    macs = P * D * 3 * patch * patch + D * C  # patch embedding conv, classifier on the cls token
    for b in range(depth):
        qi, v, mi, h = widths[b] if widths else (D, D, D, H)
        macs += N * qi * (2 * D + v)  # qkv
        macs += N * N * D + N * N * v  # Q K^T and attn @ V
        macs += N * v * D  # proj
        macs += N * mi * h + N * h * D  # fc1, fc2
    return macs


def test_count_matches_analytic_vit_figures():
    model = make_vit()  # 32px, patch 8, D 48, depth 2, hidden 192, 10 classes
    c = count(model)
    assert c == {"params": sum(p.numel() for p in model.parameters()), "macs": _vit_macs((32, 32), 8, 48, 2, 192, 10)}
    assert isinstance(c["params"], int) and isinstance(c["macs"], int)


def test_count_other_image_size_and_keeps_mode():
    model = make_vit(dynamic_img_size=True)
    model.train()
    assert count(model, 64)["macs"] == _vit_macs((64, 64), 8, 48, 2, 192, 10)
    assert count(model, (32, 48))["macs"] == _vit_macs((32, 48), 8, 48, 2, 192, 10)
    assert model.training  # restored
    assert count(model)["macs"] == _vit_macs((32, 32), 8, 48, 2, 192, 10)  # default: the model's own size


def test_gates_count_as_params_but_not_macs():
    plain = count(make_vit(depth=3))
    model = add_gates(make_vit(depth=3))
    gated = count(model)
    assert gated["params"] - plain["params"] == 3 * (48 + 48 + 48 + 192)
    assert gated["macs"] == plain["macs"]


def test_compact_count_matches_kept_widths():
    model = gated_random(make_vit(embed_dim=96, num_heads=3, depth=2), seed=31)
    p = plan(model, 0.5, constraints=WidthConstraints(head_aligned_v=True, round_to={"attn_v": 8}))
    small = vtpdeploy.compact(model, p)
    widths = [tuple(len(p.gate(b, k).kept) for k in vtpdeploy.GATE_KINDS) for b in range(2)]
    c_small, c_big = count(small), count(model)
    assert c_small["macs"] == _vit_macs((32, 32), 8, 96, 2, 384, 10, widths=widths)
    assert c_small["macs"] < c_big["macs"] and c_small["params"] < c_big["params"]
    # roughly proportional: half of the gated dims removed cuts the Linear MACs substantially
    assert c_small["macs"] < 0.8 * c_big["macs"]


def test_deit_base_matches_the_paper():
    c = count(make_vit("deit_base_patch16_224"))
    assert c["params"] == pytest.approx(86.6e6, abs=0.1e6)
    assert c["macs"] == pytest.approx(17.6e9, abs=0.1e9)


def test_count_a_model_that_expands_a_parameter_under_no_grad():
    """Perception Encoder's attention pool expands its latent query (a parameter) inside forward: FlopCounterMode's
    module tracker failed on that view ("Expected gradient function to be set"). Counting leaves requires_grad as
    it was."""
    model = make_vit("vit_pe_core_tiny_patch16_384", img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
    model.blocks[0].norm1.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    c = count(model)
    assert c["params"] == sum(p.numel() for p in model.parameters()) and c["macs"] > 0
    assert [p.requires_grad for p in model.parameters()] == flags
