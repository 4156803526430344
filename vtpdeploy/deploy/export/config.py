"""The `export` section of a recipe, shared by `vtpdeploy export` and the pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from ...prune.compat import omit_defaults


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="pipeline: export the compact model after fine-tuning")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset (TensorRT 8.5/8.6 need <= 17)")
    batch: int = Field(1, ge=1, description="fixed batch size of the exported model")
    dynamic_batch: bool = Field(False, description="symbolic batch dim instead of `batch`")
    batch_range: tuple[int, int, int] | None = Field(
        None, description="[min, opt, max] batch of a dynamic-batch export (implies dynamic_batch), carried to the "
        "TensorRT engine's optimization profile; default with dynamic_batch: [1, batch, max(batch, 32)]")
    simplify: bool = Field(True, description="simplify the graph with `simplifier` (kept only if it validates)")
    simplifier: Literal["auto", "onnxslim", "onnxsim", "none"] = Field(
        "auto", description="graph simplifier; auto = onnxsim when installed (the onnxsim extra), else onnxslim; "
        "none = simplify: false")
    fp16: bool = Field(False, description="also write model.fp16.onnx")
    int8: bool = Field(False, description="also write model.int8.onnx (QDQ, needs a calibration set)")
    calib_n: int = Field(500, ge=1, description="calibration images drawn from the train split")
    calib_seed: int = Field(0, description="seed of the calibration draw (same seed: byte-identical set)")
    calib_method: Literal["MinMax", "Percentile", "Entropy"] = Field(
        "Percentile", description="activation range estimator for INT8"
    )
    int8_fp16: bool = Field(
        False, description="also write model.int8.fp16.onnx: the INT8 Q/DQ model with fp16 float ops (opset 19), "
        "what a strongly typed TensorRT builds INT8 from; automatic with --trt on TensorRT 11"
    )
    int8_activations: Literal["s8", "u8"] = Field(
        "s8", description="INT8 activation type: s8 = TensorRT-valid symmetric QDQ (default); u8 = faster on x86 "
        "ONNX Runtime/OpenVINO CPU, NOT accepted by TensorRT (weights stay s8 symmetric per-channel)"
    )
    check_trt: bool = Field(False, description="write trt_report.json (TensorRT readiness)")
    trt: bool = Field(False, description="build one TensorRT engine per precision (model.fp16.engine, "
                      "model.int8.engine; model.fp32.engine when neither), each with a .engine.json (needs TensorRT)")
    strict: bool = Field(False, description="readiness warnings fail the export (exit 1)")
    atol: float = Field(1e-4, gt=0, description="fp32 ONNX vs PyTorch max |diff| on logits")
    val_n: int = Field(64, ge=1, description="real inputs used for parity checks")

    @model_validator(mode="after")
    def _check_batch_range(self):
        if self.batch_range is not None:
            lo, opt, hi = self.batch_range
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"batch_range {list(self.batch_range)} must satisfy 1 <= min <= opt <= max")
            if not self.dynamic_batch:
                object.__setattr__(self, "dynamic_batch", True)
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_batch_range(self, handler):
        # Run dirs made before `batch_range` existed keep their export stage key.
        return omit_defaults(handler(self), {"batch_range": None})

    def engine_batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the TensorRT optimization profile when the batch is dynamic."""
        return tuple(self.batch_range) if self.batch_range else (1, self.batch, max(self.batch, 32))
