"""INT8 activation choice: s8 (TensorRT-valid, default) vs u8 (x86 ONNX Runtime / OpenVINO CPU).

u8: uint8 activation Q/DQ (asymmetric), weights still int8 symmetric per-channel; recorded in export.json
and flagged by the TensorRT readiness report. s8 stays the default and byte-identical to before.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from helpers import ort_logits, run_cli, tiny_vit
from onnx import TensorProto, helper, numpy_helper

import vtpdeploy
from vtpdeploy.errors import VtpError

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def tiny():
    m = tiny_vit()
    vtpdeploy.add_gates(m)
    for r in vtpdeploy.iter_gates(m):
        r.module.gate.data.uniform_(0.2, 2)
    return vtpdeploy.compact(m, vtpdeploy.plan(m, 0.4)).eval()


@pytest.fixture(scope="module")
def fp32_onnx(tiny, tmp_path_factory):
    from vtpdeploy.deploy.export import export_onnx

    return export_onnx(tiny, tmp_path_factory.mktemp("u8") / "m.onnx", batch=2, openvino=False).path


def _calib(n=16, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def _weight_axis(w):
    c = w["consumers"][0]
    if c["op"] == "Gemm":
        return 0 if c["transB"] else 1
    if c["op"] == "MatMul":
        return len(w["shape"]) - 1
    return 0


def _zero_points(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(n.input) == 3 and n.input[2] in inits
            out.append((n, inits[n.input[0]] if n.input[0] in inits else None, inits[n.input[2]]))
    return out


def _top1_agreement(a, b, x):
    from vtpdeploy.deploy.export.onnx_export import run_batched
    from vtpdeploy.deploy.runners import make_runner

    with make_runner("ort", a, threads=1) as ra, make_runner("ort", b, threads=1) as rb:
        oa, ob = run_batched(ra, x, 2), run_batched(rb, x, 2)
    return float((oa.argmax(-1) == ob.argmax(-1)).mean())


def test_u8_activations_uint8_weights_int8_per_channel(fp32_onnx, tmp_path):
    from vtpdeploy.deploy.export.quantize import qdq_summary, quantize_int8

    dst = tmp_path / "m.u8.onnx"
    settings = quantize_int8(fp32_onnx, dst, _calib(), method="MinMax", activation_type="u8")
    assert settings["activation_type"] == "QUInt8" and settings["activations"] == "u8"
    assert settings["weight_type"] == "QInt8" and settings["tensorrt_valid"] is False
    assert settings["extra_options"]["ActivationSymmetric"] is False
    assert settings["extra_options"]["WeightSymmetric"] is True
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    act_zps, weight_zps = [], []
    for n, w, zp in _zero_points(model):
        (weight_zps if w is not None else act_zps).append((n, w, zp))
    assert act_zps and weight_zps
    for n, _, zp in act_zps:  # activations: uint8, asymmetric
        assert zp.dtype == np.uint8, n.name
    assert any(zp.any() for _, _, zp in act_zps)  # asymmetric: real zero points, not all 0
    for n, w, zp in weight_zps:  # weights: int8, zero point 0
        assert w.dtype == np.int8 and zp.dtype == np.int8 and not zp.any(), n.name
    summary = qdq_summary(model)
    assert summary["quant_dtypes"]["uint8"] == len(act_zps)
    assert summary["quant_dtypes"]["int8"] == len(weight_zps)
    assert summary["non_int8_qdq"] and summary["nonzero_zero_points"]
    linear = [w for w in summary["weights"] if len(w["shape"]) >= 2]
    assert len(linear) >= 4 * 2 + 1
    for w in linear:
        assert w["dtype"] == "int8" and w["per_channel"] and w["zero_point_zero"], w
        assert w["axis"] == _weight_axis(w), w
    # top-1 agreement with fp32 (random init, synthetic inputs: a sanity bound, not an accuracy claim)
    agree = _top1_agreement(fp32_onnx, dst, _calib(32, seed=9))
    print(f"u8 vs fp32 top-1 agreement: {agree:.3f}")
    assert agree >= 0.8


def test_s8_default_unchanged(fp32_onnx, tmp_path):
    from vtpdeploy.deploy.export import ExportConfig
    from vtpdeploy.deploy.export.quantize import qdq_summary, quantize_int8

    assert ExportConfig().int8_activations == "s8"
    s_default = quantize_int8(fp32_onnx, tmp_path / "d.onnx", _calib(), method="MinMax")
    s_s8 = quantize_int8(fp32_onnx, tmp_path / "s8.onnx", _calib(), method="MinMax", activation_type="s8")
    assert s_default == s_s8
    assert s_default["activation_type"] == "QInt8" and s_default["tensorrt_valid"] is True
    assert s_default["extra_options"] == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                          "QuantizeBias": False, "OpTypesToExcludeOutputQuantization": ["MatMul"]}
    a, b = onnx.load(str(tmp_path / "d.onnx")), onnx.load(str(tmp_path / "s8.onnx"))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    for n, _, zp in _zero_points(a):
        assert zp.dtype == np.int8 and not zp.any(), n.name
    q = qdq_summary(a)
    assert set(q["quant_dtypes"]) == {"int8"} and not q["non_int8_qdq"] and not q["nonzero_zero_points"]


def test_unknown_activation_type(fp32_onnx, tmp_path):
    from vtpdeploy.deploy.export.quantize import quantize_int8

    with pytest.raises(VtpError, match="activation"):
        quantize_int8(fp32_onnx, tmp_path / "x.onnx", _calib(), activation_type="QUInt8")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("acts", ["u8", "s8"])
def test_run_export_records_choice_and_readiness(tiny, tmp_path, acts):
    from vtpdeploy.deploy.export import ExportConfig, run_export
    from vtpdeploy.deploy.sources import ModelSource

    calib_dir = tmp_path / "calib"
    calib_dir.mkdir()
    np.save(calib_dir / "calib.npy", _calib(12, seed=4))
    held = (_calib(10, seed=5), np.arange(10) % 10)
    cfg = ExportConfig(int8=True, int8_activations=acts, check_trt=True, val_n=6, batch=2, simplify=False)
    run_export(ModelSource(tiny, "tiny", {"input_size": [3, 32, 32]}), tmp_path / "out", cfg,
               calib_dir=calib_dir, heldout=held, threads=1)
    rep = json.loads((tmp_path / "out" / "export.json").read_text())
    assert rep["config"]["int8_activations"] == acts
    info = rep["int8"]
    assert info["activations"] == acts and info["settings"]["activations"] == acts
    assert info["weights_per_channel"] and info["weights_int8_symmetric"]
    # the held-out numbers are what ONNX Runtime gives on the written files, recomputed here independently
    hx, hy = held
    o32, o8 = ort_logits(tmp_path / "out" / "model.onnx", hx, 2), ort_logits(tmp_path / "out" / "model.int8.onnx", hx, 2)
    assert info["heldout"]["n"] == len(hx)
    assert info["heldout"]["top1_agreement"] == pytest.approx(float((o32.argmax(-1) == o8.argmax(-1)).mean()))
    assert info["heldout"]["accuracy_int8"] == pytest.approx(float((o8.argmax(-1) == hy).mean()))
    assert info["heldout"]["top1_agreement"] >= 0.5
    assert next(v for v in rep["validations"] if v["stage"] == "int8")["top1_agreement"] >= 0.5
    trt = json.loads((tmp_path / "out" / "trt_report.json").read_text())
    int8_warn = [w for w in trt["warnings"] if w.startswith("INT8:")]
    if acts == "u8":
        assert info["tensorrt_valid"] is False and info["zero_points_all_zero"] is False
        assert info["quant_dtypes"].get("uint8", 0) > 0
        assert trt["ok"] is False and trt["qdq"]["tensorrt_valid"] is False
        assert any("not int8" in w and "--int8-activations s8" in w for w in int8_warn)
        assert any("non-zero zero points" in w for w in int8_warn)
    else:
        assert info["tensorrt_valid"] is True and info["zero_points_all_zero"] is True
        assert set(info["quant_dtypes"]) == {"int8"}
        assert int8_warn == [] and trt["qdq"]["tensorrt_valid"] is True


def test_trt_build_refuses_u8_before_work(tiny, tmp_path):
    from vtpdeploy.deploy.export import ExportConfig, run_export
    from vtpdeploy.deploy.sources import ModelSource

    cfg = ExportConfig(int8=True, int8_activations="u8", trt=True)
    calib_dir = tmp_path / "calib"
    calib_dir.mkdir()
    np.save(calib_dir / "calib.npy", _calib(4))
    with pytest.raises(VtpError, match="u8"):
        run_export(ModelSource(tiny, "tiny", {"input_size": [3, 32, 32]}), tmp_path / "out", cfg,
                   calib_dir=calib_dir, threads=1)
    assert not (tmp_path / "out").exists()


def _qdq_graph(tmp_path, qtype, zp_value):
    """input -> QuantizeLinear -> DequantizeLinear -> output, with a `qtype` zero point."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("zp", qtype, [], [zp_value])]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"], name="q0"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["logits"], name="dq0")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"qdq_{qtype}_{zp_value}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("qtype,zp,flags", [
    (TensorProto.INT8, 0, set()),
    (TensorProto.INT8, 3, {"non-zero zero points"}),
    (TensorProto.UINT8, 0, {"not int8"}),  # uint8 is rejected even with zero point 0
    (TensorProto.UINT8, 128, {"not int8", "non-zero zero points"}),
])
def test_readiness_flags_uint8_and_zero_points(tmp_path, qtype, zp, flags):
    from vtpdeploy.deploy.export.readiness import check_trt_readiness

    path = _qdq_graph(tmp_path, qtype, zp)
    rep = check_trt_readiness(path, widths={"attention": [], "linear": [], "seq_len": None}, targets=["10"],
                              int8_path=path)
    int8_warn = [w for w in rep["warnings"] if w.startswith("INT8:")]
    assert {f for f in ("not int8", "non-zero zero points") if any(f in w for w in int8_warn)} == flags
    assert rep["qdq"]["tensorrt_valid"] is (not flags)


def test_cli_int8_activations(tiny, tmp_path):
    vtpdeploy.save(tiny, tmp_path / "model")
    calib_dir = tmp_path / "calib"
    calib_dir.mkdir()
    np.save(calib_dir / "calib.npy", _calib(8, seed=6))
    bad = run_cli("export", tmp_path / "model", "--int8", "--calib", calib_dir, "--int8-activations", "u16",
               "--out", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "--int8-activations" in bad.stderr
    trt = run_cli("export", tmp_path / "model", "--int8", "--calib", calib_dir, "--int8-activations", "u8", "--trt",
               "--out", tmp_path / "trt")
    assert trt.returncode == 2 and "u8" in trt.stderr and len(trt.stderr.strip().splitlines()) == 1
    proc = run_cli("export", tmp_path / "model", "--int8", "--calib", calib_dir, "--int8-activations", "u8",
                "--check", "trt", "--no-simplify", "--batch", 2, "--threads", 1, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "u8 activations" in proc.stdout
    rep = json.loads((tmp_path / "out" / "export.json").read_text())
    assert rep["config"]["int8_activations"] == "u8" and rep["int8"]["activations"] == "u8"
    assert rep["int8"]["tensorrt_valid"] is False
    trt_rep = json.loads((tmp_path / "out" / "trt_report.json").read_text())
    assert any("not int8" in w for w in trt_rep["warnings"])
