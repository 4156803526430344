"""The com.microsoft.Attention rewrite of exported attention: every block fused, outputs unchanged (<= 1e-4
on ORT), and a wrong rewrite rejected by the numerical validation."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import make_vit

from vtpdeploy.deploy.export import export_onnx
from vtpdeploy.deploy.export.attention import (
    count_fused,
    fuse_attention,
    rewrite_attention_file,
    validate_fused,
)
from vtpdeploy.errors import NumericalMismatchError, VtpError
from vtpdeploy.prune.arch import BlockWidths, describe
from vtpdeploy.prune.compact import build

DEPTH = 2
HAS_ONNXSIM = importlib.util.find_spec("onnxsim") is not None
needs_onnxsim = pytest.mark.skipif(not HAS_ONNXSIM, reason="onnxsim not installed")
# what the exporter emits differs per simplifier: MatMul + Add (onnxslim), Reshape + Gemm (onnxsim), or the raw
# graph with the scale computed from shapes (no simplifier)
SIMPLIFIERS = [pytest.param("onnxslim", id="onnxslim"), pytest.param("onnxsim", id="onnxsim", marks=needs_onnxsim)]


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights and biases everywhere, so no bias Add is simplified away and V/proj matter."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _timm_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomize(make_vit(depth=DEPTH))


def _compact(v_dims: list[int]) -> torch.nn.Module:
    """A compact model skeleton (random weights) with the given V dims per head in every block."""
    base = make_vit(depth=DEPTH)
    dim, hidden = base.embed_dim, base.blocks[0].mlp.fc1.out_features
    blocks = [BlockWidths(qkv_in=dim - 5, v_dims=v_dims, mlp_in=dim - 3, mlp_hidden=hidden // 2)] * DEPTH
    spec = describe(base).model_copy(update={"gated": False, "blocks": blocks})
    model = build(spec).eval()
    torch.manual_seed(1)
    for b in model.blocks:  # kept input dims: a scattered subset, like a real plan
        b.attn.in_index.copy_(torch.randperm(dim)[: dim - 5].sort().values)
        b.mlp.in_index.copy_(torch.randperm(dim)[: dim - 3].sort().values)
    return _randomize(model, seed=2)


def _ort(path_or_model, x: np.ndarray) -> np.ndarray:
    src = path_or_model.SerializeToString() if hasattr(path_or_model, "graph") else str(path_or_model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _export(model, path, **kw):
    export_onnx(model, path, openvino=False, **kw)
    return path


def _inputs(n: int = 2) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("kw", [
    pytest.param({"dynamic_batch": True, "simplifier": "onnxslim"}, id="dynamic-onnxslim"),
    pytest.param({"dynamic_batch": True, "simplifier": "onnxsim"}, id="dynamic-onnxsim", marks=needs_onnxsim),
    pytest.param({"batch": 2, "simplifier": "onnxsim"}, id="fixed-batch-onnxsim", marks=needs_onnxsim),
    pytest.param({"batch": 2, "simplify": False}, id="fixed-batch-raw"),
])
def test_timm_vit_every_block_fused_and_equal(tmp_path, kw):
    model = _timm_vit()
    src = _export(model, tmp_path / "vit.onnx", **kw)
    rep = rewrite_attention_file(src, tmp_path / "vit.fused.onnx")
    fused = onnx.load(str(tmp_path / "vit.fused.onnx"))
    assert rep["found"] == rep["rewritten"] == count_fused(fused) == DEPTH
    assert not any(n.op_type in ("Softmax", "Split") for n in fused.graph.node)
    x = _inputs(2)
    ref, out = _ort(src, x), _ort(fused, x)
    assert np.abs(ref).max() > 0.1  # the check below compares real signal, not zeros
    assert np.abs(ref - out).max() <= 1e-4
    assert rep["max_abs_diff"] <= 1e-4
    with torch.no_grad():  # and still the PyTorch model
        assert np.abs(model(torch.from_numpy(x)).numpy() - out).max() <= 1e-4


@pytest.mark.parametrize("simplifier", SIMPLIFIERS)
@pytest.mark.parametrize("v_dims", [[16, 16, 16], [5, 16, 11], [0, 9, 16]],
                         ids=["uniform", "uneven", "uneven-dead-head"])
def test_compact_model_every_block_fused_and_equal(tmp_path, v_dims, simplifier):
    model = _compact(v_dims)
    src = _export(model, tmp_path / "compact.onnx", dynamic_batch=True, simplifier=simplifier)
    rep = rewrite_attention_file(src, tmp_path / "compact.fused.onnx")
    fused = onnx.load(str(tmp_path / "compact.fused.onnx"))
    assert rep["rewritten"] == count_fused(fused) == DEPTH and not rep["skipped"]
    attn = model.blocks[0].attn  # the heads the compact model kept (a head with no V dim may be dropped)
    kept = list(attn.v_dims)
    assert [n for n in kept if n] == [n for n in v_dims if n]
    assert rep["v_widths"] == [kept] * DEPTH
    # the V padding, its Pad/Gather and the Gather before proj are gone; only the kept-input Gathers remain
    assert not any(n.op_type in ("Pad", "Split", "Softmax", "Transpose") and "/attn/" in n.name
                   for n in fused.graph.node)
    node = next(n for n in fused.graph.node if n.op_type == "Attention")
    sizes = next(a.ints for a in node.attribute if a.name == "qkv_hidden_sizes")
    assert list(sizes) == [len(kept) * attn.head_dim] * 2 + [len(kept) * max(kept)]
    x = _inputs(3)
    ref, out = _ort(src, x), _ort(fused, x)
    assert np.abs(ref - out).max() <= 1e-4
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(x)).numpy() - out).max() <= 1e-4


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("attn") / "vit.onnx"
    return _export(_timm_vit(), path, dynamic_batch=True)


def _set_attr(model, name: str, value) -> None:
    for n in model.graph.node:
        if n.op_type == "Attention":
            for a in n.attribute:
                if a.name == name:
                    if a.type == onnx.AttributeProto.INT:
                        a.i = value
                    else:
                        a.f = value
            return


@pytest.mark.parametrize("attr,value", [("num_heads", 1), ("scale", 1.0)])
def test_validation_rejects_a_corrupted_rewrite(vit_onnx, attr, value):
    original = onnx.load(str(vit_onnx))
    fused, rep = fuse_attention(original)
    assert rep.rewritten == DEPTH
    assert validate_fused(original, fused) <= 1e-4
    _set_attr(fused, attr, value)
    with pytest.raises(NumericalMismatchError) as err:
        validate_fused(original, fused)
    assert err.value.max_diff > 1e-4 and err.value.atol == 1e-4


def test_failed_validation_writes_nothing(vit_onnx, tmp_path, monkeypatch):
    from vtpdeploy.deploy.export import attention

    real = attention.fuse_attention

    def corrupted(model):
        fused, rep = real(model)
        _set_attr(fused, "num_heads", 1)
        return fused, rep

    monkeypatch.setattr(attention, "fuse_attention", corrupted)
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"earlier result")
    with pytest.raises(NumericalMismatchError):
        attention.rewrite_attention_file(vit_onnx, dst)
    assert dst.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_graph_without_attention_is_a_one_line_error(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(VtpError, match="no attention block could be fused") as err:
        rewrite_attention_file(src, tmp_path / "out.onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_runs_the_fused_model(tmp_path):
    from vtpdeploy.deploy.runners import make_runner

    src = _export(_compact([5, 16, 11]), tmp_path / "compact.onnx", dynamic_batch=True)
    rewrite_attention_file(src, tmp_path / "compact.fused.onnx")
    x = _inputs(2)
    with make_runner("openvino", tmp_path / "compact.fused.onnx", threads=1) as r:
        out = r.infer(x)
    assert np.abs(_ort(src, x) - out).max() <= 1e-4


def test_export_stage_writes_fused_model_beside_the_plain_one(tmp_path):
    from vtpdeploy.deploy.export import ExportConfig, run_export
    from vtpdeploy.deploy.sources import ModelSource

    model = _compact([5, 16, 11])
    src = ModelSource(model, "compact", {"input_size": (3, 32, 32)})
    rep = run_export(src, tmp_path, ExportConfig(attention="fused", dynamic_batch=True, val_n=4))
    assert rep["attention"]["rewritten"] == DEPTH and rep["attention"]["max_abs_diff"] <= 1e-4
    assert count_fused(tmp_path / "model.ort.onnx") == DEPTH
    # model.onnx, which fp16/int8/TensorRT are built from, keeps standard ops only
    plain = onnx.load(str(tmp_path / "model.onnx"))
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
    x = _inputs(2)
    assert np.abs(_ort(tmp_path / "model.onnx", x) - _ort(tmp_path / "model.ort.onnx", x)).max() <= 1e-4


def test_export_config_rejects_unknown_attention_mode():
    from pydantic import ValidationError

    from vtpdeploy.deploy.export import ExportConfig

    with pytest.raises(ValidationError):
        ExportConfig(attention="mha")
