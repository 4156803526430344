"""Peak memory of one model: process RSS high-water delta, CUDA allocator peaks, NVML.

Method (CPU): the RSS high-water mark (VmHWM in /proc/self/status) is per process, so it is
reset before each model by writing "5" to /proc/self/clear_refs (Linux >= 4.0); a background
thread also samples VmRSS every 2 ms as a fallback where the reset is not allowed. The window
covers loading the model into the runner and its first inferences, taken *one model at a time*
before the interleaved timing loop. peak_mem_mb = max(HWM, sampled max) - RSS at window start,
i.e. the memory that model added on top of everything already loaded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

MB = 1024.0 * 1024.0


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

    def __init__(self, cuda: bool = False, interval_s: float = 0.002):
        self.cuda = cuda
        self.interval_s = interval_s
        self.info: dict = {}
        self._stop = threading.Event()
        self._max_rss = 0.0

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
                self._nvml_start = nvml_used_mb()
            except Exception:
                self.cuda = False
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
            used = nvml_used_mb()
            if used is not None and self._nvml_start is not None:
                self.info["nvml_used_delta_mb"] = _r(max(0.0, used - self._nvml_start))


def nvml_used_mb(index: int = 0) -> float | None:
    """Device memory in use on GPU `index` according to NVML (pynvml), or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / MB
    except Exception:
        return None


def headline(info: dict, device: str) -> float | None:
    """The single peak_mem_mb number: device memory on CUDA, else the RSS delta."""
    if str(device).startswith("cuda"):
        for key in ("trt_device_memory_mb", "nvml_used_delta_mb", "cuda_max_reserved_mb"):
            if info.get(key) is not None:
                return info[key]
    return info.get("rss_delta_mb")


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)
