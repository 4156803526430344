"""The export stage shared by `vtpdeploy export` and the pipeline: fp32 -> fp16 -> int8 -> TRT.

Writes into `out_dir`: model.onnx, model.fp16.onnx, model.int8.onnx, model.int8.fp16.onnx (INT8 with fp16
float ops, for strongly typed TensorRT), export.json (every validation,
with max diffs and top-1 agreement), trt_report.json (readiness; with check_trt or trt) and
model.<precision>.engine + model.<precision>.engine.json per requested precision (with trt).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, VtpError
from ...fileio import atomic_write_json, sha256_file
from ...prune.numerics import max_abs_diff, top1_agreement
from ..sources import ModelSource
from .config import ExportConfig
from .heldout import heldout_set
from .trt_versions import ONNX_FILE, onnx_for

def check_writable(out_dir: Path) -> Path:
    """Create `out_dir` and prove a file can be written there; one-line VtpError otherwise."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise VtpError(f"cannot write to output dir {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def _artifact(path: Path) -> dict[str, Any]:
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass
class _Job:
    """What every export step reads (settings, validation inputs and their PyTorch logits) and the report."""

    out_dir: Path
    cfg: ExportConfig
    x: np.ndarray
    ref: np.ndarray
    threads: int | None
    report: dict[str, Any]
    say: Callable[[str], None]

    @property
    def batch(self) -> int | None:
        """The exported batch (None: dynamic), for running inputs through the ONNX models."""
        return None if self.cfg.dynamic_batch else self.cfg.batch

    def validate(self, path: Path, stage: str, atol: float | None = None) -> dict[str, Any]:
        from .onnx_export import validate_onnx

        return validate_onnx(path, self.ref, self.x, stage=stage, atol=atol, batch=self.batch, threads=self.threads)

    def keep(self, name: str, path: Path, validation: dict[str, Any]) -> None:
        self.report["validations"].append(validation)
        self.report["artifacts"][name] = _artifact(path)


@dataclass
class _Calibration:
    images: np.ndarray
    dir: str | Path  # as given (reported verbatim)
    manifest: dict[str, Any]


def run_export(source: ModelSource, out_dir: str | Path, cfg: ExportConfig, calib_dir: str | Path | None = None,
               heldout: tuple[np.ndarray, np.ndarray] | None = None, *, threads: int | None = None,
               trt_targets: list[str] | None = None, log=None) -> dict[str, Any]:
    """Export `source.model` per `cfg` into `out_dir`; returns (and writes) export.json's content.

    `heldout`: labelled (images, labels) never used for calibration, for INT8 accuracy; None: the run's
    val split when `source` is a run dir with real data. Raises VtpError subclasses on bad input
    (checked before any expensive work), NumericalMismatchError if fp32 parity fails, and
    ReadinessError (exit 1) for readiness warnings under `cfg.strict`.
    """
    from .onnx_export import torch_logits

    out_dir = Path(out_dir)
    calib, trt_version = _check_before_work(source, out_dir, cfg, calib_dir)
    heldout, heldout_kind = heldout_set(source, heldout)
    x, inputs = _validation_inputs(source, cfg, heldout, heldout_kind, calib)
    model = source.model.eval()
    job = _Job(out_dir, cfg, x, torch_logits(model, x), threads, _new_report(source, cfg, inputs),
               log or (lambda msg: None))
    fp32 = _export_fp32(job, model)
    if cfg.fp16:
        _export_fp16(job, fp32.path)
    if cfg.int8:
        _export_int8(job, fp32.path, calib, trt_version)
        if heldout is not None:
            job.report["int8"]["heldout"] = _heldout_agreement(job, fp32.path, heldout, heldout_kind)
    readiness = _check_readiness(job, fp32.path, model, trt_targets) if cfg.check_trt or cfg.trt else None
    if cfg.trt:
        from .engines import build_engines

        job.report["engines"] = build_engines(job.out_dir, cfg, fp32.input_shape, trt_version, job.say)
    atomic_write_json(out_dir / "export.json", job.report)
    if readiness is not None:
        from .readiness import enforce

        enforce(readiness, cfg.strict)
    return job.report


def _check_before_work(source: ModelSource, out_dir: Path, cfg: ExportConfig,
                       calib_dir: str | Path | None) -> tuple[_Calibration | None, Any]:
    """The cheap checks, before any expensive work: (calibration set or None, TensorRT version or None)."""
    from .calib import load_calibration

    if cfg.int8 and calib_dir is None:
        raise DataError("--int8 needs --calib CALIB_DIR (build one with `vtpdeploy calib`)")
    calib = None
    if calib_dir is not None:
        images, _labels, manifest = load_calibration(calib_dir, source.input_size)
        calib = _Calibration(images, calib_dir, manifest)
    if cfg.int8_fp16 and (not cfg.int8 or cfg.int8_activations == "u8"):
        raise VtpError("--int8-fp16 converts the TensorRT INT8 model: it needs --int8 with s8 activations")
    if cfg.trt and cfg.int8 and cfg.int8_activations == "u8":
        raise VtpError("--trt builds the INT8 engine from model.int8.onnx, and TensorRT rejects u8 activations: "
                       "use --int8-activations s8")
    trt_version = None
    if cfg.trt:  # the installed TensorRT decides which ONNX each precision is built from (trt_versions.onnx_for)
        from .trt_build import installed_version

        trt_version = installed_version()[1]
    check_writable(out_dir)
    return calib, trt_version


def _validation_inputs(source: ModelSource, cfg: ExportConfig, heldout, heldout_kind: str | None,
                       calib: _Calibration | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Up to `cfg.val_n` inputs for every parity check: held-out, else calibration, else seeded random."""
    from .onnx_export import random_inputs

    if heldout is not None:
        x, inputs = heldout[0][: cfg.val_n], {"kind": "real", "from": heldout_kind}
    elif calib is not None:
        x, inputs = calib.images[: cfg.val_n], {"kind": "real", "from": f"calibration set {calib.dir}"}
    else:
        x = random_inputs(source.input_size, cfg.val_n, seed=0)
        inputs = {"kind": "random", "from": "seeded standard normal", "seed": 0}
    inputs.update(n=int(len(x)), shape=list(x.shape[1:]))
    return x, inputs


def _new_report(source: ModelSource, cfg: ExportConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    from ...prune.counting import count

    counts = count(source.model, tuple(source.input_size[1:]))  # bench reads them: an ONNX carries no MAC count
    return {
        "source": source.label,
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "provenance": _provenance(source),
        "counts": {"params": int(counts["params"]), "macs": int(counts["macs"]), "per": "image"},
        "opset": cfg.opset,
        "batch": ("dynamic" if cfg.dynamic_batch else cfg.batch),
        "batch_range": list(cfg.engine_batch_range()) if cfg.dynamic_batch else None,
        "config": cfg.model_dump(mode="json"),
        "inputs": inputs,
        "artifacts": {},
        "validations": [],
    }


def _provenance(source: ModelSource) -> dict[str, Any]:
    """Where the exported model came from, so `bench` can find its unpruned counterpart."""
    saved = source.saved_path
    return {"run_dir": str(Path(source.run_dir).resolve()) if source.run_dir else None,
            "which": saved.name if source.run_dir and saved else None,
            "saved_model": str(Path(saved).resolve()) if saved else None,
            "timm_name": source.label if source.run_dir is None and saved is None else None}


def _export_fp32(job: _Job, model):
    """model.onnx, validated (and simplified when asked) by the one exporter."""
    from .onnx_export import export_onnx

    cfg = job.cfg
    job.say(f"exporting fp32 ONNX (opset {cfg.opset}) -> {job.out_dir / 'model.onnx'}")
    fp32 = export_onnx(model, job.out_dir / "model.onnx", opset=cfg.opset, batch=cfg.batch,
                       dynamic_batch=cfg.dynamic_batch, simplify=cfg.simplify, simplifier=cfg.simplifier,
                       sample=job.x, atol=cfg.atol, threads=job.threads, reference=job.ref)
    job.report.update(input_shape=fp32.input_shape, simplified=fp32.simplified, simplify_note=fp32.simplify_note,
                      simplifier=fp32.simplifier)
    job.report["validations"] += fp32.validations
    job.report["artifacts"]["fp32"] = _artifact(fp32.path)
    return fp32


def _export_fp16(job: _Job, fp32_path: Path) -> None:
    from .fp16 import convert_fp16

    job.say("converting to fp16 -> model.fp16.onnx")
    path16 = job.out_dir / "model.fp16.onnx"
    tmp16 = convert_fp16(fp32_path, job.out_dir / ".model.fp16.onnx.pending")
    try:
        rec = job.validate(tmp16, "fp16")
        os.replace(tmp16, path16)
    finally:
        tmp16.unlink(missing_ok=True)
    rec["io_types"] = "float32 (keep_io_types=True), compute float16"
    job.keep("fp16", path16, rec)


def _export_int8(job: _Job, fp32_path: Path, calib: _Calibration, trt_version) -> None:
    """model.int8.onnx (checked: s8 is TensorRT-valid, weights int8 symmetric), and its fp16 twin when needed."""
    from .quantize import quantize_int8

    cfg = job.cfg
    u8 = cfg.int8_activations == "u8"
    job.say(f"quantizing to int8 (QDQ, {cfg.calib_method}, {cfg.int8_activations} activations"
            f"{' (CPU runtimes, not TensorRT)' if u8 else ''}, {len(calib.images)} calibration images) "
            "-> model.int8.onnx")
    path8, tmp8 = job.out_dir / "model.int8.onnx", job.out_dir / ".model.int8.onnx.pending"
    try:
        settings = quantize_int8(fp32_path, tmp8, calib.images, method=cfg.calib_method,
                                 activation_type=cfg.int8_activations)
        rec = job.validate(tmp8, "int8")
        q = _checked_qdq(tmp8, u8)
        os.replace(tmp8, path8)
    finally:
        tmp8.unlink(missing_ok=True)
    job.keep("int8", path8, rec)
    job.report["int8"] = _int8_info(settings, calib, cfg.int8_activations, q)
    if cfg.int8_fp16 or (trt_version is not None and onnx_for(trt_version, "int8") == "int8-fp16"):
        _write_int8_fp16(job, path8, rec)


def _checked_qdq(path: Path, u8: bool) -> dict[str, Any]:
    """The model's Q/DQ summary; raises when s8 is not TensorRT-valid or a weight is not int8 symmetric."""
    from .quantize import qdq_summary

    q = qdq_summary(path)
    if not u8 and (q["nonzero_zero_points"] or q["non_int8_qdq"]):
        raise VtpError(f"INT8 (s8) model has {len(q['nonzero_zero_points'])} non-zero zero points and "
                       f"{len(q['non_int8_qdq'])} non-int8 Q/DQ nodes")
    bad_w = [w["name"] for w in q["weights"] if w["dtype"] != "int8" or not w["zero_point_zero"]]
    if bad_w:
        raise VtpError(f"INT8 model has {len(bad_w)} weights that are not int8 with zero point 0: {bad_w[0]}")
    return q


def _int8_info(settings: dict[str, Any], calib: _Calibration, activations: str, q: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "calibration": {"dir": str(calib.dir), "n": int(len(calib.images)),
                        "sha256": calib.manifest.get("files", {}).get("calib.npy") or sha256_file(Path(calib.dir) / "calib.npy"),
                        "source": calib.manifest.get("source")},
        "activations": activations,
        "quant_dtypes": q["quant_dtypes"],
        "tensorrt_valid": not q["nonzero_zero_points"] and not q["non_int8_qdq"],
        "zero_points_all_zero": not q["nonzero_zero_points"],
        "weights_int8_symmetric": True,  # _checked_qdq refused any other
        "weights_per_channel": all(w["per_channel"] for w in q["weights"]),
        "quantized_weights": len(q["weights"]),
    }


def _heldout_agreement(job: _Job, fp32_path: Path, heldout, heldout_kind: str | None) -> dict[str, Any]:
    """fp32 vs int8 ONNX accuracy and agreement on labelled images never used for calibration."""
    from ..runners import make_runner
    from .onnx_export import run_batched

    hx, hy = heldout
    with make_runner("ort", fp32_path, threads=job.threads) as r32, \
            make_runner("ort", job.out_dir / "model.int8.onnx", threads=job.threads) as r8:
        o32, o8 = run_batched(r32, hx, job.batch), run_batched(r8, hx, job.batch)
    return {
        "from": heldout_kind, "n": int(len(hx)),
        "accuracy_fp32": float((o32.argmax(-1) == hy).mean()),
        "accuracy_int8": float((o8.argmax(-1) == hy).mean()),
        "top1_agreement": top1_agreement(o32, o8),
        "max_abs_diff": max_abs_diff(o32, o8),
    }


def _check_readiness(job: _Job, fp32_path: Path, model, trt_targets: list[str] | None) -> dict[str, Any]:
    """trt_report.json: TensorRT readiness of every file an engine may be built from."""
    from .readiness import TARGETS, check_trt_readiness

    cfg, out_dir = job.cfg, job.out_dir
    precisions = [p for p, on in (("fp16", True), ("int8", cfg.int8)) if on]
    readiness = check_trt_readiness(fp32_path, model, targets=trt_targets or list(TARGETS), precisions=precisions,
                                    int8_path=out_dir / "model.int8.onnx" if cfg.int8 else None,
                                    int8_fp16_path=out_dir / ONNX_FILE["int8-fp16"]
                                    if "int8_fp16" in job.report["artifacts"] else None)
    atomic_write_json(out_dir / "trt_report.json", readiness)
    job.report["trt_report"] = {"path": "trt_report.json", "warnings": len(readiness["warnings"])}
    return readiness


INT8_FP16_SLACK = 2.0  # model.int8.fp16.onnx may be at most this many times further from PyTorch than model.int8.onnx


def _write_int8_fp16(job: _Job, path8: Path, rec8: dict[str, Any]) -> None:
    """model.int8.fp16.onnx: the INT8 model with fp16 float ops (for strongly typed TensorRT), validated."""
    from .quantize import int8_fp16

    name = ONNX_FILE["int8-fp16"]
    job.say(f"converting the INT8 model's float ops to fp16 -> {name}")
    final, tmp = job.out_dir / name, job.out_dir / f".{name}.pending"
    atol = max(INT8_FP16_SLACK * rec8["max_abs_diff"], 1e-6)
    try:
        int8_fp16(path8, tmp)
        rec = job.validate(tmp, "int8-fp16", atol=atol)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    rec["tolerance"] = f"{INT8_FP16_SLACK:g} x the int8 model's max|diff| vs PyTorch"
    rec["io_types"] = "float32 (keep_io_types=True), Q/DQ and compute float16, opset 19"
    job.keep("int8_fp16", final, rec)
