"""ONNX Runtime runner: CPU EP, or the CUDA EP when installed and asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import VtpError
from .base import Runner


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, artifact: str | Path, device: str = "cpu", threads: int | None = None):
        super().__init__(artifact, device, threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise VtpError("ONNX Runtime has no CUDA execution provider here (install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(artifact), sess_options=opts, providers=providers)
        except Exception as exc:
            raise VtpError(f"{artifact}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self._shape = tuple(d if isinstance(d, int) else str(d) for d in inp.shape)
        self._dtype = np.float16 if "float16" in inp.type else np.float32

    def input_shape(self):
        return self._shape

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=self._dtype)})[0]
        return out.astype(np.float32, copy=False)
