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


def _op_model(tmp_path, op, opset, name="m.onnx", **attrs):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8])
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["input"], ["logits"], **attrs)], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


def test_group_norm_native_from_8_6(tmp_path):
    rep = check_trt_readiness(_op_model(tmp_path, "GroupNormalization", 18, num_groups=2), widths=_widths(64))
    ops = {t: rep["targets"][t]["ops"]["GroupNormalization"] for t in ("8.5", "8.6", "10", "11")}
    assert ops == {"8.5": "needs TensorRT >= 8.6", "8.6": "native", "10": "native", "11": "native"}


def _qdq_model(tmp_path, name, float_type):
    """input -> Q -> DQ -> Relu -> logits, float tensors of `float_type` (fp16 Q/DQ needs opset 19)."""
    np_type = np.float16 if float_type == TensorProto.FLOAT16 else np.float32
    x = helper.make_tensor_value_info("input", float_type, [1, 8])
    y = helper.make_tensor_value_info("logits", float_type, [1, 8])
    inits = [helper.make_tensor("s", float_type, [], np.array([0.1], np_type)),
             helper.make_tensor("z", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Relu", ["d"], ["logits"])]
    opset = 19 if float_type == TensorProto.FLOAT16 else 17
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                opset_imports=[helper.make_opsetid("", opset)]), str(tmp_path / name))
    return tmp_path / name


def test_int8_with_fp32_float_ops_warned_for_strongly_typed_target(tmp_path):
    fp32 = _onnx(tmp_path)
    int8 = _qdq_model(tmp_path, "model.int8.onnx", TensorProto.FLOAT)
    rep = check_trt_readiness(fp32, widths=_widths(64), targets=["10", "11"], precisions=["int8"], int8_path=int8)
    typed = [w for w in rep["warnings"] if "strongly typed" in w]
    assert len(typed) == 1 and typed[0] == "TensorRT 11: " + rep["targets"]["11"]["warnings"][-1]
    assert any(w.startswith("TensorRT 11: model.int8.onnx keeps") and "model.int8.fp16.onnx" in w for w in rep["warnings"])
    assert not any("strongly typed" in w for w in rep["targets"]["10"]["warnings"])  # 10 builds it weakly typed
    # with the fp16-float twin written, the builder uses it: no warning
    twin = _qdq_model(tmp_path, "model.int8.fp16.onnx", TensorProto.FLOAT16)
    rep = check_trt_readiness(fp32, widths=_widths(64), targets=["10", "11"], precisions=["int8"], int8_path=int8,
                              int8_fp16_path=twin)
    assert not any("strongly typed" in w for w in rep["warnings"]) and rep["qdq"]["int8_fp16_path"] == str(twin)
    # an INT8 model that already has fp16 float ops is not warned about either
    rep = check_trt_readiness(fp32, widths=_widths(64), targets=["11"], precisions=["int8"], int8_path=twin)
    assert not any("strongly typed" in w for w in rep["warnings"])
