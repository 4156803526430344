"""Every runner that can run here agrees with torch eager on the same input."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_vit

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


def test_torch_runner_matches_eager_forward(tiny_onnx):
    import torch

    _, x, ref = tiny_onnx
    with torch.no_grad():
        eager = tiny_vit()(torch.from_numpy(x)).numpy()  # tiny_vit() is seeded: the fixture's model
    assert ref.shape == (2, 10) and ref.dtype == np.float32
    assert np.abs(ref - eager).max() <= 1e-5


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


class _FakeSession:
    """An InferenceSession whose GPU provider failed to load: ONNX Runtime runs it on the CPU EP."""

    def __init__(self, path, sess_options=None, providers=None):
        _FakeSession.requested = providers
        self._real = _FakeSession.real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    def get_providers(self):
        return self._real.get_providers()

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def gpu_ort_that_falls_back(monkeypatch):
    import onnxruntime as ort

    _FakeSession.real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)


@pytest.mark.parametrize("device, provider", [("cuda", "CUDAExecutionProvider"),
                                              ("cuda:1", "CUDAExecutionProvider"),
                                              ("tensorrt", "TensorrtExecutionProvider")])
def test_ort_silent_cpu_fallback_is_an_error(gpu_ort_that_falls_back, tiny_onnx, device, provider):
    from vtpdeploy.errors import VtpError

    path, _, _ = tiny_onnx
    with pytest.raises(VtpError, match=f"fell back to CPUExecutionProvider: {provider} failed to load"):
        make_runner("ort", path, device=device, threads=1)
    wanted = _FakeSession.requested[0]
    assert wanted[0] == provider
    assert wanted[1] == ({"device_id": 1} if device == "cuda:1" else {})


def test_ort_cpu_is_unaffected_by_gpu_providers(gpu_ort_that_falls_back, tiny_onnx):
    path, x, ref = tiny_onnx
    with make_runner("ort", path, device="cpu", threads=1) as r:
        assert r.providers == ["CPUExecutionProvider"]
        assert np.abs(r.infer(x) - ref).max() <= 1e-4


def test_ort_missing_provider_and_bad_device_are_one_line_errors(tiny_onnx):
    from vtpdeploy.errors import VtpError

    path, _, _ = tiny_onnx
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(VtpError, match="no CUDAExecutionProvider here"):
            make_runner("ort", path, device="cuda")
    with pytest.raises(VtpError, match="choose cpu, cuda"):
        make_runner("ort", path, device="npu")


def test_bench_cli_exits_2_on_a_silent_fallback(gpu_ort_that_falls_back, tiny_onnx):
    """Through the CLI: one line on stderr, exit code 2, no traceback."""
    from helpers import run_cli_inprocess

    path, _, _ = tiny_onnx
    proc = run_cli_inprocess("bench", path, "--backend", "ort", "--device", "cuda", "--baseline", "none",
                             "--iters", "2", "--warmup-s", "0", "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "fell back to CPUExecutionProvider" in proc.stderr and "Traceback" not in proc.stderr


def test_torch_runner_fp16_needs_cuda_and_copies_the_module():
    from helpers import tiny_vit as make

    from vtpdeploy.errors import VtpError

    model = make()
    with pytest.raises(VtpError, match="fp16 inference needs --device cuda"):
        make_runner("torch", model, precision="fp16")
    with make_runner("torch", model, precision="bf16", threads=1) as r:
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        out = r.infer(x)
        assert next(r.model.parameters()).dtype.itemsize == 2
    assert next(model.parameters()).dtype.itemsize == 4  # the caller's module is untouched
    with make_runner("torch", model, threads=1) as r32:
        ref = r32.infer(x)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05
