"""PyTorch eager runner (CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from .base import Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, artifact: torch.nn.Module, device: str = "cpu", threads: int | None = None):
        super().__init__(artifact, device, threads)
        if threads:
            torch.set_num_threads(threads)
        self.model = artifact.to(device).eval()

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return out.float().cpu().numpy()

    def synchronize(self) -> None:
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize()
