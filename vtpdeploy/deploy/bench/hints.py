"""Warnings bench gives before timing: combinations that run, but give numbers a user should not trust as-is."""

from __future__ import annotations

from pathlib import Path

CPU_RUNTIMES = ("ort", "openvino")


def s8_int8(path: Path) -> bool:
    """True for an INT8 Q/DQ ONNX with signed (s8, TensorRT-format) activations."""
    from ..export.quantize import qdq_summary

    try:
        q = qdq_summary(path)
    except Exception:  # noqa: BLE001 - not a readable ONNX: no hint to give
        return False
    return q["qdq_nodes"] > 0 and set(q["quant_dtypes"]) == {"int8"}


def runtime_warnings(arts, backends: list[str], device: str) -> list[str]:
    """One line per artifact that a CPU runtime will time in a format made for another."""
    out = []
    cpu = [b for b in backends if b in CPU_RUNTIMES and device == "cpu"]
    if not cpu:
        return out
    for art in arts:
        if art.kind == "onnx" and art.path is not None and s8_int8(art.path):
            out.append(f"{art.label}: an s8 (TensorRT-format) INT8 model timed on {'/'.join(cpu)} CPU, which runs s8 "
                       "Q/DQ slowly (often slower than fp32); for CPU deployment export with --int8-activations u8, "
                       "or exclude it from CPU gates with a `precision:` selector")
    return out
