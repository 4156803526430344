"""OpenVINO CPU runner. Inference precision is pinned to f32 unless asked otherwise (CPU may default to bf16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...console import one_line
from ...errors import VtpError
from .base import Runner


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, artifact: str | Path, device: str = "cpu", threads: int | None = None, precision: str = "f32"):
        super().__init__(artifact, device, threads)
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(artifact))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise VtpError(f"{artifact}: OpenVINO cannot load it ({one_line(exc, 200)})") from None
        self.request = self.compiled.create_infer_request()
        ps = self.compiled.inputs[0].get_partial_shape()
        self._shape = tuple(d.get_length() if d.is_static else "?" for d in ps)

    def input_shape(self):
        return self._shape

    def infer(self, x: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(result[self.compiled.outputs[0]], dtype=np.float32)
