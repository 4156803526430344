"""export_onnx parity (ORT, OpenVINO), FP16, INT8 QDQ structure, run_export and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from helpers import make_vit, ort_logits
from onnx import numpy_helper

import vtpdeploy
from vtpdeploy.errors import NumericalMismatchError, VtpError

torch.set_num_threads(1)

def make_compact(name="vit_tiny_patch16_224", rate=0.4, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = make_vit(name, **kwargs)
    vtpdeploy.add_gates(m)
    for r in vtpdeploy.iter_gates(m):
        r.module.gate.data.uniform_(0.2, 2)
    return vtpdeploy.compact(m, vtpdeploy.plan(m, rate)).eval()


@pytest.fixture(scope="module")
def tiny():
    return make_compact(depth=4)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    from vtpdeploy.deploy.export import export_onnx

    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    return export_onnx(tiny, path, batch=2, openvino=False)


def test_export_tiny_parity_and_io(tiny, tiny_onnx):
    res = tiny_onnx
    assert res.path.is_file() and res.opset == 17 and res.input_shape == [2, 3, 32, 32]
    model = onnx.load(str(res.path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 32]
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    stages = [v["stage"] for v in res.validations]
    assert stages[0] == "fp32" and ("fp32-simplified" in stages) == res.simplified
    for v in res.validations:
        assert v["max_abs_diff"] <= 1e-4 and v["top1_agreement"] == 1.0 and v["passed"]
    # independent check on fresh inputs, through the shared runner
    from vtpdeploy.deploy.runners import make_runner

    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with make_runner("ort", res.path, threads=1) as r:
        out = r.infer(x)
    assert np.abs(out - tiny(torch.from_numpy(x)).detach().numpy()).max() <= 1e-4


def test_dynamic_batch(tiny, tmp_path):
    from vtpdeploy.deploy.export import export_onnx
    from vtpdeploy.deploy.runners import make_runner

    res = export_onnx(tiny, tmp_path / "dyn.onnx", dynamic_batch=True, simplify=False, openvino=False)
    dim0 = onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch" and res.input_shape[0] == "batch"
    x = np.random.default_rng(2).standard_normal((5, 3, 32, 32), dtype=np.float32)
    with make_runner("ort", res.path, threads=1) as r:
        assert r.infer(x).shape == (5, 10)


def test_openvino_parity(tiny, tmp_path):
    pytest.importorskip("openvino")
    from vtpdeploy.deploy.export import export_onnx

    res = export_onnx(tiny, tmp_path / "m.onnx", simplify=False, openvino=True)
    ov = [v for v in res.validations if v["backend"] == "openvino"]
    assert len(ov) == 1 and ov[0]["max_abs_diff"] <= 1e-4


def test_deit_tiny_compact_parity(tmp_path):
    from vtpdeploy.deploy.export import export_onnx

    model = make_compact("deit_tiny_patch16_224")
    sample = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    openvino = pytest.importorskip("openvino", reason="OpenVINO not installed") is not None
    res = export_onnx(model, tmp_path / "deit.onnx", sample=sample, openvino=openvino)
    backends = {v["backend"] for v in res.validations}
    assert backends == {"ort", "openvino"}
    assert all(v["max_abs_diff"] <= 1e-4 for v in res.validations)
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert "LayerNormalization" in ops  # opset 17 keeps it as one op


def test_mismatch_fails_and_leaves_no_onnx(tiny, tmp_path):
    from vtpdeploy.deploy.export import export_onnx

    target = tmp_path / "bad.onnx"
    with pytest.raises(NumericalMismatchError, match="max \\|diff\\|"):
        # a reference that is off by 1 can never pass
        export_onnx(tiny, target, sample=np.zeros((2, 3, 32, 32), np.float32), batch=2, simplify=False,
                    openvino=False, reference=np.ones((2, 10), np.float32) * 100)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp files left either


def test_atomic_overwrite_keeps_old_file_on_failure(tiny, tmp_path):
    from vtpdeploy.deploy.export import export_onnx

    target = tmp_path / "model.onnx"
    export_onnx(tiny, target, simplify=False, openvino=False)
    before = target.read_bytes()
    with pytest.raises(VtpError):
        export_onnx(tiny, target, simplify=False, openvino=False, reference=np.full((8, 10), 1e3, np.float32))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_fp16(tiny_onnx, tiny):
    from vtpdeploy.deploy.export.fp16 import convert_fp16
    from vtpdeploy.deploy.export.onnx_export import (
        random_inputs,
        torch_logits,
        validate_onnx,
    )

    dst = convert_fp16(tiny_onnx.path, tiny_onnx.path.with_name("model.fp16.onnx"))
    m = onnx.load(str(dst))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 for i in m.graph.initializer)
    x = random_inputs((3, 32, 32), 8)
    rec = validate_onnx(dst, torch_logits(tiny, x), x, stage="fp16", atol=None, batch=2)
    assert 0 < rec["max_abs_diff"] < 5e-2 and rec["top1_agreement"] >= 0.75


def _expected_axis(weight: dict) -> int:
    (consumer,) = weight["consumers"]
    if consumer["op"] == "Gemm":
        return 0 if consumer["transB"] else 1
    if consumer["op"] == "MatMul":
        return len(weight["shape"]) - 1
    return 0  # Conv: [out, in, kh, kw]


@pytest.mark.parametrize("simplify", [True, False])
def test_int8_qdq_symmetric_per_channel(tiny, tmp_path, simplify):
    from vtpdeploy.deploy.export import export_onnx
    from vtpdeploy.deploy.export.quantize import qdq_summary, quantize_int8

    res = export_onnx(tiny, tmp_path / "m.onnx", batch=2, simplify=simplify, openvino=False)
    calib = np.random.default_rng(3).standard_normal((16, 3, 32, 32), dtype=np.float32)
    quantize_int8(res.path, tmp_path / "m.int8.onnx", calib, method="MinMax")
    model = onnx.load(str(tmp_path / "m.int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qnodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qnodes
    for n in qnodes:  # read the zero points straight from the initializers
        assert len(n.input) == 3 and n.input[2] in inits
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    summary = qdq_summary(model)
    assert summary["nonzero_zero_points"] == []
    linear_weights = [w for w in summary["weights"] if len(w["shape"]) >= 2]
    # every Linear of the model (4 per block + head) and the patch-embed conv are quantized
    assert len(linear_weights) >= 4 * 4 + 1
    for w in linear_weights:
        assert w["dtype"] == "int8" and w["per_channel"], w
        assert w["axis"] == _expected_axis(w), w
        scale = inits[next(n.input[1] for n in qnodes if n.input[0] == w["name"])]
        assert scale.shape == (w["shape"][w["axis"]],)  # one scale per output channel


def test_run_export_end_to_end(tmp_path, tiny):
    from vtpdeploy.deploy.export import ExportConfig, run_export
    from vtpdeploy.deploy.sources import ModelSource

    calib_dir = tmp_path / "calib"
    calib_dir.mkdir()
    np.save(calib_dir / "calib.npy", np.random.default_rng(4).standard_normal((12, 3, 32, 32), dtype=np.float32))
    src = ModelSource(tiny, "tiny", {"input_size": [3, 32, 32]})
    held = (np.random.default_rng(5).standard_normal((10, 3, 32, 32), dtype=np.float32), np.arange(10) % 10)
    cfg = ExportConfig(fp16=True, int8=True, check_trt=True, val_n=6, batch=2)
    rep = run_export(src, tmp_path / "out", cfg, calib_dir=calib_dir, heldout=held, threads=1)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.fp16.onnx", "model.int8.onnx",
                                              "export.json", "trt_report.json"}
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["inputs"]["kind"] == "real" and on_disk["inputs"]["n"] == 6
    stages = {v["stage"] for v in on_disk["validations"]}
    assert {"fp32", "fp16", "int8"} <= stages
    assert on_disk["int8"]["zero_points_all_zero"] and on_disk["int8"]["weights_per_channel"]
    assert on_disk["int8"]["heldout"]["n"] == 10
    # the held-out agreement is what ONNX Runtime gives on the written files, recomputed here independently
    o32, o8 = ort_logits(out / "model.onnx", held[0], 2), ort_logits(out / "model.int8.onnx", held[0], 2)
    agreement = float((o32.argmax(-1) == o8.argmax(-1)).mean())
    assert on_disk["int8"]["heldout"]["top1_agreement"] == pytest.approx(agreement)
    assert on_disk["int8"]["heldout"]["accuracy_fp32"] == pytest.approx(float((o32.argmax(-1) == held[1]).mean()))
    assert agreement >= 0.5
    assert rep["artifacts"]["fp32"]["bytes"] == (out / "model.onnx").stat().st_size


def test_run_export_random_inputs_recorded(tmp_path, tiny):
    from vtpdeploy.deploy.export import ExportConfig, run_export
    from vtpdeploy.deploy.sources import ModelSource

    rep = run_export(ModelSource(tiny, "tiny", {"input_size": [3, 32, 32]}), tmp_path,
                     ExportConfig(val_n=4, simplify=False), threads=1)
    assert rep["inputs"]["kind"] == "random" and rep["inputs"]["seed"] == 0
    assert not (tmp_path / "trt_report.json").exists()


def test_export_config_forbids_unknown_keys():
    from pydantic import ValidationError

    from vtpdeploy.deploy.export import ExportConfig

    assert ExportConfig().opset == 17 and ExportConfig().atol == 1e-4 and not ExportConfig().enabled
    with pytest.raises(ValidationError):
        ExportConfig(opsett=16)


class _RmsNormAndInterleave(torch.nn.Module):
    """RMSNorm (AIMv2) and an interleaving repeat on a rank-4 tensor next to a rank-3 op on the same -1 (mixed
    RoPE): the two ops the legacy exporter needed a decomposition for at opset 17."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.RMSNorm(8)
        self.register_buffer("index", torch.tensor([6, 0, 3]))

    def forward(self, x):
        y = self.norm(x.flatten(2).transpose(1, 2))  # (B, 16, 8)
        rope = y.reshape(y.shape[0], 2, 16, 4).repeat_interleave(2, -1)  # (B, 2, 16, 8)
        return (rope.sum(1) + y).index_select(-1, self.index).flatten(1)


def test_exporter_decomposes_rms_norm_and_negative_repeat_interleave(tmp_path):
    from vtpdeploy.deploy.export import export_onnx
    from vtpdeploy.deploy.export.symbolics import SYMBOLICS

    try:
        from torch.onnx._internal.torchscript_exporter import registration
    except ImportError:  # torch < 2.9
        from torch.onnx._internal import registration

    torch.manual_seed(0)
    model = _RmsNormAndInterleave().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 8, 4, 4)
    result = export_onnx(model, tmp_path / "m.onnx", batch=2, sample=x, simplify=False, openvino=False, atol=1e-5)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"ReduceMean", "Sqrt"} <= ops and result.validations[0]["max_abs_diff"] <= 1e-5
    # Registered only while exporting: torch's own symbolics are back afterwards.
    assert not any(registration.registry.get_function_group(name)._functions.overridden(17) for name in SYMBOLICS)


def test_unpruned_eva_exports(tmp_path):
    """Eva's forward(x, attn_mask=None, is_causal=False): the legacy exporter traced the bool default as an input
    and SDPA got a tensor; the exporter traces the model behind a forward(x)."""
    from vtpdeploy.deploy.export import export_onnx

    torch.manual_seed(0)
    model = make_vit("vit_small_patch16_rope_mixed_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
                     num_heads=3, num_classes=10)
    result = export_onnx(model, tmp_path / "m.onnx", simplify=False, openvino=False)
    assert [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input] == ["input"]
    assert result.validations[0]["max_abs_diff"] <= 1e-4
