"""The runner interface: load an artifact once, then map a float32 NCHW batch to logits.

Backends: `torch` (nn.Module, CPU/CUDA), `ort` (ONNX Runtime), `openvino` (OpenVINO CPU),
`trt` (TensorRT engine). Every backend is imported lazily inside its own module.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, VtpError

BACKENDS: dict[str, tuple[str, str, str]] = {
    # name: (module, class, python package that must be importable)
    "torch": ("vtpdeploy.deploy.runners.torch_runner", "TorchRunner", "torch"),
    "ort": ("vtpdeploy.deploy.runners.ort_runner", "OrtRunner", "onnxruntime"),
    "openvino": ("vtpdeploy.deploy.runners.openvino_runner", "OpenVinoRunner", "openvino"),
    "trt": ("vtpdeploy.deploy.runners.trt_runner", "TrtRunner", "tensorrt"),
}


class Runner(ABC):
    """Runs one model artifact on one backend."""

    backend: str = ""

    def __init__(self, artifact: Any, device: str = "cpu", threads: int | None = None):
        self.artifact = artifact
        self.device = device
        self.threads = threads

    @abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch. Must block until the result is ready."""

    def input_shape(self) -> tuple[int | str, ...] | None:
        """Declared input shape (symbolic dims as strings), if the artifact declares one."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends)."""

    def row_extras(self) -> dict[str, Any]:
        """Backend-specific fields of a bench row (`deploy.bench.schema.Row`), e.g. ORT's `spin`."""
        return {}

    def close(self) -> None:
        """Release backend resources."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def available_backends() -> list[str]:
    return [name for name, (_, _, pkg) in BACKENDS.items() if importlib.util.find_spec(pkg) is not None]


INSTALL_HINTS = {"trt": " (pip install 'vtpdeploy[trt]' on x86-64 with CUDA, or JetPack's TensorRT on Jetson)",
                 "openvino": " (pip install 'vtpdeploy[openvino]')"}


def make_runner(backend: str, artifact: Any, device: str = "cpu", threads: int | None = None, **options) -> Runner:
    """Build the runner for `backend`; a one-line error if it is unknown or not installed."""
    if backend not in BACKENDS:
        raise VtpError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, cls, pkg = BACKENDS[backend]
    if importlib.util.find_spec(pkg) is None:
        hint = INSTALL_HINTS.get(backend, "")
        raise BackendUnavailableError(
            f"backend {backend!r} needs the {pkg!r} package, which is not installed{hint}; "
            f"installed backends: {', '.join(available_backends())}"
        )
    return getattr(importlib.import_module(module), cls)(artifact, device=device, threads=threads, **options)
