"""One TensorRT engine per requested precision: model.fp16.engine, model.int8.engine (model.fp32.engine when
neither is asked), each with its record model.<precision>.engine.json, on the export's batch profile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ExportConfig
from .trt_versions import ONNX_FILE, onnx_for


def engine_precisions(cfg: ExportConfig) -> list[str]:
    """fp16 and/or int8 as asked, else fp32."""
    return [p for p, on in (("fp16", cfg.fp16), ("int8", cfg.int8)) if on] or ["fp32"]


def engine_file(precision: str) -> str:
    return f"model.{precision}.engine"


def build_engines(out_dir: Path, cfg: ExportConfig, input_shape, trt_version,
                  say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Build every requested engine in `out_dir`; returns {precision: its record}."""
    from .trt_build import build_engine

    engines = {}
    for precision in engine_precisions(cfg):
        onnx_in = out_dir / ONNX_FILE[onnx_for(trt_version, precision)]
        engine = out_dir / engine_file(precision)
        say(f"building TensorRT {trt_version} engine ({precision}, from {onnx_in.name}) -> {engine.name}")
        engines[precision] = build_engine(onnx_in, engine, precision=precision, input_shape=input_shape,
                                          batch_range=cfg.engine_batch_range(),
                                          info_path=engine.with_name(engine.name + ".json"))
    return engines
