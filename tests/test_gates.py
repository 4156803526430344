"""VTP gates: placement, initialisation, L1 penalty and the supported-model check."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import image_batch, make_vit, max_diff, randomize_gates, randomize_head
from torch import nn

import vtpdeploy
from vtpdeploy import (
    GATE_KINDS,
    UnsupportedModelError,
    add_gates,
    iter_gates,
    l1_penalty,
)
from vtpdeploy.prune.gates import GatedLinear, gate_parameters, set_gates_trainable

SITES = {"qkv_in": ("attn", "qkv"), "attn_v": ("attn", "proj"), "mlp_in": ("mlp", "fc1"), "mlp_hidden": ("mlp", "fc2")}


def test_add_gates_places_ones_at_the_four_linear_inputs(tiny_vit):
    model = tiny_vit(depth=3)
    linears = {
        (i, kind): getattr(getattr(blk, p), a) for i, blk in enumerate(model.blocks) for kind, (p, a) in SITES.items()
    }
    out = add_gates(model)
    assert out is model  # in place
    refs = list(iter_gates(model))
    assert [(r.block, r.kind) for r in refs] == [(b, k) for b in range(3) for k in GATE_KINDS]
    for ref in refs:
        parent, attr = SITES[ref.kind]
        mod = getattr(getattr(model.blocks[ref.block], parent), attr)
        assert isinstance(mod, GatedLinear) and mod is ref.module and mod.kind == ref.kind
        assert mod.linear is linears[(ref.block, ref.kind)]  # the original Linear is wrapped, not copied
        assert mod.gate.shape == (mod.linear.in_features,)
        assert torch.equal(mod.gate, torch.ones_like(mod.gate))
        assert mod.gate.requires_grad
        assert ref.name == f"blocks.{ref.block}.{ref.kind}"
    sizes = {r.kind: r.module.gate.numel() for r in refs}
    assert sizes == {"qkv_in": 48, "attn_v": 48, "mlp_in": 48, "mlp_hidden": 192}
    # gates are real parameters: in parameters() and in the state dict
    assert len(gate_parameters(model)) == 12
    gate_keys = [k for k in model.state_dict() if k.endswith(".gate")]
    assert len(gate_keys) == 12 and "blocks.0.attn.qkv.gate" in gate_keys


@pytest.mark.parametrize("name", ["tiny", "deit3_small_patch16_224"])
def test_gated_model_at_init_equals_ungated(name):
    model = make_vit() if name == "tiny" else make_vit(name)
    randomize_head(model)
    x = image_batch(model, batch=2)
    with torch.no_grad():
        ref = model(x)
        gated = add_gates(copy.deepcopy(model)).eval()
        out = gated(x)
    assert max_diff(ref, out) <= 1e-6
    assert ref.abs().max() > 1e-3  # the comparison is not trivially between zeros


def test_gates_change_the_output_and_receive_gradients(tiny_vit):
    model = add_gates(tiny_vit())
    randomize_head(model)
    x = image_batch(model, batch=2)
    with torch.no_grad():
        before = model(x)
        model.blocks[0].mlp.fc2.gate[:96].zero_()
        after = model(x)
    assert max_diff(before, after) > 1e-3
    model.zero_grad()
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_parameters(model))
    set_gates_trainable(model, False)
    assert not any(p.requires_grad for p in gate_parameters(model))


def test_l1_penalty_is_sum_abs_with_sign_gradient(tiny_vit):
    model = add_gates(tiny_vit())
    randomize_gates(model, seed=5, signed=True)
    gates = gate_parameters(model)
    assert any((g < 0).any() for g in gates)  # signed values really present
    expected = sum(float(g.detach().double().abs().sum()) for g in gates)
    pen = l1_penalty(model)
    assert pen.dim() == 0
    assert abs(pen.detach().item() - expected) <= 1e-4 * expected
    pen.backward()
    for g in gates:
        assert torch.equal(g.grad, torch.sign(g.detach()))
    # scales linearly with the gates: all-ones gates give the number of gated dims
    with torch.no_grad():
        for g in gates:
            g.fill_(1.0)
    assert l1_penalty(model).detach().item() == pytest.approx(sum(g.numel() for g in gates))


def test_l1_penalty_needs_gates(tiny_vit):
    with pytest.raises(UnsupportedModelError, match="no VTP gates"):
        l1_penalty(tiny_vit())


def test_add_gates_twice_raises(tiny_vit):
    model = add_gates(tiny_vit())
    with pytest.raises(UnsupportedModelError, match="already has VTP gates"):
        add_gates(model)
    assert len(list(iter_gates(model))) == 8  # not double-wrapped


def _gated_attention_vit():
    model = make_vit()
    blk = model.blocks[1]
    blk.attn.gate = nn.Linear(48, 48)  # timm's `gated=True` attention
    return model


@pytest.mark.parametrize(
    "build, label, why",
    [
        (lambda: timm.create_model("resnet18"), "resnet18", "ResNet is not supported"),
        (lambda: make_vit(block_fn=timm.models.vision_transformer.ResPostBlock), "vit_tiny_patch16_224",
         "block 0 is ResPostBlock"),
        (_gated_attention_vit, "vit_tiny_patch16_224", "gated attention"),
    ],
    ids=["resnet18", "res_post_block", "gated_attn"],
)
def test_unsupported_models_raise_naming_model_and_reason(build, label, why):
    model = build()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError) as info:
        add_gates(model)
    msg = str(info.value)
    assert label in msg and why in msg
    assert "\n" not in msg
    assert isinstance(info.value, vtpdeploy.VtpError)
    # nothing was half-gated
    assert not any(isinstance(m, GatedLinear) for m in model.modules())
    assert model.state_dict().keys() == before.keys()
    # plan() refuses it the same way (before looking for gates)
    with pytest.raises(UnsupportedModelError):
        vtpdeploy.plan(model, 0.5, importance="weight_l1")


def test_unknown_timm_name_raises_unsupported():
    from vtpdeploy.prune.arch import create_timm

    with pytest.raises(UnsupportedModelError, match="unknown timm model 'no_such_vit'"):
        create_timm("no_such_vit")
    with pytest.raises(UnsupportedModelError, match="cannot create 'vit_tiny_patch16_224'"):
        create_timm("vit_tiny_patch16_224", {"embed_dim": 50, "num_heads": 3})


def test_swiglu_gate_and_value_linears_share_one_gate(tiny_vit):
    """SwiGLU reads its input twice (fc1_g, fc1_x): one mlp_in gate, held once in the state dict."""
    model = add_gates(tiny_vit(mlp_layer=timm.layers.SwiGLU))
    mlp = model.blocks[0].mlp
    assert isinstance(mlp.fc1_x, GatedLinear) and mlp.fc1_g._source[0] is mlp.fc1_x
    assert [k for k in model.state_dict() if k.startswith("blocks.0.mlp") and k.endswith("gate")] == \
        ["blocks.0.mlp.fc1_x.gate", "blocks.0.mlp.fc2.gate"]
