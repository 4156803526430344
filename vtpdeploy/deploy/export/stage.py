"""The export stage shared by `vtpdeploy export` and the pipeline: fp32 -> fp16 -> int8 -> TRT.

Writes into `out_dir`: model.onnx, model.fp16.onnx, model.int8.onnx, model.int8.fp16.onnx (INT8 with fp16
float ops, for strongly typed TensorRT), export.json (every validation,
with max diffs and top-1 agreement), trt_report.json (readiness; with check_trt or trt) and
model.engine + engine.json (with trt).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, VtpError
from ...fileio import atomic_write_json, sha256_file
from ...prune.numerics import max_abs_diff, top1_agreement
from ..sources import ModelSource
from .config import ExportConfig
from .trt_versions import ONNX_FILE, onnx_for

HELDOUT_MAX = 512


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


def _run_split(source: ModelSource, split: str, limit: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Up to `limit` preprocessed (images, labels) of the run's `split`, or None without real data."""
    if source.run_dir is None or not (source.run_dir / "recipe.yaml").is_file():
        return None
    from ...data import build_dataset, data_config_for, make_transform, run_data_section

    try:
        data = run_data_section(source.run_dir)
    except Exception:
        return None
    if data.kind == "synthetic":
        return None
    cfg = data_config_for(source.data_config, data)
    ds = build_dataset(data, split, make_transform(cfg), input_size=tuple(cfg["input_size"]))
    n = min(limit, len(ds))
    if n == 0:
        return None
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else np.arange(n)
    xs, ys = zip(*(ds[int(i)] for i in idx))
    x = np.stack([t.numpy() if hasattr(t, "numpy") else np.asarray(t) for t in xs]).astype(np.float32)
    return x, np.asarray(ys, dtype=np.int64), f"{data.kind} {split} split"


def _artifact(path: Path) -> dict[str, Any]:
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def run_export(source: ModelSource, out_dir: str | Path, cfg: ExportConfig, calib_dir: str | Path | None = None,
               heldout: tuple[np.ndarray, np.ndarray] | None = None, *, threads: int | None = None,
               trt_targets: list[str] | None = None, log=None) -> dict[str, Any]:
    """Export `source.model` per `cfg` into `out_dir`; returns (and writes) export.json's content.

    `heldout`: labelled (images, labels) never used for calibration, for INT8 accuracy; None: the run's
    val split when `source` is a run dir with real data. Raises VtpError subclasses on bad input
    (checked before any expensive work), NumericalMismatchError if fp32 parity fails, and
    ReadinessError (exit 1) for readiness warnings under `cfg.strict`.
    """
    from .calib import load_calibration
    from .onnx_export import (
        export_onnx,
        random_inputs,
        run_batched,
        torch_logits,
        validate_onnx,
    )

    say = log or (lambda msg: None)
    out_dir = Path(out_dir)
    input_size = source.input_size
    # --- cheap checks first -------------------------------------------------------------------
    if cfg.int8 and calib_dir is None:
        raise DataError("--int8 needs --calib CALIB_DIR (build one with `vtpdeploy calib`)")
    calib = calib_labels = None
    calib_manifest: dict[str, Any] = {}
    if calib_dir is not None:
        calib, calib_labels, calib_manifest = load_calibration(calib_dir, input_size)
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

    # --- real inputs ----------------------------------------------------------------------------
    if heldout is None:
        heldout_split = _run_split(source, "val", HELDOUT_MAX)
        if heldout_split is not None:
            heldout = heldout_split[:2]
            heldout_kind = heldout_split[2]
        else:
            heldout_kind = None
    else:
        heldout_kind = "given held-out set"
    if heldout is not None:
        x, inputs = heldout[0][: cfg.val_n], {"kind": "real", "from": heldout_kind}
    elif calib is not None:
        x, inputs = calib[: cfg.val_n], {"kind": "real", "from": f"calibration set {calib_dir}"}
    else:
        x = random_inputs(input_size, cfg.val_n, seed=0)
        inputs = {"kind": "random", "from": "seeded standard normal", "seed": 0}
    inputs.update(n=int(len(x)), shape=list(x.shape[1:]))
    batch = None if cfg.dynamic_batch else cfg.batch
    model = source.model.eval()
    ref = torch_logits(model, x)

    report: dict[str, Any] = {
        "source": source.label,
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "opset": cfg.opset,
        "batch": "dynamic" if cfg.dynamic_batch else cfg.batch,
        "config": cfg.model_dump(mode="json"),
        "inputs": inputs,
        "artifacts": {},
        "validations": [],
    }

    # --- fp32 ---------------------------------------------------------------------------------
    say(f"exporting fp32 ONNX (opset {cfg.opset}) -> {out_dir / 'model.onnx'}")
    fp32 = export_onnx(model, out_dir / "model.onnx", opset=cfg.opset, batch=cfg.batch,
                       dynamic_batch=cfg.dynamic_batch, simplify=cfg.simplify, simplifier=cfg.simplifier, sample=x,
                       atol=cfg.atol, threads=threads, reference=ref)
    report["input_shape"] = fp32.input_shape
    report["simplified"] = fp32.simplified
    report["simplify_note"] = fp32.simplify_note
    report["validations"] += fp32.validations
    report["artifacts"]["fp32"] = _artifact(fp32.path)

    # --- fp16 ---------------------------------------------------------------------------------
    if cfg.fp16:
        from .fp16 import convert_fp16

        say("converting to fp16 -> model.fp16.onnx")
        path16 = out_dir / "model.fp16.onnx"
        tmp16 = convert_fp16(fp32.path, out_dir / ".model.fp16.onnx.pending")
        try:
            rec = validate_onnx(tmp16, ref, x, stage="fp16", atol=None, batch=batch, threads=threads)
            os.replace(tmp16, path16)
        finally:
            tmp16.unlink(missing_ok=True)
        rec["io_types"] = "float32 (keep_io_types=True), compute float16"
        report["validations"].append(rec)
        report["artifacts"]["fp16"] = _artifact(path16)

    # --- int8 ---------------------------------------------------------------------------------
    if cfg.int8:
        from ..runners import make_runner
        from .quantize import qdq_summary, quantize_int8

        u8 = cfg.int8_activations == "u8"
        say(f"quantizing to int8 (QDQ, {cfg.calib_method}, {cfg.int8_activations} activations"
            f"{' (CPU runtimes, not TensorRT)' if u8 else ''}, {len(calib)} calibration images) -> model.int8.onnx")
        path8 = out_dir / "model.int8.onnx"
        tmp8 = out_dir / ".model.int8.onnx.pending"
        try:
            settings = quantize_int8(fp32.path, tmp8, calib, method=cfg.calib_method,
                                     activation_type=cfg.int8_activations)
            rec = validate_onnx(tmp8, ref, x, stage="int8", atol=None, batch=batch, threads=threads)
            q = qdq_summary(tmp8)
            if not u8 and (q["nonzero_zero_points"] or q["non_int8_qdq"]):
                raise VtpError(f"INT8 (s8) model has {len(q['nonzero_zero_points'])} non-zero zero points and "
                               f"{len(q['non_int8_qdq'])} non-int8 Q/DQ nodes")
            bad_w = [w["name"] for w in q["weights"] if w["dtype"] != "int8" or not w["zero_point_zero"]]
            if bad_w:
                raise VtpError(f"INT8 model has {len(bad_w)} weights that are not int8 with zero point 0: {bad_w[0]}")
            os.replace(tmp8, path8)
        finally:
            tmp8.unlink(missing_ok=True)
        report["validations"].append(rec)
        report["artifacts"]["int8"] = _artifact(path8)
        int8_info: dict[str, Any] = {
            "settings": settings,
            "calibration": {"dir": str(calib_dir), "n": int(len(calib)),
                            "sha256": calib_manifest.get("files", {}).get("calib.npy") or sha256_file(Path(calib_dir) / "calib.npy"),
                            "source": calib_manifest.get("source")},
            "activations": cfg.int8_activations,
            "quant_dtypes": q["quant_dtypes"],
            "tensorrt_valid": not q["nonzero_zero_points"] and not q["non_int8_qdq"],
            "zero_points_all_zero": not q["nonzero_zero_points"],
            "weights_int8_symmetric": not bad_w,
            "weights_per_channel": all(w["per_channel"] for w in q["weights"]),
            "quantized_weights": len(q["weights"]),
        }
        if heldout is not None:
            hx, hy = heldout
            with make_runner("ort", fp32.path, threads=threads) as r32, make_runner("ort", path8, threads=threads) as r8:
                o32, o8 = run_batched(r32, hx, batch), run_batched(r8, hx, batch)
            int8_info["heldout"] = {
                "from": heldout_kind, "n": int(len(hx)),
                "accuracy_fp32": float((o32.argmax(-1) == hy).mean()),
                "accuracy_int8": float((o8.argmax(-1) == hy).mean()),
                "top1_agreement": top1_agreement(o32, o8),
                "max_abs_diff": max_abs_diff(o32, o8),
            }
        report["int8"] = int8_info
        if cfg.int8_fp16 or (trt_version is not None and onnx_for(trt_version, "int8") == "int8-fp16"):
            _write_int8_fp16(out_dir, path8, ref, x, rec, batch, threads, report, say)

    # --- TensorRT -----------------------------------------------------------------------------
    readiness = None
    if cfg.check_trt or cfg.trt:
        from .readiness import TARGETS, check_trt_readiness

        precisions = [p for p, on in (("fp16", True), ("int8", cfg.int8)) if on]
        readiness = check_trt_readiness(fp32.path, model, targets=trt_targets or list(TARGETS),
                                        precisions=precisions,
                                        int8_path=out_dir / "model.int8.onnx" if cfg.int8 else None,
                                        int8_fp16_path=out_dir / ONNX_FILE["int8-fp16"]
                                        if "int8_fp16" in report["artifacts"] else None)
        atomic_write_json(out_dir / "trt_report.json", readiness)
        report["trt_report"] = {"path": "trt_report.json", "warnings": len(readiness["warnings"])}
    if cfg.trt:
        from .trt_build import build_engine

        precision = "int8" if cfg.int8 else "fp16" if cfg.fp16 else "fp32"
        onnx_in = out_dir / ONNX_FILE[onnx_for(trt_version, precision)]
        say(f"building TensorRT {trt_version} engine ({precision}, from {onnx_in.name}) -> model.engine")
        report["engine"] = build_engine(onnx_in, out_dir / "model.engine", precision=precision,
                                        input_shape=fp32.input_shape,
                                        batch_range=(1, cfg.batch, max(cfg.batch, 32)))
    atomic_write_json(out_dir / "export.json", report)
    if readiness is not None:
        from .readiness import enforce

        enforce(readiness, cfg.strict)
    return report


INT8_FP16_SLACK = 2.0  # model.int8.fp16.onnx may be at most this many times further from PyTorch than model.int8.onnx


def _write_int8_fp16(out_dir: Path, path8: Path, ref: np.ndarray, x: np.ndarray, rec8: dict[str, Any],
                     batch: int | None, threads: int | None, report: dict[str, Any], say) -> None:
    """model.int8.fp16.onnx: the INT8 model with fp16 float ops (for strongly typed TensorRT), validated."""
    from .onnx_export import validate_onnx
    from .quantize import int8_fp16

    name = ONNX_FILE["int8-fp16"]
    say(f"converting the INT8 model's float ops to fp16 -> {name}")
    final, tmp = out_dir / name, out_dir / f".{name}.pending"
    atol = max(INT8_FP16_SLACK * rec8["max_abs_diff"], 1e-6)
    try:
        int8_fp16(path8, tmp)
        rec = validate_onnx(tmp, ref, x, stage="int8-fp16", atol=atol, batch=batch, threads=threads)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    rec["tolerance"] = f"{INT8_FP16_SLACK:g} x the int8 model's max|diff| vs PyTorch"
    rec["io_types"] = "float32 (keep_io_types=True), Q/DQ and compute float16, opset 19"
    report["validations"].append(rec)
    report["artifacts"]["int8_fp16"] = _artifact(final)
