"""TensorRT engine runner.

Uses only the API present in every supported TensorRT (8.5 -> 11): the tensor-name API —
`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`, `set_input_shape`, `set_tensor_address`,
`execute_async_v3(stream)` (8.5+). The binding-index API (removed in 10) is never touched. Device
memory: `device_memory_size_v2` (10.1+) when present, else `device_memory_size` (removed in 11).
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


def engine_io(trt, engine) -> tuple[list[str], list[str], list[str]]:
    """(all, input, output) tensor names, through the tensor-name API (TensorRT 8.5 -> 11)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return names, inputs, [n for n in names if n not in inputs]


def _dims(dims) -> tuple[int, ...]:
    """A trt.Dims as a tuple of ints (Dims supports len/index in every version)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def engine_device_memory(engine) -> int | None:
    """Per-context device memory: `device_memory_size_v2` (10.1+), else `device_memory_size` (removed in 11)."""
    for attr in ("device_memory_size_v2", "device_memory_size"):
        if hasattr(engine, attr):
            return int(getattr(engine, attr))
    return None


def _logger(trt):
    return trt.Logger(trt.Logger.ERROR)


class TrtRunner(Runner):
    backend = "trt"

    def __init__(self, artifact: str | Path, device: str = "cuda", threads: int | None = None,
                 record: dict | None = None):
        """`record`: what the engine is (version, precision, flags, GPU; `bench.engines.engine_record`)."""
        super().__init__(artifact, device, threads)
        self.record = record
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
        self.names, self.inputs, self.outputs = engine_io(trt, self.engine)
        self._shape = tuple(d if d >= 0 else "?" for d in _dims(self.engine.get_tensor_shape(self.inputs[0])))
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in self.names}
        self._buffers: dict = {}
        self._bound_shape: tuple[int, ...] | None = None

    def row_extras(self) -> dict:
        return {"tensorrt": self.record}

    def input_shape(self):
        return self._shape

    def _bind(self, shape: tuple[int, ...]) -> None:
        import torch

        name = self.inputs[0]
        if not self.context.set_input_shape(name, shape):
            raise VtpError(f"{self.artifact}: engine cannot take input shape {shape} (profile is {self._shape})")
        self._buffers = {name: torch.empty(shape, dtype=self._dtypes[name], device=self.torch_device)}
        for n in self.outputs:
            self._buffers[n] = torch.empty(_dims(self.context.get_tensor_shape(n)), dtype=self._dtypes[n],
                                           device=self.torch_device)
        for n, t in self._buffers.items():
            self.context.set_tensor_address(n, t.data_ptr())
        self._bound_shape = shape

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self._bound_shape:
            self._bind(tuple(x.shape))
        inp = self._buffers[self.inputs[0]]
        with torch.cuda.stream(self.stream):
            inp.copy_(torch.from_numpy(x).to(inp.dtype), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise VtpError(f"{self.artifact}: TensorRT execution failed")
            out = self._buffers[self.outputs[0]].float().cpu()
        self.stream.synchronize()
        return out.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def memory_info(self) -> dict:
        """Engine device memory (activations/scratch TensorRT allocates per context)."""
        size = engine_device_memory(self.engine)
        return {"trt_device_memory_mb": round(size / MB, 3) if size is not None else None}

    def close(self) -> None:
        self._buffers = {}
        self.context = None  # type: ignore[assignment]  # released: the runner is done
        self.engine = None

