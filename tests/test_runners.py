"""Every runner that can run here agrees with torch eager on the same input."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.vtpbench_fixtures import tiny_vit

from vtpdeploy.deploy.runners import available_backends, make_runner


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from vtpdeploy.deploy.export import export_onnx

    model = tiny_vit()
    path = tmp_path_factory.mktemp("runners") / "tiny.b2.onnx"
    export_onnx(model, path, batch=2, openvino=False)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with make_runner("torch", model, threads=1) as r:
        ref = r.infer(x)
    return path, x, ref


def test_torch_runner_shapes(tiny_onnx):
    _, x, ref = tiny_onnx
    assert ref.shape == (2, 10) and ref.dtype == np.float32


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_onnx_runners_match_torch(backend, tiny_onnx):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    path, x, ref = tiny_onnx
    with make_runner(backend, path, threads=1) as r:
        assert tuple(r.input_shape()) == (2, 3, 32, 32)
        out = r.infer(x)
        r.synchronize()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_runner_matches_torch(tiny_onnx, tmp_path):
    if "trt" not in available_backends():
        pytest.skip("TensorRT is not installed (pip install 'vtpdeploy[trt]' on a CUDA machine)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from vtpdeploy.deploy.export.trt_build import build_engine

    path, x, ref = tiny_onnx
    engine = tmp_path / "tiny.engine"
    build_engine(path, engine, precision="fp32", input_shape=list(x.shape))
    with make_runner("trt", engine, device="cuda") as r:
        out = r.infer(x)
        assert r.memory_info()["trt_device_memory_mb"] is not None
    assert np.abs(out - ref).max() <= 1e-3


def test_trt_missing_is_one_line_error():
    if "trt" in available_backends():
        pytest.skip("TensorRT is installed here")
    from vtpdeploy.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="installed backends: .*torch"):
        make_runner("trt", "x.engine")
