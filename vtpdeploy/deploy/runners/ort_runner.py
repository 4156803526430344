"""ONNX Runtime runner: CPU EP, or the CUDA / TensorRT EP when installed and asked for.

ONNX Runtime falls back to the CPU EP with only a (hidden) warning when a GPU provider fails to
load, e.g. a missing cuDNN. The runner checks `session.get_providers()` after creating the session
and refuses to run on a provider other than the one asked for.

Thread spinning (`spin=`): `on` is ORT's default: the intra-op threads spin between the ops of a run
and keep spinning for a while after it returns. A deployed model running back-to-back never notices; a
benchmark that switches to another session does: the threads still spinning from the session just run
take a core from the next session's first call. Measured (DeiT-B and two 9 G-MAC models, 2 threads, 2
cores, blocks of 5 calls): the first call after a switch took +30…40 ms, every model alike (212 vs 176 ms,
127 vs 93 ms), which adds ~7 ms to every mean and pulls speedups towards 1. `run` keeps spinning inside a
run and stops it when the run returns (`session.force_spinning_stop`): first call = later calls
(177 / 92.7 ms vs 176 / 92.4 ms). `off` never spins: also no switch penalty, but ~2–4 % slower calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ...console import one_line
from ...errors import BackendUnavailableError, VtpError
from .base import Runner

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
Spin = Literal["on", "run", "off"]
SPINS = ("on", "run", "off")


def providers_for(device: str) -> tuple[str, list]:
    """(the provider `device` asks for, the provider list for InferenceSession).

    `cpu`; `cuda` / `cuda:N` (CUDA EP on GPU N); `trt` / `tensorrt` / `tensorrt:N` (TensorRT EP, with the
    CUDA EP for the nodes TensorRT does not take).
    """
    name, _, index = str(device).partition(":")
    if index and not index.isdigit():
        raise VtpError(f"ONNX Runtime device {device!r}: the GPU index must be a number")
    gpu = {"device_id": int(index)} if index else {}
    if name == "cpu" and not index:
        return CPU_EP, [CPU_EP]
    if name == "cuda":
        return CUDA_EP, [(CUDA_EP, gpu), CPU_EP]
    if name in ("trt", "tensorrt"):
        return TRT_EP, [(TRT_EP, gpu), (CUDA_EP, gpu), CPU_EP]
    raise VtpError(f"ONNX Runtime device {device!r}: choose cpu, cuda[:N] or tensorrt[:N]")


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, artifact: str | Path, device: str = "cpu", threads: int | None = None,
                 profile_prefix: str | None = None, spin: Spin = "on"):
        super().__init__(artifact, device, threads)
        import onnxruntime as ort

        if spin not in SPINS:
            raise VtpError(f"ORT thread spinning {spin!r}: choose one of {', '.join(SPINS)}")

        wanted, providers = providers_for(device)
        if wanted not in ort.get_available_providers():
            package = "onnxruntime-gpu" if wanted == CUDA_EP else "onnxruntime-gpu built with TensorRT"
            raise BackendUnavailableError(f"ONNX Runtime has no {wanted} here (install {package}); "
                                          f"available: {', '.join(ort.get_available_providers())}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.spin = spin
        if spin == "off":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        elif spin == "run":
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        if profile_prefix:
            # on the same options as timing, so the per-op profile sees the same threads and graph
            opts.enable_profiling = True
            opts.profile_file_prefix = str(profile_prefix)
        try:
            self.session = ort.InferenceSession(str(artifact), sess_options=opts, providers=providers)
        except Exception as exc:
            raise VtpError(f"{artifact}: ONNX Runtime cannot load it ({one_line(exc, 200)})") from None
        self.providers = list(self.session.get_providers())
        if wanted not in self.providers:
            raise BackendUnavailableError(
                f"{artifact}: ONNX Runtime fell back to {', '.join(self.providers)}: {wanted} failed to load "
                f"(missing CUDA/cuDNN/TensorRT libraries?); refusing to report a {device} result")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self._shape = tuple(d if isinstance(d, int) else str(d) for d in inp.shape)
        self._dtype = np.float16 if "float16" in inp.type else np.float32

    def row_extras(self) -> dict:
        return {"spin": self.spin}

    def input_shape(self):
        return self._shape

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=self._dtype)})[0]
        return out.astype(np.float32, copy=False)

    def end_profiling(self) -> str:
        """Stop profiling (needs `profile_prefix`) and return the path of ORT's chrome-trace JSON."""
        return self.session.end_profiling()
