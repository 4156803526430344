"""The legacy ONNX exporter call works on every torch the floor allows (2.3/2.4 have no `dynamo` argument)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vtpdeploy.deploy.export import export_onnx
from vtpdeploy.deploy.export.onnx_export import legacy_exporter_kwargs

REAL_EXPORT = torch.onnx.export


def _export_torch_2_4(model, args, f, export_params=True, verbose=False, training=None, input_names=None,
                      output_names=None, operator_export_type=None, opset_version=None, do_constant_folding=True,
                      dynamic_axes=None, keep_initializers_as_inputs=None, custom_opsets=None,
                      export_modules_as_functions=False, autograd_inlining=True):
    """torch 2.4's `torch.onnx.export` signature (no `dynamo`); runs the installed legacy exporter."""
    _export_torch_2_4.calls.append({"opset_version": opset_version, "dynamic_axes": dynamic_axes})
    REAL_EXPORT(model, args, f, dynamo=False, export_params=export_params, input_names=input_names,
                output_names=output_names, opset_version=opset_version, do_constant_folding=do_constant_folding,
                dynamic_axes=dynamic_axes)


def _export_torch_2_9(model, args=(), f=None, *, dynamo=True, **kwargs):
    """torch >= 2.9: `dynamo` exists and defaults to True (the dynamo exporter, opset 18+)."""
    _export_torch_2_9.calls.append({"dynamo": dynamo, "opset_version": kwargs.get("opset_version")})
    REAL_EXPORT(model, args, f, dynamo=dynamo, **kwargs)


def test_floor_allows_no_torch_without_the_apis_used():
    """torch.amp.GradScaler('cuda') (2.3) is the newest API the code needs; the floor says so."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', text)
    assert floor is not None and (int(floor[1]), int(floor[2])) == (2, 3)
    assert hasattr(torch.amp, "GradScaler")


def test_export_works_with_torch_2_4_signature(monkeypatch, tiny_vit, tmp_path):
    _export_torch_2_4.calls = []
    monkeypatch.setattr(torch.onnx, "export", _export_torch_2_4)
    assert legacy_exporter_kwargs() == {}
    res = export_onnx(tiny_vit(), tmp_path / "m.onnx", batch=2, dynamic_batch=True, openvino=False, simplify=False)
    assert _export_torch_2_4.calls == [{"opset_version": 17, "dynamic_axes": {"input": {0: "batch"},
                                                                               "logits": {0: "batch"}}}]
    assert res.validations[0]["passed"] and res.validations[0]["max_abs_diff"] <= 1e-4


def test_export_passes_dynamo_false_where_torch_has_it(monkeypatch, tiny_vit, tmp_path):
    _export_torch_2_9.calls = []
    monkeypatch.setattr(torch.onnx, "export", _export_torch_2_9)
    export_onnx(tiny_vit(), tmp_path / "m.onnx", batch=1, openvino=False, simplify=False)
    assert _export_torch_2_9.calls == [{"dynamo": False, "opset_version": 17}]
    import onnx

    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == 17


def test_unreadable_signature_falls_back_to_the_version(monkeypatch):
    import vtpdeploy.deploy.export.onnx_export as ox

    def no_signature(fn):
        raise ValueError("no signature found for builtin")

    monkeypatch.setattr(ox.inspect, "signature", no_signature)
    monkeypatch.setattr(torch, "__version__", "2.4.1+cpu")
    assert legacy_exporter_kwargs(print) == {}
    monkeypatch.setattr(torch, "__version__", "2.5.0")
    assert legacy_exporter_kwargs(print) == {"dynamo": False}


def test_latency_table_export_uses_the_same_call(monkeypatch):
    """The latency table's per-part ONNX goes through the version-aware call too."""
    pytest.importorskip("onnxruntime")
    from helpers import make_vit

    from vtpdeploy.latency import measure, parts

    _export_torch_2_4.calls = []
    monkeypatch.setattr(torch.onnx, "export", _export_torch_2_4)
    model = make_vit()
    dims = parts.model_dims(model)
    measure = measure.runner_measure("ort", batch=1, threads=1, iters=2, warmup=1, model=model)
    ms = measure("mlp", (dims["embed_dim"], 64), dims)
    assert np.isfinite(ms) and ms > 0
    assert [c["opset_version"] for c in _export_torch_2_4.calls] == [17]
