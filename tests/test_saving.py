"""save/load: safetensors weights + JSON architecture, equality after reload, and safe refusal."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import (
    gate_values,
    gated_random,
    image_batch,
    make_vit,
    max_diff,
    randomize_head,
)
from helpers import MaliciousPickle

import vtpdeploy
from vtpdeploy import CheckpointError, add_gates, plan
from vtpdeploy.prune.gates import GatedLinear, iter_gates
from vtpdeploy.prune.saving import load_weights, read_state_dict


def _roundtrip(model, tmp_path, name="m"):
    weights, arch = vtpdeploy.save(model, tmp_path / name)
    assert weights == tmp_path / f"{name}.safetensors" and weights.is_file()
    assert arch == tmp_path / f"{name}.json" and arch.is_file()
    loaded = vtpdeploy.load(tmp_path / name)
    assert not loaded.training
    return loaded


def _assert_same_outputs(a, b, x):
    a.eval()
    with torch.no_grad():
        assert max_diff(a(x), b(x)) <= 1e-6


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def compact_model():
    model = gated_random(make_vit(depth=2), seed=21)
    p = plan(model, 0.5)
    p.gate(0, "attn_v").kept = list(range(16)) + [20, 21, 22]  # uneven heads: [16, 3, 0]
    return vtpdeploy.compact(model, p).eval()


def test_compact_model_round_trip(compact_model, tmp_path):
    loaded = _roundtrip(compact_model, tmp_path)
    _assert_same_state(compact_model, loaded)
    assert loaded.blocks[0].attn.v_dims == [16, 3]  # the dead head is removed whole (spec keeps its 0)
    assert loaded.blocks[0].attn.removed_heads == [2]
    assert [b.attn.v_dims for b in loaded.blocks] == [b.attn.v_dims for b in compact_model.blocks]
    assert not list(iter_gates(loaded))
    x = image_batch(compact_model)
    _assert_same_outputs(compact_model, loaded, x)
    spec = json.loads((tmp_path / "m.json").read_text())
    assert spec["format"] == "vtpdeploy-model" and spec["gated"] is False
    assert spec["name"] == "vit_tiny_patch16_224" and len(spec["blocks"]) == 2
    assert spec["blocks"][0]["v_dims"] == [16, 3, 0]
    # a loaded model saves again to the same thing
    again = _roundtrip(loaded, tmp_path, "again")
    _assert_same_outputs(compact_model, again, x)
    assert json.loads((tmp_path / "again.json").read_text()) == spec


def test_save_accepts_a_path_with_suffix(compact_model, tmp_path):
    w, a = vtpdeploy.save(compact_model, tmp_path / "sub" / "model.safetensors")
    assert (w.name, a.name) == ("model.safetensors", "model.json")
    for p in (tmp_path / "sub" / "model", tmp_path / "sub" / "model.json", w):
        _assert_same_outputs(compact_model, vtpdeploy.load(p), image_batch(compact_model))
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_weights_file_is_plain_safetensors(compact_model, tmp_path):
    from safetensors import safe_open

    vtpdeploy.save(compact_model, tmp_path / "m")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "vtpdeploy-model"}
        assert set(f.keys()) == set(compact_model.state_dict())
    raw = (tmp_path / "m.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]  # not a pickle / torch zip


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("deit_tiny_patch16_224", {}),
        ("deit_tiny_distilled_patch16_224", {}),
        ("deit3_small_patch16_224", {}),
        ("vit_tiny_patch16_224", dict(img_size=48, patch_size=12, embed_dim=64, depth=3, num_heads=4)),
        ("vit_tiny_patch16_224", dict(img_size=(32, 40), qkv_bias=False, class_token=False, global_pool="avg",
                                      reg_tokens=2, init_values=0.1, mlp_ratio=3.0, num_classes=7)),
    ],
    ids=["deit_tiny", "deit_tiny_distilled", "deit3_small", "custom", "custom-avg-reg-ls"],
)
def test_plain_timm_model_round_trip(name, kwargs, tmp_path):
    model = make_vit(name, **kwargs)
    randomize_head(model)
    loaded = _roundtrip(model, tmp_path)
    assert type(loaded) is type(model)
    _assert_same_state(model, loaded)
    _assert_same_outputs(model, loaded, image_batch(model, batch=1))


def test_gated_model_round_trip_keeps_gates(tmp_path):
    model = gated_random(make_vit(depth=2, init_values=0.5), seed=22)
    loaded = _roundtrip(model, tmp_path)
    assert json.loads((tmp_path / "m.json").read_text())["gated"] is True
    assert [r.name for r in iter_gates(loaded)] == [r.name for r in iter_gates(model)]
    lv = gate_values(loaded)
    assert all(torch.equal(v, lv[k]) for k, v in gate_values(model).items())
    _assert_same_outputs(model, loaded, image_batch(model))
    # the loaded gated model plans and compacts like the original
    p1, p2 = plan(model, 0.5), plan(loaded, 0.5)
    assert p1 == p2
    # and a hard-masked gated model round-trips too
    vtpdeploy.apply_mask(loaded, p2)
    masked = _roundtrip(loaded, tmp_path, "masked")
    for r in iter_gates(masked):
        pruned = sorted(set(range(r.module.gate.numel())) - set(p2.gate(r.block, r.kind).kept))
        assert pruned and torch.all(r.module.gate[pruned] == 0), r.name
    with torch.no_grad():
        x = image_batch(model)
        assert max_diff(loaded(x), masked(x)) <= 1e-6


def test_loaded_model_can_be_saved_after_load_and_moved(compact_model, tmp_path):
    loaded = vtpdeploy.load(vtpdeploy.save(compact_model, tmp_path / "m")[0], device="cpu")
    assert next(loaded.parameters()).device.type == "cpu"
    assert loaded.vtp_spec.blocks is not None


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def test_corrupt_safetensors_raises_checkpoint_error(compact_model, tmp_path):
    weights, _ = vtpdeploy.save(compact_model, tmp_path / "m")
    data = weights.read_bytes()
    for bad in (b"", b"garbage" * 10, data[: len(data) // 2], b"\xff" * 8 + data[8:]):
        weights.write_bytes(bad)
        with pytest.raises(CheckpointError) as info:
            vtpdeploy.load(tmp_path / "m")
        msg = _one_line(info.value)
        assert "m.safetensors" in msg


def test_missing_or_corrupt_architecture_file(compact_model, tmp_path):
    weights, arch = vtpdeploy.save(compact_model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(compact_model, tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        vtpdeploy.load(tmp_path / "other")
    (tmp_path / "w.json").write_text(arch.read_text())  # architecture without weights
    with pytest.raises(CheckpointError, match="w.safetensors: checkpoint not found"):
        vtpdeploy.load(tmp_path / "w")
    text = arch.read_text()
    arch.write_text("{ nope")
    with pytest.raises(CheckpointError) as info:
        vtpdeploy.load(tmp_path / "m")
    assert "m.json" in _one_line(info.value)
    spec = json.loads(text)
    spec["unexpected"] = 1
    arch.write_text(json.dumps(spec))
    with pytest.raises(CheckpointError) as info:
        vtpdeploy.load(tmp_path / "m")
    _one_line(info.value)
    arch.unlink()
    with pytest.raises(CheckpointError, match="architecture file not found") as info:
        vtpdeploy.load(tmp_path / "m")
    _one_line(info.value)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    model = make_vit(depth=1)
    state = dict(model.state_dict())
    # the payload works: an unsafe loader would create the control marker
    control = tmp_path / "control_marker"
    probe = tmp_path / "probe.pkl"
    probe.write_bytes(pickle.dumps(MaliciousPickle(control)))
    pickle.loads(probe.read_bytes()).close()
    assert control.exists()

    marker = tmp_path / "pwned_marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "payload": MaliciousPickle(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = _one_line(info.value)
    assert "evil.pth" in msg and "refused" in msg
    with pytest.raises(CheckpointError):
        load_weights(model, path)
    assert not marker.exists()


def test_torch_state_dict_files_load_safely(tmp_path):
    model = make_vit(depth=1)
    other = make_vit(depth=1)
    state = model.state_dict()
    for i, obj in enumerate([state, {"state_dict": state}, {"model": {f"module.{k}": v for k, v in state.items()}}]):
        path = tmp_path / f"ok{i}.pth"
        torch.save(obj, path)
        load_weights(other, path)
        _assert_same_state(model, other)
    path = tmp_path / "notensors.pth"
    torch.save({"a": 1, "b": [1, 2]}, path)
    with pytest.raises(CheckpointError, match="not a state dict of tensors") as info:
        read_state_dict(path)
    _one_line(info.value)
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as info:
        read_state_dict(path)
    _one_line(info.value)


def test_mismatched_state_dict_raises_checkpoint_error(tmp_path):
    small = make_vit(depth=2)
    vtpdeploy.save(small, tmp_path / "two")
    for other in (make_vit(depth=3), make_vit(depth=2, embed_dim=64, num_heads=4), add_gates(make_vit(depth=2))):
        with pytest.raises(CheckpointError, match="does not fit the model") as info:
            load_weights(other, tmp_path / "two.safetensors")
        _one_line(info.value)


def test_architecture_and_weights_from_different_plans_do_not_mix(tmp_path):
    model = gated_random(make_vit(depth=2), seed=23)
    a = vtpdeploy.compact(model, plan(model, 0.3))
    b = vtpdeploy.compact(model, plan(model, 0.6))
    vtpdeploy.save(a, tmp_path / "a")
    vtpdeploy.save(b, tmp_path / "b")
    (tmp_path / "a.json").write_text((tmp_path / "b.json").read_text())
    with pytest.raises(CheckpointError) as info:
        vtpdeploy.load(tmp_path / "a")
    msg = _one_line(info.value)
    assert "a.safetensors" in msg and ("shape mismatch" in msg or "missing:" in msg or "unexpected:" in msg)


def test_gated_checkpoint_into_plain_architecture_fails(tmp_path):
    gated = gated_random(make_vit(depth=2))
    vtpdeploy.save(gated, tmp_path / "g")
    spec = json.loads((tmp_path / "g.json").read_text())
    spec["gated"] = False
    (tmp_path / "g.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match=r"does not fit the model \(16 missing: blocks.0.attn.qkv.weight, .* unexpected: blocks.0.attn.proj.gate"):
        vtpdeploy.load(tmp_path / "g")
    assert isinstance(gated.blocks[0].attn.qkv, GatedLinear)


def test_non_default_activation_survives_round_trip(tmp_path):
    model = make_vit(act_layer="relu")
    randomize_head(model)
    loaded = _roundtrip(model, tmp_path)
    assert all(isinstance(blk.mlp.act, torch.nn.ReLU) for blk in loaded.blocks)
    _assert_same_outputs(model, loaded, image_batch(model))
    # the activation matters here: the same weights under GELU give other logits
    gelu = make_vit()
    gelu.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert max_diff(gelu(image_batch(model)), loaded(image_batch(model))) > 1e-4
