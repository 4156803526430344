"""The machine a benchmark ran on. Fields that do not apply are None."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from ...console import package_versions

PACKAGES = ("vtpdeploy", "torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "numpy")


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo, else platform.processor()), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _gpu() -> dict | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        info = {"name": props.name, "memory_mb": round(props.total_memory / 2**20), "capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda, "sm_clock_mhz": None, "mem_clock_mhz": None, "max_sm_clock_mhz": None, "driver": None}
    except Exception:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        info["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
        info["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
        info["max_sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
        drv = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = drv.decode() if isinstance(drv, bytes) else drv
    except Exception:
        out = _run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,clocks.max.sm,driver_version", "--format=csv,noheader,nounits"])
        if out:
            parts = [p.strip() for p in out.splitlines()[0].split(",")]
            if len(parts) == 4:
                info.update(sm_clock_mhz=_num(parts[0]), mem_clock_mhz=_num(parts[1]), max_sm_clock_mhz=_num(parts[2]), driver=parts[3])
    return info


def jetson() -> dict | None:
    """Jetson model, L4T release and power state, or None when this machine is not a Jetson."""
    model = None
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            model = Path(p).read_text().strip("\x00\n ")
            break
        except OSError:
            continue
    release = None
    try:
        release = Path("/etc/nv_tegra_release").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        pass
    if not (model and "jetson" in model.lower()) and release is None:
        return None
    return {"model": model, "l4t": release, **power_state()}


def power_state() -> dict:
    """nvpmodel mode and jetson_clocks state, best effort: None where the tool is absent or not allowed.

    `nvpmodel -q` prints `NV Power Mode: MAXN` and the mode id; `jetson_clocks --show` (root) prints
    `MinFreq=.. MaxFreq=..` per CPU/GPU/EMC clock, all pinned (Min == Max) while jetson_clocks is on.
    """
    mode = mode_id = None
    nvp = _run(["nvpmodel", "-q"])
    if nvp:
        m = re.search(r"NV Power Mode:\s*(.+)", nvp)
        mode = m.group(1).strip() if m else nvp.strip().splitlines()[0]
        ids = [ln.strip() for ln in nvp.splitlines() if ln.strip().isdigit()]
        mode_id = int(ids[-1]) if ids else None
    clocks = _run(["jetson_clocks", "--show"])
    locked = None
    if clocks:
        pairs = re.findall(r"MinFreq=(\d+)\s+MaxFreq=(\d+)", clocks)
        locked = all(a == b for a, b in pairs) if pairs else None
    return {"nvpmodel": mode, "nvpmodel_id": mode_id, "jetson_clocks": locked}


def _num(s: str):
    try:
        return int(float(s))
    except ValueError:
        return None


def collect(threads: int | None = None) -> dict:
    """CPU, packages, GPU, TensorRT and Jetson details for the report's `environment`."""
    packages = package_versions(PACKAGES)
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "packages": packages,
        "gpu": _gpu(),
        "tensorrt": packages["tensorrt"],
        "jetson": jetson(),
    }
