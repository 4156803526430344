"""PyTorch eager runner (CPU or CUDA), fp32 or half precision."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ...errors import VtpError
from .base import Runner

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, artifact: torch.nn.Module, device: str = "cpu", threads: int | None = None,
                 precision: str = "fp32"):
        super().__init__(artifact, device, threads)
        if precision not in DTYPES:
            raise VtpError(f"torch precision {precision!r}: choose one of {', '.join(DTYPES)}")
        if precision == "fp16" and not str(device).startswith("cuda"):
            raise VtpError("torch fp16 inference needs --device cuda (CPU kernels for half precision are slow or missing)")
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.dtype = DTYPES[precision]
        moved = str(device) != "cpu" or precision != "fp32"
        # a copy when moved or cast, so the caller's module (cached by bench for ONNX export) stays fp32 on CPU
        self.model = (copy.deepcopy(artifact) if moved else artifact).to(device=device, dtype=self.dtype).eval()

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, dtype=self.dtype)
        return self.model(inp).float().cpu().numpy()

    def row_extras(self) -> dict:
        return {"precision": self.precision}

    def synchronize(self) -> None:
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize()

    def close(self) -> None:
        self.model = None
