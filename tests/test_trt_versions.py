"""TensorRT version surface: the builder takes the right branch on TensorRT 8.6, 10.x and 11.x.

API-SURFACE TESTS, NEVER RESULTS: the `tensorrt` modules and `trtexec` used here are stand-ins
(tests/trt_standins) that expose exactly the API each version has and build no engine (they write a
placeholder that says so). They assert which flags, network flags and trtexec options vtpdeploy uses
per version x precision, and that nothing missing in a version is touched.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trt_standins import (
    TRTEXEC_VERSIONS,
    VERSIONS,
    read_log,
    use_python_trt,
    use_trtexec,
)

from vtpdeploy.deploy.export.trt_build import build_engine
from vtpdeploy.deploy.export.trt_versions import (
    ONNX_FILE,
    TrtVersion,
    member,
    onnx_for,
    onnx_precision,
    plan_build,
    version_from_trtexec_output,
)
from vtpdeploy.errors import VtpError

PLACEHOLDER = b"TRT-STANDIN placeholder"

# What each version must do, written out by hand from the API docs (not derived from the code under test):
# network flags, builder flags set, strongly typed, and which ONNX the export stage feeds it.
EXPECTED = {
    ("8.6", "fp32"): (["EXPLICIT_BATCH"], [], False, "fp32"),
    ("8.6", "fp16"): (["EXPLICIT_BATCH"], ["FP16"], False, "fp32"),
    ("8.6", "int8"): (["EXPLICIT_BATCH"], ["FP16", "INT8"], False, "int8"),
    ("10", "fp32"): ([], [], False, "fp32"),
    ("10", "fp16"): ([], ["FP16"], False, "fp32"),
    ("10", "int8"): ([], ["FP16", "INT8"], False, "int8"),
    ("11", "fp32"): ([], [], True, "fp32"),
    ("11", "fp16"): ([], [], True, "fp16"),
    ("11", "int8"): ([], [], True, "int8-fp16"),
}
MATRIX = sorted(EXPECTED)


def _tiny_fp32(path, batch=2):
    """input [N,3,4,4] -> Flatten -> MatMul [48,10] -> Add -> logits (opset 17)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [48, 10], rng.standard_normal(480).astype(np.float32)),
             helper.make_tensor("b", TensorProto.FLOAT, [10], rng.standard_normal(10).astype(np.float32))]
    nodes = [helper.make_node("Flatten", ["input"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "b"], ["logits"], name="bias")]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """model.onnx, model.fp16.onnx, model.int8.onnx (ORT QDQ), model.int8.fp16.onnx, and a dynamic-batch fp32."""
    from vtpdeploy.deploy.export.fp16 import convert_fp16
    from vtpdeploy.deploy.export.quantize import int8_fp16, quantize_int8

    d = tmp_path_factory.mktemp("onnx")
    files = {"fp32": _tiny_fp32(d / ONNX_FILE["fp32"])}
    files["fp16"] = convert_fp16(files["fp32"], d / ONNX_FILE["fp16"])
    calib = np.random.default_rng(1).standard_normal((8, 3, 4, 4)).astype(np.float32)
    quantize_int8(files["fp32"], d / ONNX_FILE["int8"], calib, method="MinMax")
    files["int8"] = d / ONNX_FILE["int8"]
    files["int8-fp16"] = int8_fp16(files["int8"], d / ONNX_FILE["int8-fp16"])
    files["dynamic"] = _tiny_fp32(d / "dynamic.onnx", batch="batch")
    return files


def test_onnx_precision_reads_the_graph(onnx_files):
    assert {k: onnx_precision(v) for k, v in onnx_files.items()} == {
        "fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8-fp16": "int8-fp16", "dynamic": "fp32"}
    fp16_qdq = onnx.load(str(onnx_files["int8-fp16"]))
    assert next(o.version for o in fp16_qdq.opset_import if o.domain == "") == 19  # fp16 Q/DQ needs opset 19


@pytest.mark.parametrize("text,expected", [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help", (8, 6, 1)),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec", (8, 5, 2)),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec", (10, 3, 0)),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec", (11, 0, 0)),
    ("[01/01/2025-00:00:00] [I] TensorRT version: 10.13.0", (10, 13, 0)),
])
def test_trtexec_version_line(text, expected):
    v = version_from_trtexec_output(text)
    assert (v.major, v.minor, v.patch) == expected
    assert version_from_trtexec_output("usage: trtexec [options]") is None


def test_unsupported_and_impossible_builds_are_one_line_errors():
    with pytest.raises(VtpError, match="older than 8.5"):
        plan_build(TrtVersion.parse("8.4.3"), "fp32", "fp32")
    with pytest.raises(VtpError, match="no FP16 builder flag"):  # 11 + fp32 ONNX + fp16: needs model.fp16.onnx
        plan_build(TrtVersion.parse("11.0.0"), "fp16", "fp32")
    with pytest.raises(VtpError, match="needs TensorRT >= 10"):  # opset-19 fp16 Q/DQ on 8.6
        plan_build(TrtVersion.parse("8.6.1"), "int8", "int8-fp16")
    with pytest.raises(VtpError, match="Q/DQ ONNX"):  # no implicit calibration anywhere
        plan_build(TrtVersion.parse("10.3.0"), "int8", "fp32")
    with pytest.raises(VtpError, match="cannot be built as an fp32 engine"):
        plan_build(TrtVersion.parse("10.3.0"), "fp32", "int8")
    with pytest.raises(VtpError, match="cannot read a TensorRT version"):
        TrtVersion.parse("unknown")


def test_missing_enum_member_is_a_vtp_error(monkeypatch, tmp_path):
    trt = use_python_trt(monkeypatch, "11", tmp_path / "log.jsonl")
    with pytest.raises(AttributeError):  # the stand-in really lacks it ...
        trt.BuilderFlag.FP16
    with pytest.raises(VtpError, match="TensorRT 11.0.0.9 has no BuilderFlag.FP16"):  # ... and we say so in one line
        member(trt.BuilderFlag, "FP16", trt.__version__)


@pytest.mark.parametrize("version,precision", MATRIX)
def test_python_api_branch(monkeypatch, tmp_path, onnx_files, version, precision):
    log = tmp_path / "calls.jsonl"
    use_python_trt(monkeypatch, version, log)
    net_flags, flags, strongly, kind = EXPECTED[version, precision]
    assert onnx_for(TrtVersion.parse(VERSIONS[version]), precision) == kind
    engine = tmp_path / "model.engine"
    info = build_engine(onnx_files[kind], engine, precision=precision, input_shape=[2, 3, 4, 4])
    assert engine.read_bytes().startswith(PLACEHOLDER)  # a stand-in: no real engine was built
    calls = read_log(log)
    (net,) = [c for c in calls if c["api"] == "Builder.create_network"]
    assert net["flag_names"] == net_flags
    assert sorted(c["flag"] for c in calls if c["api"] == "IBuilderConfig.set_flag") == flags
    cleared = [c["flag"] for c in calls if c["api"] == "IBuilderConfig.clear_flag"]
    assert cleared == (["TF32"] if precision == "fp32" else [])  # true fp32: TF32 cleared
    (build,) = [c for c in calls if c["api"] == "Builder.build_serialized_network"]
    assert build["strongly_typed"] is strongly
    assert ("TF32" in build["builder_flags"]) is (precision != "fp32")
    on_disk = json.loads((tmp_path / "engine.json").read_text())
    assert on_disk == info
    assert info["tensorrt_version"] == VERSIONS[version] and info["precision"] == precision
    assert info["onnx_kind"] == kind and info["strongly_typed"] is strongly
    assert info["builder_flags"] == flags and info["network_flags"] == net_flags
    assert info["tf32"] is (precision != "fp32")
    assert {"gpu", "gpu_clocks"} <= set(info) and set(info["gpu_clocks"]) >= {"sm_clock_mhz", "mem_clock_mhz"}


@pytest.mark.parametrize("version,precision", MATRIX)
def test_trtexec_branch(monkeypatch, tmp_path, onnx_files, version, precision):
    log = tmp_path / "calls.jsonl"
    use_trtexec(monkeypatch, tmp_path, version, log)
    _, flags, strongly, kind = EXPECTED[version, precision]
    engine = tmp_path / "model.engine"
    info = build_engine(onnx_files[kind], engine, precision=precision, input_shape=[2, 3, 4, 4])
    assert engine.read_bytes().startswith(PLACEHOLDER)
    (run,) = [c for c in read_log(log) if c.get("tool") == "trtexec" and "--help" not in c["argv"]]
    argv = run["argv"]
    assert "rejected" not in run and run["strongly_typed"] is strongly
    assert ("--fp16" in argv) is ("FP16" in flags) and ("--int8" in argv) is ("INT8" in flags)
    assert ("--noTF32" in argv) is (precision == "fp32")
    assert "--stronglyTyped" not in argv  # never needed on 8.6 (absent), 10 weakly typed, 11 (default)
    assert "--skipInference" in argv and run["inference"] is False  # 8.6+: build only
    assert info["tensorrt_version"] == TRTEXEC_VERSIONS[version]  # read from trtexec's banner
    assert info["builder"] == "trtexec" and info["builder_flags"] == flags


def use_builder(builder: str, monkeypatch, tmp_path, version: str, log) -> None:
    """The stand-in TensorRT `version` behind the Python builder or behind trtexec."""
    if builder == "python":
        use_python_trt(monkeypatch, version, log)
    else:
        use_trtexec(monkeypatch, tmp_path, version, log)


@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_trt10_strongly_typed_from_typed_onnx(monkeypatch, tmp_path, onnx_files, builder):
    """10.x builds an explicitly typed ONNX (fp16, fp16 Q/DQ) strongly typed, without the FP16/INT8 flags."""
    log = tmp_path / "calls.jsonl"
    use_builder(builder, monkeypatch, tmp_path, "10", log)
    for precision, kind in (("fp16", "fp16"), ("int8", "int8-fp16")):
        info = build_engine(onnx_files[kind], tmp_path / f"{kind}.engine", precision=precision,
                            input_shape=[2, 3, 4, 4], builder=builder)
        assert info["strongly_typed"] and info["network_flags"] == ["STRONGLY_TYPED"] and info["builder_flags"] == []
    calls = read_log(log)
    if builder == "python":
        assert not [c for c in calls if c["api"] == "IBuilderConfig.set_flag"]
    else:
        runs = [c["argv"] for c in calls if c.get("tool") == "trtexec" and "--help" not in c["argv"]]
        assert len(runs) == 2 and all("--stronglyTyped" in a and "--fp16" not in a and "--int8" not in a for a in runs)


@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_trt11_int8_from_fp32_qdq_is_noted(monkeypatch, tmp_path, onnx_files, builder):
    """11 builds a fp32 Q/DQ model (valid), but records that its float ops stay fp32."""
    log = tmp_path / "calls.jsonl"
    use_builder(builder, monkeypatch, tmp_path, "11", log)
    info = build_engine(onnx_files["int8"], tmp_path / "m.engine", precision="int8", input_shape=[2, 3, 4, 4])
    assert info["strongly_typed"] and any("fp32" in n and ONNX_FILE["int8-fp16"] in n for n in info["notes"])


@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_dynamic_batch_profile(monkeypatch, tmp_path, onnx_files, builder):
    log = tmp_path / "calls.jsonl"
    use_builder(builder, monkeypatch, tmp_path, "8.6", log)
    info = build_engine(onnx_files["dynamic"], tmp_path / "d.engine", precision="fp32",
                        input_shape=["batch", 3, 4, 4], batch_range=(1, 8, 32))
    assert info["shapes"] == {"min": [1, 3, 4, 4], "opt": [8, 3, 4, 4], "max": [32, 3, 4, 4]}
    calls = read_log(log)
    if builder == "python":
        (prof,) = [c for c in calls if c.get("api") == "IOptimizationProfile.set_shape"]
        assert prof["input"] == "input" and prof["min"] == [1, 3, 4, 4] and prof["max"] == [32, 3, 4, 4]
    else:
        (run,) = [c for c in calls if c.get("tool") == "trtexec" and "--help" not in c["argv"]]
        assert {"--minShapes=input:1x3x4x4", "--optShapes=input:8x3x4x4", "--maxShapes=input:32x3x4x4"} <= set(run["argv"])


def test_trtexec_8_5_has_no_skip_inference(monkeypatch, tmp_path, onnx_files):
    """8.5's trtexec lacks --skipInference: the build runs the shortest inference trtexec allows instead."""
    import trt_standins

    monkeypatch.setitem(trt_standins.TRTEXEC_VERSIONS, "8.6", "8.5.2")
    log = tmp_path / "calls.jsonl"
    use_trtexec(monkeypatch, tmp_path, "8.6", log)
    info = build_engine(onnx_files["fp32"], tmp_path / "m.engine", precision="fp32", input_shape=[2, 3, 4, 4])
    (run,) = [c for c in read_log(log) if c.get("tool") == "trtexec" and "--help" not in c["argv"]]
    assert "--skipInference" not in run["argv"] and "--iterations=1" in run["argv"] and "rejected" not in run
    assert info["tensorrt_version"] == "8.5.2"


def test_trtexec_without_version_is_one_line_error(monkeypatch, tmp_path, onnx_files):
    from vtpdeploy.deploy.export.trt_versions import trtexec_version

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtexec"
    exe.write_text("#!/bin/sh\necho 'usage: trtexec'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    trtexec_version.cache_clear()
    with pytest.raises(VtpError, match="printed no TensorRT version"):
        build_engine(onnx_files["fp32"], tmp_path / "m.engine", precision="fp32", input_shape=[2, 3, 4, 4],
                     builder="trtexec")
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("version", ["8.6", "10", "11"])
def test_runner_engine_api_on_every_version(monkeypatch, tmp_path, onnx_files, version):
    """The runner's engine introspection uses only API each version has (no binding API, no removed sizes)."""
    from vtpdeploy.deploy.runners.trt_runner import (
        _dims,
        engine_device_memory,
        engine_io,
    )

    trt = use_python_trt(monkeypatch, version, tmp_path / "calls.jsonl")
    engine_path = tmp_path / "m.engine"
    build_engine(onnx_files["fp32"], engine_path, precision="fp32", input_shape=[2, 3, 4, 4])
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(engine_path.read_bytes())
    names, inputs, outputs = engine_io(trt, engine)
    assert names == ["input", "logits"] and inputs == ["input"] and outputs == ["logits"]
    assert _dims(engine.get_tensor_shape("input")) == (2, 3, 4, 4)
    assert engine_device_memory(engine) == 1 << 20  # v2 on 10/11, the old property on 8.6
    assert hasattr(engine, "device_memory_size") is (version != "11")
    assert hasattr(engine, "num_bindings") is (version == "8.6")


def test_type_stubs_folder_is_not_an_installed_tensorrt(monkeypatch, tmp_path):
    """tensorrt-stubs installs a bare `tensorrt/` folder of .pyi files: a namespace package, not TensorRT."""
    from vtpdeploy.deploy.export.trt_build import trt_available

    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("__version__: str\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert trt_available() is None
