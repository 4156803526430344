"""GPU memory that shows the pruning: weights and activations apart, each with its method.

The CUDA / NVML / TensorRT paths run here with stand-in torch.cuda, pynvml and engine objects; the
`gpu`-marked test runs the real torch CUDA path.
"""

from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import tiny_vit
from torch import nn

from vtpdeploy.deploy.bench import memory
from vtpdeploy.deploy.bench.memory import (
    MB,
    PeakMemory,
    headline,
    onnx_initializer_bytes,
    split_device_memory,
    torch_weight_bytes,
)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from vtpdeploy.deploy.export import export_onnx

    model = tiny_vit()
    path = tmp_path_factory.mktemp("mem") / "tiny.onnx"
    export_onnx(model, path, batch=1, openvino=False, simplify=False)
    return model, path


def _param_bytes(model) -> int:
    return sum(p.numel() for p in model.parameters()) * 4


def test_torch_weight_bytes_follow_dtype_and_include_buffers():
    layer = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    # Linear 10*5+5, BatchNorm weight+bias 5+5 params; buffers running mean/var 5+5 (fp32) + num_batches (int64)
    assert torch_weight_bytes(layer) == (55 + 10) * 4 + 10 * 4 + 8
    assert torch_weight_bytes(layer.half()) == (55 + 10) * 2 + 10 * 2 + 8


def test_onnx_initializer_bytes_match_the_exported_weights(tiny_onnx, tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model, path = tiny_onnx
    weights = onnx_initializer_bytes(path)
    params = _param_bytes(model)
    from onnx import numpy_helper

    loaded = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
    assert weights == loaded
    # the fp32 parameters, give or take what constant folding merged or added
    assert abs(weights - params) <= 0.02 * params
    fp16 = tmp_path / "half.onnx"
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(fp16))
    assert onnx_initializer_bytes(fp16) == pytest.approx(weights / 2, rel=0.02)
    # external data counts too, without loading it
    m = onnx.load(str(path))
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    onnx.save(m, str(tmp_path / "ext.onnx"))
    assert onnx_initializer_bytes(tmp_path / "ext.onnx") == weights
    assert os.path.getsize(tmp_path / "ext.onnx") < weights / 10


class _FakeCuda:
    """torch.cuda allocator stats of a window in which `weights` were loaded and `acts` more were peaked."""

    def __init__(self, start: int, weights: int, acts: int):
        self.start, self.peak = start, start + weights + acts

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: self.start)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: self.peak)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a, **k: self.peak + 64 * MB)


def _no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError


class _FakeNvml(types.ModuleType):
    """pynvml whose n-th reading (one per nvml_memory() call) is `process_mb[n]` for this process
    (None: not listed) and `device_mb[n]` for the whole device."""

    def __init__(self, process_mb: list[float | None], device_mb: list[float]):
        super().__init__("pynvml")
        self.process_mb, self.device_mb, self.reading = process_mb, device_mb, 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=int(self.device_mb[self.reading] * MB))

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        mb = self.process_mb[self.reading]
        self.reading += 1
        other = SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=int(900 * MB))
        return [other] if mb is None else [other, SimpleNamespace(pid=os.getpid(), usedGpuMemory=int(mb * MB))]


def _fake_nvml(monkeypatch, process_mb: list[float | None], device_mb: list[float]):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(process_mb, device_mb))


def test_torch_cuda_activations_are_allocator_peak_minus_weights(monkeypatch):
    model = nn.Linear(256, 256)
    weights = torch_weight_bytes(model)
    _FakeCuda(start=500 * MB, weights=weights, acts=3 * MB).install(monkeypatch)
    _no_nvml(monkeypatch)
    with PeakMemory(cuda=True, device="cuda") as pm:
        pass
    runner = SimpleNamespace(backend="torch", model=model, artifact=model)
    mem = split_device_memory(pm.info, runner, "cuda")
    assert mem["weights_mb"] == pytest.approx(weights / MB, abs=1e-3)
    assert mem["activations_mb"] == pytest.approx(3.0, abs=1e-3)  # the 500 MB already allocated is not this model's
    assert mem["device_total_mb"] == pytest.approx(3.0 + weights / MB, abs=2e-3)
    assert "max_memory_allocated" in mem["activations_from"] and "parameter" in mem["weights_from"]
    assert headline(mem, "cuda") == mem["device_total_mb"]


def test_ort_cuda_uses_nvml_process_memory(monkeypatch, tiny_onnx):
    _, path = tiny_onnx
    weights_mb = onnx_initializer_bytes(path) / MB
    _FakeCuda(start=0, weights=0, acts=0).install(monkeypatch)  # torch's allocator sees nothing of ORT
    # this process: not on the GPU before the window, 300 MB after; the device had another 2 GB in use
    _fake_nvml(monkeypatch, process_mb=[None, 300.0], device_mb=[2000.0, 2400.0])
    with PeakMemory(cuda=True, device="cuda") as pm:
        pass
    mem = split_device_memory(pm.info, SimpleNamespace(backend="ort", artifact=path), "cuda")
    assert mem["nvml_used_delta_mb"] == 300.0 and mem["nvml_method"] == "nvml process memory delta"
    assert mem["activations_mb"] == pytest.approx(300.0 - weights_mb, abs=1e-3)
    assert mem["weights_from"] == "ONNX initializer bytes"
    assert headline(mem, "cuda") == pytest.approx(300.0, abs=2e-3)


def test_ort_cuda_nvml_without_this_process_uses_the_device_delta(monkeypatch, tiny_onnx):
    _, path = tiny_onnx
    _FakeCuda(start=0, weights=0, acts=0).install(monkeypatch)
    _fake_nvml(monkeypatch, process_mb=[None, None], device_mb=[2000.0, 2250.0])  # e.g. a container's PIDs
    with PeakMemory(cuda=True, device="cuda") as pm:
        pass
    mem = split_device_memory(pm.info, SimpleNamespace(backend="ort", artifact=path), "cuda")
    assert mem["nvml_used_delta_mb"] == 250.0 and mem["nvml_method"].startswith("nvml device used delta")
    assert mem["activations_from"].startswith("nvml device used delta")


def test_ort_cuda_without_nvml_is_unavailable_not_torch_reserved(monkeypatch, tiny_onnx):
    """Jetson: no NVML. The figure is unknown, never torch's reserved memory (about 0 for ORT)."""
    _, path = tiny_onnx
    _FakeCuda(start=0, weights=0, acts=0).install(monkeypatch)
    _no_nvml(monkeypatch)
    with PeakMemory(cuda=True, device="cuda") as pm:
        pass
    mem = split_device_memory(pm.info, SimpleNamespace(backend="ort", artifact=path), "cuda")
    assert mem["weights_mb"] > 0
    assert mem["activations_mb"] is None and mem["activations_from"].startswith("unavailable: NVML")
    assert headline(mem, "cuda") is None


def test_trt_weights_are_the_engine_and_activations_the_context(tmp_path):
    engine_file = tmp_path / "m.engine"
    engine_file.write_bytes(b"\0" * (3 * 1024 * 1024))
    v2 = SimpleNamespace(device_memory_size_v2=int(1.5 * MB), device_memory_size=int(9 * MB))
    mem = split_device_memory({}, SimpleNamespace(backend="trt", artifact=engine_file, engine=v2), "cuda")
    assert mem["weights_mb"] == 3.0 and mem["weights_from"] == "TensorRT engine file size"
    assert mem["activations_mb"] == 1.5 and "context device memory" in mem["activations_from"]
    assert headline(mem, "cuda") == 4.5  # the engine's smaller weights show in the headline
    v1 = SimpleNamespace(device_memory_size=int(2 * MB))  # TensorRT 8.x
    mem = split_device_memory({}, SimpleNamespace(backend="trt", artifact=engine_file, engine=v1), "cuda")
    assert mem["activations_mb"] == 2.0


def test_cpu_results_keep_rss_and_add_weights(tiny_onnx):
    _, path = tiny_onnx
    with PeakMemory(cuda=False) as pm:
        _ = np.ones(1 << 20)
    mem = split_device_memory(pm.info, SimpleNamespace(backend="ort", artifact=path), "cpu")
    assert mem["weights_mb"] == pytest.approx(onnx_initializer_bytes(path) / MB, abs=1e-3)
    assert "activations_mb" not in mem
    assert headline(mem, "cpu") == mem["rss_delta_mb"]


def test_gpu_index_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert memory.gpu_index("cuda") == 3 and memory.gpu_index("cuda:1") == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert memory.gpu_index("cuda:2") == 2


@pytest.mark.gpu
def test_real_torch_cuda_memory_split():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from vtpdeploy.deploy.runners import make_runner

    model = tiny_vit()
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    with PeakMemory(cuda=True, device="cuda") as pm:
        runner = make_runner("torch", model, device="cuda", precision="fp16")
        runner.infer(x)
        runner.synchronize()
    mem = split_device_memory(pm.info, runner, "cuda")
    runner.close()
    assert mem["weights_mb"] == pytest.approx(_param_bytes(model) / 2 / MB, rel=0.01)
    assert mem["activations_mb"] is not None and mem["activations_mb"] > 0
    assert mem["device_total_mb"] >= mem["weights_mb"]
