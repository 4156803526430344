"""TensorRT readiness report: ops per target, shapes, fused-MHA head dims, widths, strict mode."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vtpdeploy.deploy.export.readiness import (
    ReadinessError,
    check_trt_readiness,
    enforce,
    model_widths,
)


def _onnx(tmp_path, op="LayerNormalization", opset=17, batch=1):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4, 8])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [8], np.ones(8, np.float32)),
             helper.make_tensor("b", TensorProto.FLOAT, [8], np.zeros(8, np.float32))]
    node = helper.make_node(op, ["input", "s", "b"] if op == "LayerNormalization" else ["input"], ["logits"], axis=-1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], inits if op == "LayerNormalization" else []),
                              opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _widths(head_dim, seq=197, v=None):
    return {"attention": [{"name": "blocks.0.attn", "num_heads": 3, "qk_head_dim": head_dim,
                           "v_head_dim": v or head_dim}],
            "linear": [{"name": "blocks.0.mlp.fc1", "in": 192, "out": 768}], "seq_len": seq}


def test_head_dim_40_flagged_for_int8_not_fp16(tmp_path):
    rep = check_trt_readiness(_onnx(tmp_path), widths=_widths(40), targets=["10"])
    row = rep["attention"][0]
    assert row["fused_mha_fp16"] is True and row["fused_mha_int8"] is False
    assert any("INT8 fused-MHA" in w and "40" in w for w in rep["warnings"])
    assert not any("FP16 fused-MHA" in w for w in rep["warnings"])


def test_head_dim_64_clean_and_seq_limit(tmp_path):
    rep = check_trt_readiness(_onnx(tmp_path), widths=_widths(64), targets=["10", "11"])
    assert rep["warnings"] == [] and rep["ok"]
    rep = check_trt_readiness(_onnx(tmp_path), widths=_widths(64, seq=577), targets=["10"])
    assert any("INT8" in w for w in rep["warnings"])
    rep = check_trt_readiness(_onnx(tmp_path), widths=_widths(12), targets=["10"])
    assert any("FP16 fused-MHA" in w for w in rep["warnings"])


def test_layernorm_per_target_and_opset(tmp_path):
    rep = check_trt_readiness(_onnx(tmp_path), widths=_widths(64))
    assert rep["targets"]["8.5"]["ops"]["LayerNormalization"] == "needs TensorRT >= 8.6"
    assert rep["targets"]["8.6"]["ops"]["LayerNormalization"] == "native"
    assert rep["targets"]["8.5"]["warnings"] and not rep["targets"]["8.6"]["warnings"]
    rep = check_trt_readiness(_onnx(tmp_path, op="Relu", opset=19), widths=_widths(64))
    assert not rep["targets"]["8.6"]["opset_ok"] and rep["targets"]["10"]["opset_ok"]


def test_dynamic_shapes_and_widths(tmp_path):
    rep = check_trt_readiness(_onnx(tmp_path, batch="batch"), widths={
        "attention": [], "linear": [{"name": "fc", "in": 37, "out": 64}], "seq_len": 65}, targets=["10"])
    assert rep["shapes"]["dynamic"] and rep["shapes"]["io"]["input"][0] == "batch"
    assert [w["name"] for w in rep["linear_not_multiple_of_8"]] == ["fc"]


def test_model_widths_compact():
    import timm
    import torch

    import vtpdeploy

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                          num_classes=10).eval()
    w = model_widths(m)
    assert w["seq_len"] == 65 and w["attention"][0]["qk_head_dim"] == 16
    vtpdeploy.add_gates(m)
    for r in vtpdeploy.iter_gates(m):
        r.module.gate.data.uniform_(0.2, 2)
    c = vtpdeploy.compact(m, vtpdeploy.plan(m, 0.4))
    blocks = model_widths(c)["attention"]
    assert len(blocks) == 2 and all(b["v_head_dim"] == max(b["v_dims"]) for b in blocks)


def test_strict_raises_exit_code_1(tmp_path):
    rep = check_trt_readiness(_onnx(tmp_path), widths=_widths(40), targets=["10"])
    enforce(rep, strict=False)
    with pytest.raises(ReadinessError) as info:
        enforce(rep, strict=True)
    assert info.value.exit_code == 1
