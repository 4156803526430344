"""Memory of one model: weights and activations apart, each with the method that measured it.

Window: `PeakMemory` covers loading the model into its runner and its first inferences, taken one
model at a time before the interleaved timing loop; every figure is what that model added.

CPU: the RSS high-water mark (VmHWM in /proc/self/status) is per process, so it is reset before each
model by writing "5" to /proc/self/clear_refs (Linux >= 4.0); a background thread also samples VmRSS
every 2 ms as a fallback where the reset is not allowed. rss_delta_mb = peak - RSS at window start.

GPU (`split_device_memory`): weights are what the artifact holds (engine file size, ONNX initializer
bytes, torch parameter + buffer bytes at the runner's dtype); activations/scratch are measured apart:
- torch CUDA: torch.cuda.max_memory_allocated over the window, minus the allocation at its start,
  minus the weights;
- ONNX Runtime CUDA: NVML memory of this process after the window minus before (ORT's arena keeps its
  high-water mark), minus the weights. ORT does not allocate through torch, so torch's allocator stats
  say nothing about it; without NVML (e.g. Jetson) the activations are recorded as unavailable;
- TensorRT: the execution context's device memory (device_memory_size_v2, else device_memory_size).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

MB = 1024.0 * 1024.0
NO_NVML = "unavailable: NVML (pynvml) not readable here (Jetson has none); torch's allocator does not see ONNX Runtime"


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the memory a model adds while it is loaded and first run."""

    def __init__(self, cuda: bool = False, interval_s: float = 0.002, device: str = "cuda"):
        self.cuda = cuda
        self.device = device
        self.interval_s = interval_s
        self.info: dict = {}
        self._stop = threading.Event()
        self._max_rss = 0.0
        self._cuda_start = 0
        self._nvml_start: dict | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            v = rss_mb()
            if v is not None and v > self._max_rss:
                self._max_rss = v
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._hwm_reset = _reset_hwm()
        self._start_rss = rss_mb()
        self._max_rss = self._start_rss or 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if self.cuda:
            try:
                import torch

                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._cuda_start = torch.cuda.memory_allocated()
            except Exception:
                self.cuda = False
            self._nvml_start = nvml_memory(gpu_index(self.device))
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        hwm_kb = _status_kb("VmHWM") if self._hwm_reset else None
        peak = max(self._max_rss, hwm_kb / 1024.0 if hwm_kb else 0.0)
        start = self._start_rss
        self.info = {
            "method": "rss_hwm_delta" if self._hwm_reset else "rss_sampled_delta",
            "rss_start_mb": _r(start),
            "rss_peak_mb": _r(peak) if start is not None else None,
            "rss_delta_mb": _r(max(0.0, peak - start)) if start is not None else None,
        }
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.info["cuda_max_allocated_mb"] = _r(torch.cuda.max_memory_allocated() / MB)
            self.info["cuda_max_reserved_mb"] = _r(torch.cuda.max_memory_reserved() / MB)
            self.info["cuda_allocated_delta_mb"] = _r(max(0, torch.cuda.max_memory_allocated() - self._cuda_start) / MB)
            delta = nvml_delta(self._nvml_start, nvml_memory(gpu_index(self.device)))
            if delta is not None:
                self.info["nvml_used_delta_mb"], self.info["nvml_method"] = delta


def gpu_index(device: str) -> int:
    """NVML index of torch device `device` (cuda / cuda:N), following CUDA_VISIBLE_DEVICES when it lists indices."""
    _, _, n = str(device).partition(":")
    index = int(n) if n.isdigit() else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index


def nvml_memory(index: int = 0) -> dict | None:
    """{'process_mb': this process's memory on GPU `index` (None: not listed), 'device_mb': used on the GPU}; None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        device_mb = pynvml.nvmlDeviceGetMemoryInfo(handle).used / MB
    except Exception:
        return None
    process_mb = None
    try:
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                process_mb = proc.usedGpuMemory / MB
    except Exception:
        process_mb = None
    return {"process_mb": process_mb, "device_mb": device_mb}


def nvml_delta(before: dict | None, after: dict | None) -> tuple[float, str] | None:
    """(MB this process added, method). Per-process when NVML lists this process (a process not yet on the
    GPU at the start counts 0); the device-wide used delta where it does not (e.g. a container's PID namespace)."""
    if before is None or after is None:
        return None
    if after["process_mb"] is not None:
        return _r(max(0.0, after["process_mb"] - (before["process_mb"] or 0.0))), "nvml process memory delta"
    return _r(max(0.0, after["device_mb"] - before["device_mb"])), "nvml device used delta (other processes add noise)"


def nvml_used_mb(index: int = 0) -> float | None:
    """Device memory in use on GPU `index` according to NVML (pynvml), or None."""
    mem = nvml_memory(index)
    return None if mem is None else mem["device_mb"]


# -- weights ------------------------------------------------------------------------------------
def torch_weight_bytes(model) -> int:
    """Bytes of a module's parameters and buffers at their current dtypes."""
    tensors = list(model.parameters()) + list(model.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def onnx_initializer_bytes(path: str | Path) -> int:
    """Bytes of an ONNX model's initializers (from dims and dtype, so external data counts without loading)."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        total += int(np.prod(t.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


def engine_bytes(path: str | Path) -> int:
    """A TensorRT engine's file size: its weights (plus a small header)."""
    return Path(path).stat().st_size


def trt_context_bytes(engine) -> int | None:
    """Device memory an execution context of `engine` needs (activations and scratch)."""
    for name in ("device_memory_size_v2", "device_memory_size"):  # v2 from TRT 10.1; v1 removed in 11
        size = getattr(engine, name, None)
        if size is not None:
            return int(size)
    return None


# -- weights vs activations ----------------------------------------------------------------------
def split_device_memory(info: dict, runner, device: str) -> dict:
    """Weights and activations of the model `runner` holds, with their methods, added to `info`.

    `device_total_mb` (weights + activations) is the GPU headline; on CPU only the weights are split off.
    """
    out = dict(info)
    weights, weights_from = _weights(runner)
    out["weights_mb"] = _r(weights / MB) if weights is not None else None
    out["weights_from"] = weights_from
    if not str(device).startswith("cuda"):
        return out
    acts, acts_from = _activations(out, runner, weights)
    out["activations_mb"] = _r(acts) if acts is not None else None
    out["activations_from"] = acts_from
    out["device_total_mb"] = _r(out["weights_mb"] + acts) if acts is not None and weights is not None else None
    return out


def _weights(runner) -> tuple[int | None, str]:
    backend = getattr(runner, "backend", "")
    try:
        if backend == "torch":
            return torch_weight_bytes(runner.model), "torch parameter + buffer bytes"
        if backend in ("ort", "openvino"):
            return onnx_initializer_bytes(runner.artifact), "ONNX initializer bytes"
        if backend == "trt":
            return engine_bytes(runner.artifact), "TensorRT engine file size"
    except Exception as exc:  # an unreadable artifact costs the figure, never the benchmark
        return None, f"unavailable: {type(exc).__name__}"
    return None, f"unavailable: unknown backend {backend!r}"


def _activations(info: dict, runner, weights: int | None) -> tuple[float | None, str]:
    backend = getattr(runner, "backend", "")
    if backend == "trt":
        size = trt_context_bytes(runner.engine) if getattr(runner, "engine", None) is not None else None
        if size is None:
            return None, "unavailable: engine reports no device memory size"
        return size / MB, "TensorRT execution context device memory"
    if weights is None:
        return None, "unavailable: weights unknown"
    if backend == "torch":
        peak = info.get("cuda_allocated_delta_mb")
        if peak is None:
            return None, "unavailable: torch CUDA allocator stats not readable"
        return max(0.0, peak - weights / MB), "torch.cuda.max_memory_allocated delta - weights"
    if backend == "ort":
        used = info.get("nvml_used_delta_mb")
        if used is None:
            return None, NO_NVML
        return max(0.0, used - weights / MB), f"{info.get('nvml_method', 'nvml')} - weights (includes ORT's CUDA handles)"
    return None, f"unavailable: no GPU method for backend {backend!r}"


def headline(info: dict, device: str) -> float | None:
    """The single peak_mem_mb number: weights + activations on a GPU (None when either is unknown), else the RSS delta."""
    if str(device).startswith("cuda"):
        return info.get("device_total_mb")
    return info.get("rss_delta_mb")


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)
