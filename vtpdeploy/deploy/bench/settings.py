"""Bench settings: the typed options of `run_bench` and the checks that run before any model is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import VtpError
from .artifacts import Artifact

BACKEND_CHOICES = ("torch", "ort", "openvino", "trt", "auto")
DEVICE_CHOICES = ("cpu", "cuda", "jetson")


def parse_batches(text: str | Sequence[int]) -> list[int]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            b = int(item)
        except (TypeError, ValueError):
            raise VtpError(f"--batch must be a comma-separated list of positive integers, got {text!r}") from None
        if b < 1:
            raise VtpError(f"--batch must be >= 1, got {b}")
        out.append(b)
    if not out:
        raise VtpError("--batch is empty")
    return list(dict.fromkeys(out))


def check_timing(batches: str | Sequence[int], duration_s: float | None, iters: int | None, warmup_s: float,
                 block_iters: int, threads: int | None) -> tuple[list[int], float | None]:
    """(batches, duration_s) from the timing settings (3 s when neither duration nor iters is given)."""
    batches = parse_batches(batches)
    if duration_s is not None and iters is not None:
        raise VtpError("give --duration-s or --iters, not both")
    if iters is not None and iters < 1:
        raise VtpError(f"--iters must be >= 1, got {iters}")
    if duration_s is None and iters is None:
        duration_s = 3.0
    if duration_s is not None and duration_s <= 0:
        raise VtpError(f"--duration-s must be > 0, got {duration_s}")
    if warmup_s < 0:
        raise VtpError(f"--warmup-s must be >= 0, got {warmup_s}")
    if block_iters < 1:
        raise VtpError(f"--block must be >= 1, got {block_iters}")
    if threads is not None and threads < 1:
        raise VtpError(f"--threads must be >= 1, got {threads}")
    return batches, duration_s


def resolve_backends(backend: str, device: str) -> list[str]:
    """`auto`: trt on jetson/cuda when installed, else ort (CUDA EP on cuda), OpenVINO-free default."""
    from ..runners.base import BACKENDS, available_backends

    names = [b.strip() for b in backend.split(",") if b.strip()]
    if not names:
        raise VtpError("--backend is empty")
    out = []
    for name in names:
        if name == "auto":
            have = available_backends()
            name = "trt" if device in ("cuda", "jetson") and "trt" in have else "ort"
        elif name not in BACKENDS:
            raise VtpError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
        elif name not in available_backends():
            from ...errors import BackendUnavailableError

            from ..runners.base import INSTALL_HINTS

            pkg = BACKENDS[name][2]
            raise BackendUnavailableError(f"backend {name!r} needs the {pkg!r} package, which is not installed"
                                          f"{INSTALL_HINTS.get(name, '')}; "
                                          f"installed backends: {', '.join(available_backends())}")
        if name == "trt" and device == "cpu":
            raise VtpError("--backend trt runs on a GPU: use --device cuda or --device jetson")
        out.append(name)
    return list(dict.fromkeys(out))


def runner_device(backend: str, device: str) -> str:
    if device == "cpu":
        return "cpu"
    if backend == "openvino":
        raise VtpError(f"--backend openvino runs on the CPU only, not --device {device}")
    if backend == "ort" and device == "jetson":
        import onnxruntime as ort

        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return "cuda"


def check_device(device: str, backends: list[str]) -> None:
    if device not in DEVICE_CHOICES:
        raise VtpError(f"unknown --device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if device == "jetson":
        from .environment import jetson

        if jetson() is None:
            raise VtpError("--device jetson: this machine is not a Jetson (use --host USER@JETSON to run there)")
    if device in ("cuda", "jetson") and "torch" in backends:
        import torch

        if not torch.cuda.is_available():
            raise VtpError(f"--device {device}: torch sees no CUDA GPU")


def check_shape(art: Artifact, runner, batch: int, chw) -> tuple[int, int, int]:
    """The (C, H, W) to feed; one-line errors when the artifact cannot take `batch` x chw."""
    shape = runner.input_shape()
    if shape is not None and len(shape) != 4:
        raise VtpError(f"{art.spec}: expects a {len(shape)}-D input {tuple(shape)}, not NCHW images")
    if shape is not None and isinstance(shape[0], int) and shape[0] != batch:
        raise VtpError(
            f"{art.spec}: fixed batch size {shape[0]} but --batch {batch} was asked; "
            f"re-export with that batch or a dynamic batch"
        )
    declared = tuple(shape[1:]) if shape is not None and all(isinstance(d, int) for d in shape[1:]) else None
    if declared is None and art.has_module:
        declared = art.input_chw()
    if declared is not None and chw is not None and tuple(declared) != tuple(chw):
        raise VtpError(
            f"{art.spec}: input size {'x'.join(map(str, declared))} does not match the other models' "
            f"{'x'.join(map(str, chw))}; compare models at the same image size"
        )
    final = declared or chw
    if final is None:
        raise VtpError(f"{art.spec}: input has a dynamic image size and no other model fixes it")
    return tuple(int(v) for v in final)


@dataclass
class BenchOptions:
    """How `run_bench` measures: backends, device, batches, the baseline, timing, bootstrap and precision.

    `duration_s` or `iters` (default 3 s); `tegrastats`: sample it during the timed window (default: only on
    --device jetson); `precision`: TensorRT engine precision (auto: read from each ONNX; see docs/tensorrt.md),
    for the torch backend fp16 casts the model and inputs (CUDA only), anything else runs fp32."""

    backend: str = "auto"
    device: str = "cpu"
    batches: str | Sequence[int] = (1,)
    baseline: str | None = None
    warmup_s: float = 1.0
    duration_s: float | None = None
    iters: int | None = None
    threads: int | None = None
    block_iters: int = 10
    seed: int = 0
    cache_dir: str | Path | None = None
    n_boot: int = 2000
    tegrastats: bool | None = None
    precision: str = "auto"
