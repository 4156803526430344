"""TensorRT engine runner (and a minimal ONNX -> engine builder).

Supports both TensorRT APIs:
- TRT 10+ (and 8.5/8.6 where present): tensor names — `num_io_tensors`, `get_tensor_name`,
  `set_input_shape`, `set_tensor_address`, `execute_async_v3(stream)`;
- TRT 8.x bindings — `num_bindings`, `binding_is_input`, `set_binding_shape`,
  `execute_async_v2(bindings, stream)`.
Device buffers are torch CUDA tensors; every inference runs on a private CUDA stream and is
synchronised before `infer` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import VtpError
from .base import Runner

MB = 1024.0 * 1024.0


def _torch_dtype(trt, dt):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8}
    if hasattr(trt, "bool"):
        table[trt.bool] = torch.bool
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise VtpError(f"TensorRT tensor dtype {dt} is not supported by the bench runner")
    return table[dt]


def _logger(trt):
    return trt.Logger(trt.Logger.ERROR)


class TrtRunner(Runner):
    backend = "trt"

    def __init__(self, artifact: str | Path, device: str = "cuda", threads: int | None = None):
        super().__init__(artifact, device, threads)
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise VtpError("the trt backend needs a CUDA GPU visible to torch")
        self.trt = trt
        self.torch_device = torch.device("cuda" if device in ("cpu", "jetson") else device)
        path = Path(artifact)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VtpError(f"{path}: cannot read engine ({exc.strerror or exc})") from None
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(data) if data else None
        if self.engine is None:
            raise VtpError(f"{path}: not a TensorRT engine for this TensorRT {trt.__version__} / GPU (truncated, or built elsewhere)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise VtpError(f"{path}: TensorRT could not create an execution context (out of device memory?)")
        self.stream = torch.cuda.Stream(device=self.torch_device)
        self.v3 = hasattr(self.engine, "num_io_tensors") and hasattr(self.context, "execute_async_v3")
        if self.v3:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.outputs = [n for n in names if n not in self.inputs]
            shape_of = self.engine.get_tensor_shape
            dtype_of = self.engine.get_tensor_dtype
        else:
            names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]
            self.inputs = [n for i, n in enumerate(names) if self.engine.binding_is_input(i)]
            self.outputs = [n for n in names if n not in self.inputs]
            shape_of = lambda n: self.engine.get_binding_shape(self.engine.get_binding_index(n))  # noqa: E731
            dtype_of = lambda n: self.engine.get_binding_dtype(self.engine.get_binding_index(n))  # noqa: E731
        self.names = names
        self._shape = tuple(int(d) if int(d) >= 0 else "?" for d in shape_of(self.inputs[0]))
        self._dtypes = {n: _torch_dtype(trt, dtype_of(n)) for n in names}
        self._buffers: dict = {}
        self._bound_shape = None

    def input_shape(self):
        return self._shape

    def _bind(self, shape: tuple[int, ...]) -> None:
        import torch

        name = self.inputs[0]
        if self.v3:
            if not self.context.set_input_shape(name, shape):
                raise VtpError(f"{self.artifact}: engine cannot take input shape {shape} (profile is {self._shape})")
            out_shape = lambda n: tuple(self.context.get_tensor_shape(n))  # noqa: E731
        else:
            idx = self.engine.get_binding_index(name)
            if -1 in tuple(self.engine.get_binding_shape(idx)) and not self.context.set_binding_shape(idx, shape):
                raise VtpError(f"{self.artifact}: engine cannot take input shape {shape} (profile is {self._shape})")
            out_shape = lambda n: tuple(self.context.get_binding_shape(self.engine.get_binding_index(n)))  # noqa: E731
        self._buffers = {name: torch.empty(shape, dtype=self._dtypes[name], device=self.torch_device)}
        for n in self.outputs:
            self._buffers[n] = torch.empty(out_shape(n), dtype=self._dtypes[n], device=self.torch_device)
        if self.v3:
            for n, t in self._buffers.items():
                self.context.set_tensor_address(n, t.data_ptr())
        self._bindings = [self._buffers[n].data_ptr() for n in self.names]
        self._bound_shape = shape

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self._bound_shape:
            self._bind(tuple(x.shape))
        inp = self._buffers[self.inputs[0]]
        with torch.cuda.stream(self.stream):
            inp.copy_(torch.from_numpy(x).to(inp.dtype), non_blocking=False)
            if self.v3:
                ok = self.context.execute_async_v3(self.stream.cuda_stream)
            else:
                ok = self.context.execute_async_v2(self._bindings, self.stream.cuda_stream)
            if not ok:
                raise VtpError(f"{self.artifact}: TensorRT execution failed")
            out = self._buffers[self.outputs[0]].float().cpu()
        self.stream.synchronize()
        return out.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def memory_info(self) -> dict:
        """Engine device memory (activations/scratch TensorRT allocates per context)."""
        size = getattr(self.engine, "device_memory_size_v2", None)
        if size is None:
            size = getattr(self.engine, "device_memory_size", None)
        return {"trt_device_memory_mb": round(size / MB, 3) if size is not None else None}

    def close(self) -> None:
        self._buffers = {}
        self.context = None
        self.engine = None

