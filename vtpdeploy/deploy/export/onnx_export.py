"""PyTorch -> ONNX export with the legacy TorchScript exporter, validated after every transform.

Every `.onnx` is written to a temp file beside its target and renamed only after it passed
`onnx.checker` (full check) and the numerical checks, so a half-written or failed model never
sits at the final path.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...console import one_line, quiet
from ...errors import VtpError
from ...fileio import atomic_path
from ...prune.numerics import assert_close, max_abs_diff, top1_agreement
from ...prune.sites import image_chans

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


@dataclass
class ExportResult:
    """What `export_onnx` wrote and every validation it ran (in order)."""

    path: Path
    opset: int
    input_shape: list[int | str]
    dynamic_batch: bool
    simplified: bool
    validations: list[dict[str, Any]] = field(default_factory=list)
    simplify_note: str | None = None
    simplifier: str | None = None  # the tool that produced the kept graph (None: not simplified)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects, from its vtpdeploy spec or its patch embedding."""
    spec = getattr(model, "vtp_spec", None)
    if spec is not None and spec.data_config.get("input_size"):
        return tuple(int(v) for v in spec.data_config["input_size"])
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        return (image_chans(model), int(pe.img_size[0]), int(pe.img_size[1]))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])
    raise VtpError(f"{type(model).__name__}: cannot tell its input size; pass a sample input")


def random_inputs(input_size: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal NCHW float32 inputs."""
    return np.random.default_rng(seed).standard_normal((n, *input_size), dtype=np.float32)


def run_batched(runner, x: np.ndarray, batch: int | None) -> np.ndarray:
    """Run `x` through `runner` in chunks of exactly `batch` (padding the last chunk); None: one call."""
    if batch is None or batch <= 0:
        return runner.infer(x)
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(runner.infer(chunk)[:n])
    return np.concatenate(outs)


@torch.inference_mode()
def torch_logits(model: nn.Module, x: np.ndarray, chunk: int = 64) -> np.ndarray:
    outs = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + chunk]))).float().cpu().numpy()
            for i in range(0, len(x), chunk)]
    return np.concatenate(outs)


def check_onnx(path: str | Path) -> None:
    """onnx.checker full check (type and shape inference included); one-line VtpError on failure."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise VtpError(f"{path}: ONNX checker failed ({one_line(exc, 200)})") from None


def compare(ref: np.ndarray, out: np.ndarray, *, stage: str, backend: str, atol: float | None,
            what: str) -> dict[str, Any]:
    """One validation record; with `atol`, raise NumericalMismatchError when it is exceeded."""
    diff = assert_close(ref, out, atol, what) if atol is not None else max_abs_diff(ref, out)
    return {
        "stage": stage,
        "backend": backend,
        "n": int(len(ref)),
        "max_abs_diff": float(diff),
        "atol": atol,
        "top1_agreement": top1_agreement(ref, out),
        "passed": True if atol is not None else None,
    }


def validate_onnx(path: str | Path, ref: np.ndarray, x: np.ndarray, *, stage: str, atol: float | None,
                  batch: int | None, backend: str = "ort", threads: int | None = 1) -> dict[str, Any]:
    """Check `path` and compare its outputs on `x` with `ref` (PyTorch logits) on `backend`."""
    from ..runners import make_runner

    check_onnx(path)
    runner = make_runner(backend, path, threads=threads)
    try:
        out = run_batched(runner, x, batch)
    finally:
        runner.close()
    return compare(ref, out, stage=stage, backend=backend, atol=atol, what=f"{stage} ONNX on {backend} vs PyTorch")


def _openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def legacy_exporter_kwargs(export_fn=None) -> dict[str, Any]:
    """Keyword arguments that select the legacy TorchScript exporter of `torch.onnx.export`.

    torch >= 2.5 has a `dynamo` argument (default True from 2.9): pass `dynamo=False`, since the legacy
    exporter keeps opset <= 17 for TensorRT 8.5/8.6. torch 2.3/2.4 (JetPack 6.0 wheels) has no such
    argument, is a TypeError when given it, and only has the legacy exporter anyway.
    """
    export_fn = export_fn or torch.onnx.export
    try:
        params = inspect.signature(export_fn).parameters
    except (TypeError, ValueError):  # an unreadable signature: decide by version
        return {"dynamo": False} if _torch_version() >= (2, 5) else {}
    return {"dynamo": False} if "dynamo" in params else {}


def _torch_version() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


class _ImageOnly(nn.Module):
    """`model` behind a forward(x): the legacy exporter traces every default of a forward's further parameters
    as an input, and Eva's `is_causal=False` reached SDPA as a tensor (the unpruned Eva-class models)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _image_only(model: nn.Module) -> nn.Module:
    """`model` itself when its forward takes nothing but the image (or only None defaults), else `_ImageOnly`."""
    extra = list(inspect.signature(model.forward).parameters.values())[1:]
    return model if all(p.default is None for p in extra if p.kind is p.POSITIONAL_OR_KEYWORD) else _ImageOnly(model)


def _torch_export(model: nn.Module, dst: Path, dummy: torch.Tensor, opset: int, dynamic_batch: bool) -> None:
    from .symbolics import exporter_symbolics

    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with quiet(), exporter_symbolics(opset):
            torch.onnx.export(
                _image_only(model),
                (dummy,),
                str(dst),
                **legacy_exporter_kwargs(),
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                export_params=True,
            )
    except Exception as exc:
        raise VtpError(f"ONNX export failed at opset {opset}: {one_line(exc, 200)}") from None


SIMPLIFIERS = ("auto", "onnxslim", "onnxsim", "none")


def resolve_simplifier(simplifier: str) -> str:
    """`auto`: onnxsim when installed (as valid, and faster to run, in docs/report.md's measurements), else onnxslim."""
    if simplifier != "auto":
        return simplifier
    import importlib.util

    return "onnxsim" if importlib.util.find_spec("onnxsim") is not None else "onnxslim"


def _slim(src: Path, dst: Path, simplifier: str = "onnxslim") -> str | None:
    """Simplify `src` into `dst` with onnxslim or onnxsim; returns an error note instead of raising."""
    try:
        import onnx

        tool = __import__(simplifier)
    except ImportError:
        return f"{simplifier} not installed" + (" (pip install 'vtpdeploy[onnxsim]')" if simplifier == "onnxsim" else "")
    try:
        with quiet():
            if simplifier == "onnxsim":
                slim, ok = tool.simplify(onnx.load(str(src)))
                if not ok:
                    return "onnxsim could not check its simplified model"
            else:
                slim = tool.slim(onnx.load(str(src)))
            onnx.save(slim, str(dst))
    except Exception as exc:
        return f"{simplifier} failed: {one_line(exc, 160)}"
    return None


def _checked_simplifier(simplifier: str, batch: int) -> str:
    if batch < 1:
        raise VtpError(f"--batch must be >= 1, got {batch}")
    if simplifier not in SIMPLIFIERS:
        raise VtpError(f"--simplifier {simplifier!r}: choose {', '.join(SIMPLIFIERS)}")
    return resolve_simplifier(simplifier)


def _sample_array(model: nn.Module, sample, batch: int, validate: bool) -> np.ndarray:
    """The validation inputs as float32 NCHW (8 seeded standard-normal images when `sample` is None)."""
    if sample is None:
        sample = random_inputs(model_input_size(model), max(8, batch))
    x = sample.detach().float().cpu().numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample, np.float32)
    if validate and x.ndim != 4:
        raise VtpError(f"sample inputs must be NCHW, got shape {x.shape}")
    return x


def _simplify_validated(tmp: Path, path: Path, simplifier: str, ref, x: np.ndarray, atol: float,
                        export_batch: int | None, threads: int | None) -> tuple[dict[str, Any] | None, str | None]:
    """Simplify `tmp` in place when the simplified graph validates: (its validation record, None); else
    (None, why the unsimplified graph was kept)."""
    fd, slim_name = tempfile.mkstemp(prefix=f".{path.name}.slim.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    slim_tmp = Path(slim_name)
    try:
        note = _slim(tmp, slim_tmp, simplifier)
        if note is not None:
            return None, note
        try:
            rec = validate_onnx(slim_tmp, ref, x, stage="fp32-simplified", atol=atol, batch=export_batch,
                                threads=threads)
        except VtpError as exc:  # keep the unsimplified model
            return None, f"simplified model rejected: {exc}"
        os.replace(slim_tmp, tmp)
        return rec, None
    finally:
        slim_tmp.unlink(missing_ok=True)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int = 1,
    dynamic_batch: bool = False,
    simplify: bool = True,
    simplifier: str = "auto",
    sample: np.ndarray | torch.Tensor | None = None,
    atol: float = 1e-4,
    openvino: bool | None = None,
    threads: int | None = 1,
    reference: np.ndarray | None = None,
    validate: bool = True,
) -> ExportResult:
    """Export `model` to ONNX at `path` and validate it; raises NumericalMismatchError past `atol`.

    - fixed batch `batch` by default; `dynamic_batch=True` makes dim 0 the symbolic `batch`.
    - `sample`: NCHW float32 validation inputs (any count; run in chunks of `batch` when fixed);
      None: 8 seeded standard-normal inputs of the model's input size.
    - validated with ORT CPU after export and after `simplifier` (auto | onnxslim | onnxsim | none; skipped
      when `simplify=False`; its graph is kept only if it validates), then with
      OpenVINO CPU at f32 precision when installed (`openvino=None`: when installed).
    - `validate=False`: onnx.checker only, no simplifier and no numerical comparison, for a graph that is
      only timed (latency-table parts); `sample` is then just the trace input, of any shape.
    """
    if opset > 17:
        warnings.warn(f"opset {opset} > 17: TensorRT 8.5/8.6 cannot parse it", stacklevel=2)
    simplifier = _checked_simplifier(simplifier, batch)
    simplify = validate and simplify and simplifier != "none"
    openvino = validate and (_openvino_available() if openvino is None else openvino)
    path = Path(path)
    model = model.eval()
    x = _sample_array(model, sample, batch, validate)
    ref = torch_logits(model, x) if validate and reference is None else reference
    export_batch = None if dynamic_batch else batch
    dummy = torch.from_numpy(run_dummy(x, batch))
    validations: list[dict[str, Any]] = []
    simplified, note = False, None
    with atomic_path(path) as tmp:
        _torch_export(model, tmp, dummy, opset, dynamic_batch)
        if validate:
            validations.append(validate_onnx(tmp, ref, x, stage="fp32", atol=atol, batch=export_batch,
                                             threads=threads))
        else:
            check_onnx(tmp)
        if simplify:
            rec, note = _simplify_validated(tmp, path, simplifier, ref, x, atol, export_batch, threads)
            if rec is not None:
                validations.append(rec)
                simplified = True
        if openvino:
            validations.append(validate_onnx(tmp, ref, x, stage="fp32", backend="openvino", atol=atol,
                                             batch=export_batch, threads=threads))
    shape: list[int | str] = ["batch" if dynamic_batch else batch, *[int(v) for v in x.shape[1:]]]
    return ExportResult(path=path, opset=opset, input_shape=shape, dynamic_batch=dynamic_batch,
                        simplified=simplified, validations=validations, simplify_note=note,
                        simplifier=simplifier if simplified else None)


def run_dummy(x: np.ndarray, batch: int) -> np.ndarray:
    """A trace input of exactly `batch` rows taken from `x` (repeated if `x` is shorter)."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
