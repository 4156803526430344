"""ONNX / FP16 / INT8 / TensorRT export of (compact) timm ViTs; see `run_export`."""

from .config import ExportConfig
from .onnx_export import ExportResult, export_onnx

__all__ = ["ExportConfig", "ExportResult", "export_onnx", "run_export"]


def __getattr__(name):
    if name == "run_export":
        from .stage import run_export

        return run_export
    raise AttributeError(name)
