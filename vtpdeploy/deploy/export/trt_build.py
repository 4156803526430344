"""Build a TensorRT engine from an exported ONNX: the `tensorrt` Python API, else `trtexec`.

FP16: builder flag on TRT <= 10 (fp32 ONNX), strongly typed network from model.fp16.onnx on TRT >= 11.
INT8: explicit quantization from the QDQ ONNX (TRT <= 10 also sets the INT8 flag; never a calibrator).
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailableError, VtpError
from ...fileio import atomic_path, atomic_write_json

INSTALL_HINT = ("TensorRT is not installed: pip install 'vtpdeploy[trt]' (x86-64 with CUDA), "
                "or use JetPack's TensorRT on Jetson (see docs/docker.md)")


def trt_available() -> str | None:
    """'python' when `import tensorrt` works, 'trtexec' when only the CLI is on PATH, else None."""
    if importlib.util.find_spec("tensorrt") is not None:
        return "python"
    if shutil.which("trtexec"):
        return "trtexec"
    return None


def require_trt() -> str:
    how = trt_available()
    if how is None:
        raise BackendUnavailableError(INSTALL_HINT)
    return how


def _major(version: str) -> int:
    return int(version.split(".")[0])


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str = "fp32",
                 input_shape: list[int | str], batch_range: tuple[int, int, int] = (1, 1, 1),
                 timing_cache: str | Path | None = None, workspace_gib: float = 4.0) -> dict[str, Any]:
    """Build `engine_path` from `onnx_path`; writes engine.json beside it and returns its content.

    `input_shape` is [N|"batch", C, H, W]; `batch_range` (min, opt, max) is used when N is symbolic.
    Pass model.fp16.onnx as `onnx_path` for precision "fp16" on TRT >= 11 (strongly typed).
    """
    how = require_trt()
    engine_path = Path(engine_path)
    timing_cache = Path(timing_cache) if timing_cache else engine_path.with_name("timing.cache")
    chw = [int(d) for d in input_shape[1:]]
    dynamic = isinstance(input_shape[0], str)
    shapes = ({k: [b, *chw] for k, b in zip(("min", "opt", "max"), batch_range)} if dynamic
              else {"fixed": [int(input_shape[0]), *chw]})
    t0 = time.perf_counter()
    if how == "python":
        version, gpu = _build_python(Path(onnx_path), engine_path, precision, shapes, timing_cache, workspace_gib)
    else:
        version, gpu = _build_trtexec(Path(onnx_path), engine_path, precision, shapes, timing_cache)
    info = {
        "tensorrt_version": version, "builder": how, "gpu": gpu, "precision": precision,
        "onnx": str(onnx_path), "engine": str(engine_path), "shapes": shapes,
        "timing_cache": str(timing_cache), "build_seconds": round(time.perf_counter() - t0, 2),
        "host": platform.machine(),
    }
    atomic_write_json(engine_path.with_name("engine.json"), info)
    return info


def _build_python(onnx_path, engine_path, precision, shapes, timing_cache, workspace_gib):
    import tensorrt as trt

    major = _major(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if major >= 11 or (major >= 10 and precision == "fp16" and onnx_path.name.endswith(".fp16.onnx")):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VtpError(f"TensorRT cannot parse {onnx_path}: {' '.join(errs.split())[:200]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    strongly = bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
    if not strongly:
        if precision in ("fp16", "int8") and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ: no calibrator
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    if "min" in shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VtpError(f"TensorRT engine build failed for {onnx_path} (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(timing_cache) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return trt.__version__, gpu


def _build_trtexec(onnx_path, engine_path, precision, shapes, timing_cache):
    exe = shutil.which("trtexec")
    with atomic_path(engine_path) as tmp:
        args = [exe, f"--onnx={onnx_path}", f"--saveEngine={tmp}", f"--timingCacheFile={timing_cache}"]
        if precision == "fp16" and onnx_path.name.endswith(".fp16.onnx"):
            args.append("--stronglyTyped")
        elif precision in ("fp16", "int8"):
            args.append("--fp16")
        if precision == "int8" and not onnx_path.name.endswith(".fp16.onnx"):
            args.append("--int8")
        if "min" in shapes:
            fmt = lambda s: "input:" + "x".join(str(d) for d in s)  # noqa: E731
            args += [f"--minShapes={fmt(shapes['min'])}", f"--optShapes={fmt(shapes['opt'])}",
                     f"--maxShapes={fmt(shapes['max'])}"]
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " ".join((proc.stdout + proc.stderr).split())[-200:]
            raise VtpError(f"trtexec failed (exit {proc.returncode}): {tail}")
    version = None
    for line in proc.stdout.splitlines():
        if "TensorRT version" in line:
            version = line.split("TensorRT version")[-1].strip(" :")
            break
    return version, None
