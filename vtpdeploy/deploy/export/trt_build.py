"""Build a TensorRT engine from an exported ONNX: the `tensorrt` Python API, else `trtexec`.

What to set for which TensorRT version is decided in `trt_versions` (one `BuildPlan` per build); this
module only carries it out and records it. engine.json (beside the engine) names what the engine is:
TensorRT version, precision, the ONNX it came from and its kind, strong typing, network and builder
flags, TF32, GPU name and clocks.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ...console import one_line
from ...errors import BackendUnavailableError, VtpError
from ...fileio import atomic_path, atomic_write_json, sha256_file
from .trt_versions import (
    BuildPlan,
    TrtVersion,
    member,
    onnx_precision,
    plan_build,
    python_version,
    trtexec_args,
    trtexec_version,
)

INSTALL_HINT = ("TensorRT is not installed: pip install 'vtpdeploy[trt]' (x86-64 with CUDA), "
                "or use JetPack's TensorRT on Jetson (see docs/docker.md)")
BUILDERS = ("python", "trtexec")


def _python_api_installed() -> bool:
    # A directory named `tensorrt` holding only type stubs (tensorrt-stubs) is a namespace package: no origin.
    spec = importlib.util.find_spec("tensorrt")
    return spec is not None and spec.origin is not None


def trt_available() -> str | None:
    """'python' when `import tensorrt` works, 'trtexec' when only the CLI is on PATH, else None."""
    if _python_api_installed():
        return "python"
    if shutil.which("trtexec"):
        return "trtexec"
    return None


def require_trt(builder: str | None = None) -> str:
    """The builder to use ('python' | 'trtexec'; None: $VTPDEPLOY_TRT_BUILDER, else python when importable)."""
    builder = builder or os.environ.get("VTPDEPLOY_TRT_BUILDER") or None
    if builder is not None:
        if builder not in BUILDERS:
            raise VtpError(f"unknown TensorRT builder {builder!r}; choose python or trtexec")
        ok = _python_api_installed() if builder == "python" else shutil.which("trtexec") is not None
        if not ok:
            raise BackendUnavailableError(f"TensorRT builder {builder!r} is not available here; {INSTALL_HINT}")
        return builder
    how = trt_available()
    if how is None:
        raise BackendUnavailableError(INSTALL_HINT)
    return how


def installed_version(builder: str | None = None) -> tuple[str, TrtVersion]:
    """(builder, TensorRT version) of the TensorRT that `build_engine` would use; checks it is supported."""
    how = require_trt(builder)
    version = python_version() if how == "python" else trtexec_version(str(shutil.which("trtexec")))
    version.check_supported()
    return how, version


def gpu_info() -> dict[str, Any]:
    """GPU name and clocks, best effort (NVML, else nvidia-smi); None for what cannot be read."""
    info: dict[str, Any] = {"name": None, "sm_clock_mhz": None, "mem_clock_mhz": None, "max_sm_clock_mhz": None,
                            "clocks_from": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        info.update(name=name.decode() if isinstance(name, bytes) else name,
                    sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                    mem_clock_mhz=pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                    max_sm_clock_mhz=pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM), clocks_from="nvml")
        return info
    except Exception:
        pass
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
            parts = [p.strip() for p in out.splitlines()[0].split(",")] if out.strip() else []
            if len(parts) == 4:
                num = lambda s: int(float(s)) if s.replace(".", "", 1).isdigit() else None  # noqa: E731
                info.update(name=parts[0], sm_clock_mhz=num(parts[1]), mem_clock_mhz=num(parts[2]),
                            max_sm_clock_mhz=num(parts[3]), clocks_from="nvidia-smi")
                return info
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            info["name"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def _shapes(input_shape: list[int | str], batch_range: tuple[int, int, int]) -> dict[str, list[int]]:
    chw = [int(d) for d in input_shape[1:]]
    if isinstance(input_shape[0], str):
        lo, opt, hi = (int(b) for b in batch_range)
        if not 1 <= lo <= opt <= hi:
            raise VtpError(f"batch range {batch_range} must satisfy 1 <= min <= opt <= max")
        return {"min": [lo, *chw], "opt": [opt, *chw], "max": [hi, *chw]}
    return {"fixed": [int(input_shape[0]), *chw]}


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str = "fp32",
                 input_shape: list[int | str], batch_range: tuple[int, int, int] = (1, 1, 1),
                 timing_cache: str | Path | None = None, workspace_gib: float = 4.0,
                 builder: str | None = None, info_path: str | Path | None = None) -> dict[str, Any]:
    """Build `engine_path` from `onnx_path` as a `precision` engine; writes its record and returns it.

    The ONNX must be what the precision needs on the installed TensorRT (`trt_versions.onnx_for`): e.g.
    model.fp16.onnx for fp16 and model.int8.fp16.onnx for int8 on TensorRT 11. `input_shape` is
    [N|"batch", C, H, W]; `batch_range` (min, opt, max) applies when N is symbolic. `builder`: python |
    trtexec | None (python when importable). The record goes to `info_path` (default: engine.json beside it).
    """
    how, version = installed_version(builder)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    kind = onnx_precision(onnx_path)
    plan = plan_build(version, precision, kind)
    timing_cache = Path(timing_cache) if timing_cache else engine_path.with_name("timing.cache")
    shapes = _shapes(input_shape, batch_range)
    t0 = time.perf_counter()
    if how == "python":
        _build_python(onnx_path, engine_path, plan, shapes, timing_cache, workspace_gib)
    else:
        _build_trtexec(onnx_path, engine_path, plan, version, shapes, timing_cache)
    gpu = gpu_info()
    info = {
        "tensorrt_version": str(version), "builder": how, "precision": precision,
        "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path), "onnx_kind": kind,
        "strongly_typed": plan.strongly_typed, "network_flags": plan.network_flags,
        "builder_flags": plan.builder_flags, "cleared_flags": plan.cleared_flags, "tf32": plan.tf32,
        "notes": plan.notes, "engine": str(engine_path), "engine_bytes": engine_path.stat().st_size,
        "shapes": shapes, "timing_cache": str(timing_cache), "build_seconds": round(time.perf_counter() - t0, 2),
        "gpu": gpu["name"], "gpu_clocks": {k: v for k, v in gpu.items() if k != "name"}, "host": platform.machine(),
    }
    atomic_write_json(Path(info_path) if info_path else engine_path.with_name("engine.json"), info)
    return info


def _build_python(onnx_path: Path, engine_path: Path, plan: BuildPlan, shapes: dict[str, list[int]],
                  timing_cache: Path, workspace_gib: float) -> None:
    import tensorrt as trt

    v = plan.version
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(member(trt.NetworkDefinitionCreationFlag, name, v))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VtpError(f"TensorRT {v} cannot parse {onnx_path}: {one_line(errs)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for name in plan.builder_flags:
        config.set_flag(member(trt.BuilderFlag, name, v))
    for name in plan.cleared_flags:
        config.clear_flag(member(trt.BuilderFlag, name, v))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    if "min" in shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]),
                          trt.Dims(shapes["max"]))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VtpError(f"TensorRT {v} engine build failed for {onnx_path} (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(timing_cache) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))


def _onnx_input_name(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


def _build_trtexec(onnx_path: Path, engine_path: Path, plan: BuildPlan, version: TrtVersion,
                   shapes: dict[str, list[int]], timing_cache: Path) -> None:
    exe = str(shutil.which("trtexec"))
    with atomic_path(engine_path) as tmp:
        args = [exe, f"--onnx={onnx_path}", f"--saveEngine={tmp}", f"--timingCacheFile={timing_cache}",
                *trtexec_args(plan, version)]
        if "min" in shapes:
            name = _onnx_input_name(onnx_path)
            fmt = lambda s: f"{name}:" + "x".join(str(d) for d in s)  # noqa: E731
            args += [f"--minShapes={fmt(shapes['min'])}", f"--optShapes={fmt(shapes['opt'])}",
                     f"--maxShapes={fmt(shapes['max'])}"]
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " ".join((proc.stdout + proc.stderr).split())[-200:]
            raise VtpError(f"trtexec (TensorRT {version}) failed (exit {proc.returncode}): {tail}")
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise VtpError(f"trtexec (TensorRT {version}) wrote no engine to {engine_path}")
