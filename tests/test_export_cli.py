"""`vtpdeploy export` / `vtpdeploy calib` through the real CLI: exit codes, one-line errors, outputs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import timm
import torch
import yaml
from helpers import run_cli as cli

import vtpdeploy

torch.set_num_threads(1)
def assert_one_line_error(proc, code=2, match=None):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    if match:
        assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from vtpdeploy.train.recipe import Recipe

    run = tmp_path_factory.mktemp("clirun") / "run"
    run.mkdir()
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=64,
                          depth=2, num_heads=4, num_classes=10).eval()
    vtpdeploy.add_gates(m)
    for r in vtpdeploy.iter_gates(m):
        r.module.gate.data.uniform_(0.2, 2)
    vtpdeploy.save(vtpdeploy.compact(m, vtpdeploy.plan(m, 0.4)).eval(), run / "model")
    (run / "recipe.yaml").write_text(yaml.safe_dump(Recipe().model_dump(mode="json")))
    (run / "manifest.json").write_text("{}")
    return run


@pytest.fixture(scope="module")
def calib_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clicalib") / "calib"
    proc = cli("calib", run_dir, "--out", out, "--n", 32, "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    assert (out / "calib.npy").is_file() and json.loads((out / "manifest.json").read_text())["n"] == 32
    return out


def test_export_full_run_dir(run_dir, calib_dir):
    proc = cli("export", run_dir, "--int8", "--calib", calib_dir, "--fp16", "--check", "trt", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    out = run_dir / "export"  # default: <run dir>/export
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "export.json", "trt_report.json"} <= {
        p.name for p in out.iterdir()}
    rep = json.loads((out / "export.json").read_text())
    assert rep["inputs"]["kind"] == "real" and "digits val" in rep["inputs"]["from"]
    fp32 = [v for v in rep["validations"] if v["stage"].startswith("fp32")]
    assert fp32 and all(v["max_abs_diff"] <= 1e-4 for v in fp32)
    held = rep["int8"]["heldout"]
    assert held["n"] == 450 and held["from"] == "digits val split"  # never the calibration images
    assert rep["int8"]["calibration"]["n"] == 32
    assert not any(p.name.endswith(".tmp") or p.name.endswith(".pending") for p in out.iterdir())


def test_strict_readiness_exits_1(run_dir, tmp_path):
    # the compact tiny model has widths that are not multiples of 8 -> warnings -> exit 1 with --strict
    proc = cli("export", run_dir, "--out", tmp_path / "o", "--check", "trt", "--strict", "--no-simplify",
               "--threads", 1)
    assert_one_line_error(proc, code=1, match="readiness")
    assert (tmp_path / "o" / "trt_report.json").is_file() and (tmp_path / "o" / "export.json").is_file()


def test_missing_and_corrupt_source(tmp_path):
    assert_one_line_error(cli("export", tmp_path / "nope", "--out", tmp_path / "o"), match="no such")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    (bad / "model.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"garbage")
    assert_one_line_error(cli("export", bad, "--out", tmp_path / "o"))
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_int8_without_calib(run_dir, tmp_path):
    assert_one_line_error(cli("export", run_dir, "--int8", "--out", tmp_path / "o"), match="--calib")


def test_empty_and_misfit_calibration(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("export", run_dir, "--int8", "--calib", tmp_path / "empty", "--out", tmp_path / "o"),
                          match="calib.npy")
    (tmp_path / "wrong").mkdir()
    np.save(tmp_path / "wrong" / "calib.npy", np.zeros((4, 3, 224, 224), np.float32))
    assert_one_line_error(cli("export", run_dir, "--int8", "--calib", tmp_path / "wrong", "--out", tmp_path / "o"),
                          match="model expects")
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_unwritable_output_dir(run_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a path below a regular file can never be created (even as root)
    assert_one_line_error(cli("export", run_dir, "--out", blocker / "sub"), match="cannot write")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_without_tensorrt(run_dir, tmp_path, monkeypatch):
    import shutil

    if shutil.which("trtexec"):
        pytest.skip("trtexec is on PATH")
    assert_one_line_error(cli("export", run_dir, "--trt", "--out", tmp_path / "o"), match="vtpdeploy[trt]")
    assert not (tmp_path / "o").exists()


def test_calib_bad_inputs(tmp_path, run_dir):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("calib", tmp_path / "empty", "--out", tmp_path / "c", "--input-size", "3,32,32"),
                          match="no images")
    assert_one_line_error(cli("calib", tmp_path / "missing", "--out", tmp_path / "c"))
    assert_one_line_error(cli("calib", run_dir, "--out", tmp_path / "c", "--split", "val"), match="train")


@pytest.mark.trt
def test_trt_engine_build(run_dir, tmp_path):
    pytest.importorskip("tensorrt", reason="needs the tensorrt Python package (pip install 'vtpdeploy[trt]')")
    proc = cli("export", run_dir, "--fp16", "--trt", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "o" / "model.fp16.engine.json").read_text())
    assert info["precision"] == "fp16" and (tmp_path / "o" / "model.fp16.engine").stat().st_size > 0


# ---- TensorRT 8.6 / 10 / 11 through the CLI, on stand-ins (tests/trt_standins) ------------------------------
# API-SURFACE TESTS, NEVER RESULTS: the stand-ins build no engine (a placeholder file that says so).
# Which ONNX each version must build each precision from (fp16/int8 on strongly typed 11: the typed artifacts).
TRT_ONNX = {("8.6", "fp32"): "model.onnx", ("8.6", "fp16"): "model.onnx", ("8.6", "int8"): "model.int8.onnx",
            ("10", "fp32"): "model.onnx", ("10", "fp16"): "model.onnx", ("10", "int8"): "model.int8.onnx",
            ("11", "fp32"): "model.onnx", ("11", "fp16"): "model.fp16.onnx", ("11", "int8"): "model.int8.fp16.onnx"}


@pytest.mark.parametrize("builder", ["python", "trtexec"])
@pytest.mark.parametrize("version", ["8.6", "10", "11"])
def test_export_trt_on_standin_versions(run_dir, calib_dir, tmp_path, monkeypatch, version, builder):
    from helpers import run_cli_inprocess
    from trt_standins import read_log, use_python_trt, use_trtexec

    log = tmp_path / "calls.jsonl"
    if builder == "python":
        use_python_trt(monkeypatch, version, log)
    else:
        use_trtexec(monkeypatch, tmp_path, version, log)
    for precision, extra in (("fp32", []), ("fp16", ["--fp16"]), ("int8", ["--int8", "--calib", calib_dir])):
        out = tmp_path / precision
        proc = run_cli_inprocess("export", run_dir, "--trt", *extra, "--out", out, "--no-simplify", "--threads", 1)
        assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        info = json.loads((out / f"model.{precision}.engine.json").read_text())
        assert info["precision"] == precision and info["builder"] == builder
        assert info["onnx"] == str(out / TRT_ONNX[version, precision]) and info["tensorrt_version"].startswith(version)
        assert (out / f"model.{precision}.engine").read_bytes().startswith(b"TRT-STANDIN placeholder")
        assert f"{precision} engine from {TRT_ONNX[version, precision]}" in proc.stdout
        rep = json.loads((out / "export.json").read_text())
        assert rep["engines"] == {precision: info}
        twin = [v for v in rep["validations"] if v["stage"] == "int8-fp16"]
        if version == "11" and precision == "int8":  # written and validated with an explicit tolerance
            assert len(twin) == 1 and twin[0]["passed"] and twin[0]["max_abs_diff"] <= twin[0]["atol"]
            assert rep["artifacts"]["int8_fp16"]["path"] == "model.int8.fp16.onnx"
        else:
            assert not twin and not (out / "model.int8.fp16.onnx").exists()
    calls = read_log(log)
    if builder == "trtexec":
        runs = [c for c in calls if c.get("tool") == "trtexec" and "--help" not in c["argv"]]
        assert len(runs) == 3 and not any("rejected" in c for c in runs)
    else:
        assert len([c for c in calls if c["api"] == "Builder.build_serialized_network"]) == 3


@pytest.mark.parametrize("builder,version,args", [
    ("python", "8.6", ["--int8"]),
    ("trtexec", "11", ["--fp16"]),
])
def test_export_trt_standin_subprocess_no_traceback(run_dir, calib_dir, tmp_path, builder, version, args):
    """The real entry point (python -m vtpdeploy) with a stand-in TensorRT first on PYTHONPATH / PATH."""
    from trt_standins import python_dir, write_trtexec

    import os

    env = {"TRT_STANDIN_LOG": str(tmp_path / "calls.jsonl")}
    if builder == "python":
        env["PYTHONPATH"] = os.pathsep.join([str(python_dir(version)), os.environ.get("PYTHONPATH", "")])
    else:
        exe = write_trtexec(tmp_path / "bin", version)
        env["PATH"] = f"{exe.parent}{os.pathsep}{os.environ['PATH']}"
        env["VTPDEPLOY_TRT_BUILDER"] = "trtexec"
    extra = ["--calib", calib_dir] if "--int8" in args else []
    proc = cli("export", run_dir, "--trt", *args, *extra, "--out", tmp_path / "o", "--no-simplify", "--threads", 1,
               env=env, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    precision = "int8" if "--int8" in args else "fp16"
    info = json.loads((tmp_path / "o" / f"model.{precision}.engine.json").read_text())
    assert info["builder"] == builder and info["tensorrt_version"].startswith(version)


def test_int8_fp16_needs_int8(run_dir, tmp_path):
    assert_one_line_error(cli("export", run_dir, "--int8-fp16", "--out", tmp_path / "o"), match="--int8-fp16")
