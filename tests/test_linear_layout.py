"""INT8 prep: Reshape -> Gemm linears become MatMul + Add, exactly; the INT8 model quantizes their inputs only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import tiny_vit
from onnx import TensorProto, helper, numpy_helper

from vtpdeploy.errors import NumericalMismatchError


def _ort(model_or_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _flattened_linear(trans_b: int, bias: bool = True) -> onnx.ModelProto:
    """x [B, 5, 6] -> Reshape [-1, 6] -> Gemm (6 -> 4) -> Reshape [-1, 5, 4] -> Relu, as onnxsim writes a Linear."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6) if trans_b else (6, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1, 6], np.int64), "flat"),
             numpy_helper.from_array(np.array([-1, 5, 4], np.int64), "back")]
    gemm_in = ["x2", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"))
        gemm_in.append("b")
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
             helper.make_node("Gemm", gemm_in, ["y2"], name="fc", transB=trans_b),
             helper.make_node("Reshape", ["y2", "back"], ["y3"], name="unflatten"),
             helper.make_node("Relu", ["y3"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_as_matmul_is_exact(trans_b, bias):
    from vtpdeploy.deploy.export.linear_layout import gemm_as_matmul

    model = _flattened_linear(trans_b, bias)
    x = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    ref = _ort(model, x)
    assert gemm_as_matmul(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Reshape", "Unsqueeze", "MatMul"] + (["Add"] if bias else []) + ["Squeeze", "Reshape", "Relu"]
    matmul = model.graph.node[2]
    weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == matmul.input[1]))
    assert weight.shape == (6, 4)  # [K, N] whatever transB was
    assert ("w" in {i.name for i in model.graph.initializer}) == (not trans_b)  # no stale [N, K] copy left behind
    np.testing.assert_allclose(_ort(model, x), ref, rtol=0, atol=1e-6)


def test_gemm_with_scaling_is_kept():
    from vtpdeploy.deploy.export.linear_layout import gemm_as_matmul

    model = _flattened_linear(0)
    next(n for n in model.graph.node if n.op_type == "Gemm").attribute.append(helper.make_attribute("alpha", 0.5))
    assert gemm_as_matmul(model) == 0 and "Gemm" in [n.op_type for n in model.graph.node]


@pytest.fixture(scope="module")
def simplified_onnx(tmp_path_factory):
    """A tiny ViT exported with onnxsim at a fixed batch: Linears become Gemms, some in a 2-D fc1 -> GELU -> fc2 chain."""
    pytest.importorskip("onnxsim")
    from vtpdeploy.deploy.export import export_onnx

    model = tiny_vit().eval()
    res = export_onnx(model, tmp_path_factory.mktemp("layout") / "m.onnx", batch=2, openvino=False,
                      simplifier="onnxsim")
    return res.path


@pytest.mark.parametrize("activations", ["s8", "u8"])
def test_int8_quantizes_linear_inputs_not_outputs(simplified_onnx, tmp_path, activations):
    from vtpdeploy.deploy.export.quantize import LINEAR_LAYOUT_ATOL, quantize_int8

    src = onnx.load(str(simplified_onnx))
    src_inits = {i.name for i in src.graph.initializer}
    gemms = sum(n.op_type == "Gemm" for n in src.graph.node)
    weighted_matmuls = sum(n.op_type == "MatMul" and n.input[1] in src_inits for n in src.graph.node)
    assert gemms >= 4  # most token linears are Reshape -> Gemm (the fixture's premise)
    calib = np.random.default_rng(3).standard_normal((8, 3, 32, 32), dtype=np.float32)
    dst = tmp_path / f"m.{activations}.onnx"
    settings = quantize_int8(simplified_onnx, dst, calib, method="MinMax", activation_type=activations)
    assert settings["gemm_as_matmul"] == gemms
    assert 0 <= settings["gemm_as_matmul_max_abs_diff"] <= LINEAR_LAYOUT_ATOL
    q = onnx.load(str(dst))
    inits = {i.name for i in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    linears = [n for n in q.graph.node if n.op_type == "MatMul" and producer.get(n.input[1]) is not None
               and producer[n.input[1]].op_type == "DequantizeLinear" and producer[n.input[1]].input[0] in inits]
    assert len(linears) == gemms + weighted_matmuls  # every linear layer, the classifier included
    assert "Gemm" not in [n.op_type for n in q.graph.node]
    for n in linears:  # quantized inputs, a float output (into its bias Add or a Reshape, never a Q/DQ pair)
        assert producer[n.input[0]].op_type == "DequantizeLinear", n.name
        after = readers[n.output[0]]
        assert "QuantizeLinear" not in after, n.name
        if after == ["Add"]:
            assert "QuantizeLinear" not in readers[next(a.output[0] for a in q.graph.node if n.output[0] in a.input)]


def test_linear_layout_mismatch_is_a_specific_error(simplified_onnx, tmp_path, monkeypatch):
    from vtpdeploy.deploy.export import linear_layout, quantize

    rewrite = linear_layout.gemm_as_matmul

    def corrupt(model):  # a rewrite that changes the numbers must not reach the INT8 model
        n = rewrite(model)
        matmul = next(m for m in model.graph.node if m.op_type == "MatMul" and m.name.endswith("_matmul"))
        w = next(i for i in model.graph.initializer if i.name == matmul.input[1])
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 3.0, w.name))
        return n

    monkeypatch.setattr(linear_layout, "gemm_as_matmul", corrupt)
    calib = np.random.default_rng(3).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with pytest.raises(NumericalMismatchError, match="Gemm -> MatMul"):
        quantize.quantize_int8(simplified_onnx, tmp_path / "bad.onnx", calib, method="MinMax")
    assert not (tmp_path / "bad.onnx").exists()
