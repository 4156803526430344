"""TensorRT engines for `vtpdeploy bench`, labelled by what they are.

A bench engine is cached under a key of ONNX sha256 + precision + batch range + TensorRT version, in the
bench cache (never the export's model.engine / engine.json), with a sidecar JSON that is checked before
reuse: a changed ONNX or another TensorRT gives a new key, a missing or mismatched sidecar a rebuild.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import VtpError
from ...fileio import sha256_file
from .onnx_info import onnx_input_shape

PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISION_CHOICES:
        raise VtpError(f"--precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    return precision


def _batch_range(onnx_path: Path, batch: int) -> tuple[list[int | str], tuple[int, int, int]]:
    shape = list(onnx_input_shape(onnx_path))
    if isinstance(shape[0], int) and shape[0] > 0 and shape[0] != batch:
        raise VtpError(f"{onnx_path}: fixed batch size {shape[0]} but --batch {batch} was asked; "
                       "re-export with that batch or a dynamic batch")
    return shape, (batch, batch, batch)  # one engine per --batch, tuned for exactly that batch


def engine_for(onnx_path: Path, precision: str, batch: int, folder: Path) -> tuple[Path, dict[str, Any]]:
    """(engine, its record) for `onnx_path` at `batch`, built into `folder` unless a valid cached one exists.

    `precision`: auto = what the ONNX is (Q/DQ -> int8, fp16 tensors -> fp16, else fp32); fp16 on an fp32
    ONNX uses the FP16 flag (TensorRT <= 10) or an fp16 conversion cached beside it (11, strongly typed).
    """
    from ..export.trt_build import build_engine, gpu_info, installed_version
    from ..export.trt_versions import engine_precision, onnx_precision

    check_precision(precision)
    how, version = installed_version()
    kind = onnx_precision(onnx_path)
    wanted = engine_precision(kind) if precision == "auto" else precision
    shape, batch_range = _batch_range(onnx_path, batch)
    sha = sha256_file(onnx_path)
    folder.mkdir(parents=True, exist_ok=True)
    key = f"{onnx_path.stem}.{sha[:16]}.{wanted}.b{'-'.join(map(str, batch_range))}.trt{version}"
    engine, sidecar = folder / f"{key}.engine", folder / f"{key}.engine.json"
    cached = _valid_cache(engine, sidecar, sha, str(version), wanted)
    if cached is not None:
        return engine, {**cached, "cache": "hit", "bench_gpu": gpu_info()}
    source = onnx_path
    if wanted == "fp16" and kind == "fp32" and not version.has_precision_flags:
        source = _fp16_twin(onnx_path, folder, sha)
    info = build_engine(source, engine, precision=wanted, input_shape=shape, batch_range=batch_range,
                        timing_cache=folder / f"timing.trt{version}.cache", builder=how, info_path=sidecar)
    info["onnx_sha256"], info["bench_source_onnx"] = sha, str(onnx_path)
    if source != onnx_path:
        note = (f"built from {source.name}, an fp16 conversion of {onnx_path.name} "
                "(strongly typed TensorRT has no FP16 flag); not validated numerically by bench")
        info["notes"] = [*info["notes"], note]
    from ...fileio import atomic_write_json

    atomic_write_json(sidecar, info)
    return engine, {**info, "cache": "built", "bench_gpu": gpu_info()}


def _valid_cache(engine: Path, sidecar: Path, sha: str, version: str, precision: str) -> dict | None:
    if not engine.is_file() or not sidecar.is_file():
        return None
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(info, dict) and info.get("onnx_sha256") == sha and info.get("tensorrt_version") == version
          and info.get("precision") == precision and info.get("engine_bytes") == engine.stat().st_size)
    return info if ok else None


def _fp16_twin(onnx_path: Path, folder: Path, sha: str) -> Path:
    from ..export.fp16 import convert_fp16

    dst = folder / f"{onnx_path.stem}.{sha[:16]}.fp16.onnx"
    if not dst.is_file():
        convert_fp16(onnx_path, dst)
    return dst


def engine_record(engine_path: Path, precision: str = "auto") -> dict[str, Any]:
    """What a given engine file is: its sidecar (X.engine.json) or the export's engine.json when it names it."""
    from ..export.trt_build import gpu_info, installed_version

    for meta in (Path(str(engine_path) + ".json"), engine_path.with_name("engine.json")):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and Path(str(info.get("engine", ""))).name == engine_path.name:
            if precision not in ("auto", info.get("precision")):
                raise VtpError(f"{engine_path}: a {info.get('precision')} engine (per {meta.name}), "
                               f"not --precision {precision}")
            return {**info, "record": meta.name, "bench_gpu": gpu_info()}
    return {"engine": str(engine_path), "precision": None if precision == "auto" else precision,
            "tensorrt_version": str(installed_version()[1]), "tf32": None, "builder_flags": None, "record": None,
            "notes": ["no engine.json names this engine: its precision, TF32 state and flags are unknown"],
            "bench_gpu": gpu_info()}
