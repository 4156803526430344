"""Bench TensorRT engines are labelled by what they are and never overwrite the export's engine.

API-SURFACE TESTS on stand-in TensorRT (tests/trt_standins): no engine is built or timed, and nothing
here is a result. They check cache keys, precision read from the ONNX, batch ranges and the record.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_trt_versions import _tiny_fp32
from trt_standins import VERSIONS, read_log, use_python_trt

from vtpdeploy.deploy.bench.artifacts import resolve
from vtpdeploy.errors import VtpError


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """An export dir: model.onnx (batch 2), model.fp16.onnx, model.int8.onnx, a dynamic one, and the export's
    own model.engine + engine.json (fp16), which bench must never touch."""
    from vtpdeploy.deploy.export.fp16 import convert_fp16
    from vtpdeploy.deploy.export.quantize import quantize_int8

    d = tmp_path_factory.mktemp("export")
    _tiny_fp32(d / "model.onnx")
    convert_fp16(d / "model.onnx", d / "model.fp16.onnx")
    calib = np.random.default_rng(1).standard_normal((8, 3, 4, 4)).astype(np.float32)
    quantize_int8(d / "model.onnx", d / "model.int8.onnx", calib, method="MinMax")
    _tiny_fp32(d / "dynamic.onnx", batch="batch")
    (d / "model.engine").write_bytes(b"the export's fp16 engine")
    (d / "engine.json").write_text(json.dumps({"engine": str(d / "model.engine"), "precision": "fp16"}))
    return d


def _builds(log):
    return [c for c in read_log(log) if c["api"] == "Builder.build_serialized_network"]


@pytest.mark.parametrize("version", ["8.6", "10", "11"])
def test_bench_engine_never_overwrites_export(monkeypatch, tmp_path, export_dir, version):
    log = tmp_path / "calls.jsonl"
    use_python_trt(monkeypatch, version, log)
    d = tmp_path / "export"
    shutil.copytree(export_dir, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    art = resolve(str(d / "model.onnx"))
    engine, file = art.for_backend("trt", 2)
    assert engine == file and engine.parent == d / "bench_cache" and engine.name != "model.engine"
    info = art.trt_info[2]
    assert info["precision"] == "fp32" and info["tensorrt_version"] == VERSIONS[version] and info["tf32"] is False
    sha = info["onnx_sha256"]
    assert engine.name == f"model.{sha[:16]}.fp32.b2-2-2.trt{VERSIONS[version]}.engine"
    assert json.loads(engine.with_name(engine.name + ".json").read_text())["onnx_sha256"] == sha
    assert {"builder_flags", "network_flags", "gpu", "gpu_clocks", "bench_gpu"} <= set(info)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before  # export untouched


def test_precision_read_from_the_onnx(monkeypatch, tmp_path, export_dir):
    log = tmp_path / "calls.jsonl"
    use_python_trt(monkeypatch, "10", log)
    cache = tmp_path / "cache"
    got = {}
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        art = resolve(str(export_dir / name), cache)
        art.for_backend("trt", 2)
        got[name] = (art.trt_info[2]["precision"], art.trt_info[2]["builder_flags"])
    assert got == {"model.onnx": ("fp32", []), "model.fp16.onnx": ("fp16", []),  # fp16: strongly typed on 10
                   "model.int8.onnx": ("int8", ["FP16", "INT8"])}  # Q/DQ: the INT8 flag a weak builder needs
    assert [(b["strongly_typed"], b["qdq"]) for b in _builds(log)] == [(False, False), (True, False), (False, True)]


def test_batch_range_follows_batch(monkeypatch, tmp_path, export_dir):
    log = tmp_path / "calls.jsonl"
    use_python_trt(monkeypatch, "8.6", log)
    art = resolve(str(export_dir / "dynamic.onnx"), tmp_path / "cache")
    e1, _ = art.for_backend("trt", 1)
    e8, _ = art.for_backend("trt", 8)
    assert e1 != e8 and ".b8-8-8." in e8.name
    assert art.trt_info[8]["shapes"] == {"min": [8, 3, 4, 4], "opt": [8, 3, 4, 4], "max": [8, 3, 4, 4]}
    fixed = resolve(str(export_dir / "model.onnx"), tmp_path / "cache")
    with pytest.raises(VtpError, match="fixed batch size 2 but --batch 8"):
        fixed.for_backend("trt", 8)


def test_cache_hit_and_staleness(monkeypatch, tmp_path, export_dir):
    log = tmp_path / "calls.jsonl"
    use_python_trt(monkeypatch, "10", log)
    src = tmp_path / "m.onnx"
    shutil.copy(export_dir / "model.onnx", src)
    cache = tmp_path / "cache"
    art = resolve(str(src), cache)
    e1, _ = art.for_backend("trt", 2)
    assert art.trt_info[2]["cache"] == "built"
    art.for_backend("trt", 2)
    assert art.trt_info[2]["cache"] == "hit" and len(_builds(log)) == 1
    e1.with_name(e1.name + ".json").write_text("{broken")  # a bad sidecar is never trusted
    art.for_backend("trt", 2)
    assert art.trt_info[2]["cache"] == "built" and len(_builds(log)) == 2
    _tiny_fp32(src, batch=2)  # same content: same key
    import onnx

    m = onnx.load(str(src))
    m.graph.initializer[1].float_data[0] += 1.0  # a changed model: a new key, never the old engine
    onnx.save(m, str(src))
    art2 = resolve(str(src), cache)
    e2, _ = art2.for_backend("trt", 2)
    assert e2 != e1 and art2.trt_info[2]["cache"] == "built"


def test_precision_option(monkeypatch, tmp_path, export_dir):
    log = tmp_path / "calls.jsonl"
    use_python_trt(monkeypatch, "11", log)
    art = resolve(str(export_dir / "model.onnx"), tmp_path / "cache")
    art.precision = "fp16"  # 11 has no FP16 flag: bench builds an fp16 conversion, and says so
    art.for_backend("trt", 2)
    info = art.trt_info[2]
    assert info["precision"] == "fp16" and info["onnx_kind"] == "fp16" and info["strongly_typed"]
    assert any("fp16 conversion" in n for n in info["notes"])
    art.precision = "int8"
    with pytest.raises(VtpError, match="Q/DQ ONNX"):
        art.for_backend("trt", 2)
    q = resolve(str(export_dir / "model.int8.onnx"), tmp_path / "cache")
    q.precision = "fp32"
    with pytest.raises(VtpError, match="cannot be built as an fp32 engine"):
        q.for_backend("trt", 2)


def test_given_engine_is_labelled_from_engine_json(monkeypatch, tmp_path, export_dir):
    use_python_trt(monkeypatch, "10", tmp_path / "calls.jsonl")
    art = resolve(str(export_dir / "model.engine"))
    art.for_backend("trt", 1)
    assert art.trt_info[1]["precision"] == "fp16" and art.trt_info[1]["record"] == "engine.json"
    art.precision = "int8"
    with pytest.raises(VtpError, match="a fp16 engine"):
        art.for_backend("trt", 1)


def test_precision_needs_trt_backend(tmp_path, export_dir):
    from vtpdeploy.deploy.bench.run import run_bench

    with pytest.raises(VtpError, match="--precision sets the TensorRT engine"):
        run_bench([str(export_dir / "model.onnx")], backend="ort", baseline="none", precision="fp16", iters=1)
    with pytest.raises(VtpError, match="--precision 'fp8'"):
        run_bench([str(export_dir / "model.onnx")], backend="ort", baseline="none", precision="fp8", iters=1)
