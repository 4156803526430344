"""`vtpdeploy export`: ONNX (fp32/fp16/int8), validation, TensorRT readiness and engine build."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export(
    source: Optional[str] = typer.Argument(None, help="run dir (exports its compact model) or saved model dir/model"),
    model: Optional[str] = typer.Option(None, "--model", help="timm model name (unpruned baseline, random init)"),
    which: str = typer.Option("model", "--which", help="run dir: model | unpruned"),
    out: Optional[Path] = typer.Option(None, "--out", help="output dir (default: RUN/export, else ./export)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (TensorRT 8.5/8.6 need <= 17)"),
    batch: int = typer.Option(1, "--batch", min=1, help="fixed batch size"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="symbolic batch dim 'batch' (TensorRT "
                                       "profile 1:1:32 unless --batch-range)"),
    batch_range: Optional[str] = typer.Option(
        None, "--batch-range", help="MIN:OPT:MAX, e.g. 1:8:32: a dynamic batch whose TensorRT engine serves "
        "MIN..MAX, tuned for OPT (implies --dynamic-batch)"),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="simplify the graph (kept only if it "
                                  "validates); --no-simplify = --simplifier none"),
    simplifier: str = typer.Option("auto", "--simplifier", help="auto (default: onnxsim when installed, else "
                                   "onnxslim) | onnxslim | onnxsim (the onnxsim extra) | none"),
    fp16: bool = typer.Option(False, "--fp16", help="also write model.fp16.onnx"),
    int8: bool = typer.Option(False, "--int8", help="also write model.int8.onnx (needs --calib)"),
    int8_fp16: bool = typer.Option(
        False, "--int8-fp16", help="also write model.int8.fp16.onnx: INT8 with fp16 float ops (opset 19), what "
        "strongly typed TensorRT builds INT8 from (automatic with --trt on TensorRT 11)"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="calibration dir from `vtpdeploy calib`"),
    calib_method: str = typer.Option("Percentile", "--calib-method", help="MinMax | Percentile | Entropy"),
    int8_activations: str = typer.Option(
        "s8", "--int8-activations",
        help="s8: TensorRT-valid symmetric QDQ (default) | u8: faster on x86 ONNX Runtime/OpenVINO CPU, "
             "NOT accepted by TensorRT"),
    trt: bool = typer.Option(False, "--trt", help="build one TensorRT engine per precision asked: "
                             "model.fp16.engine (--fp16), model.int8.engine (--int8), model.fp32.engine (neither); "
                             "each with a .engine.json record (needs TensorRT)"),
    check: list[str] = typer.Option([], "--check", help="extra checks: trt (writes trt_report.json)"),
    trt_target: list[str] = typer.Option([], "--trt-target", help="readiness targets: 8.5, 8.6, 10, 11 (default all)"),
    strict: bool = typer.Option(False, "--strict", help="readiness warnings fail the export with exit code 1"),
    atol: float = typer.Option(1e-4, "--atol", help="fp32 ONNX vs PyTorch tolerance on logits"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch/ORT/OpenVINO"),
) -> None:
    """Export to ONNX and validate after every transform (exit 2: bad input, 1: --strict checks failed)."""
    range_ = _check_flags(source, model, batch, dynamic_batch, batch_range, check)

    import torch

    from ..deploy.export.config import ExportConfig
    from ..deploy.export.stage import run_export
    from ..deploy.sources import load_source
    from .flags import config_from_flags

    cfg = config_from_flags(ExportConfig, {"check_trt": "--check"}, enabled=True, opset=opset, batch=batch,
                            dynamic_batch=dynamic_batch or range_ is not None, batch_range=range_,
                            simplify=simplify, simplifier=simplifier, fp16=fp16, int8=int8, int8_fp16=int8_fp16,
                            calib_method=calib_method, int8_activations=int8_activations,
                            check_trt="trt" in check, trt=trt, strict=strict, atol=atol)
    if threads:
        torch.set_num_threads(threads)
    src = load_source(source, timm_name=model, which=which)
    out_dir = out or ((src.run_dir / "export") if src.run_dir else Path("export"))
    report = run_export(src, out_dir, cfg, calib_dir=calib, threads=threads, trt_targets=trt_target or None,
                        log=lambda m: typer.echo(m))
    _print_summary(report, out_dir)


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def _check_flags(source: str | None, model: str | None, batch: int, dynamic_batch: bool, batch_range: str | None,
                 check: list[str]) -> tuple[int, int, int] | None:
    """Flag combinations that cannot work, refused before any work; returns the parsed --batch-range."""
    from ..errors import VtpError

    if (dynamic_batch or batch_range) and batch != 1:
        raise VtpError("give either --batch N or --dynamic-batch/--batch-range, not both")
    range_ = _parse_batch_range(batch_range) if batch_range else None
    bad = [c for c in check if c != "trt"]
    if bad:
        raise VtpError(f"--check {bad[0]!r}: only 'trt' is supported")
    if source is not None and model is not None:
        raise VtpError("give a SOURCE or --model, not both")
    return range_


def _parse_batch_range(text: str) -> tuple[int, int, int]:
    from ..errors import VtpError

    try:
        lo, opt, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise VtpError(f"--batch-range {text!r}: expected MIN:OPT:MAX, e.g. 1:8:32") from None
    if not 1 <= lo <= opt <= hi:
        raise VtpError(f"--batch-range {text!r}: needs 1 <= MIN <= OPT <= MAX, e.g. 1:8:32")
    return lo, opt, hi


def _print_summary(report: dict, out_dir: Path) -> None:
    """Every validation, the INT8 held-out check, the engine and readiness, one line each."""
    for v in report["validations"]:
        extra = f" (tol {v['atol']:.0e})" if v["atol"] else ""
        typer.echo(f"  {v['stage']:<16} {v['backend']:<9} max|diff| {v['max_abs_diff']:.3e}{extra}  "
                   f"top-1 agreement {v['top1_agreement']:.4f}  n={v['n']}")
    held = report.get("int8", {}).get("heldout")
    if held:
        typer.echo(f"  int8 held-out ({held['from']}, n={held['n']}): accuracy fp32 {held['accuracy_fp32']:.4f} "
                   f"int8 {held['accuracy_int8']:.4f}, agreement {held['top1_agreement']:.4f}")
    for e in report.get("engines", {}).values():
        typer.echo(f"  TensorRT {e['tensorrt_version']} ({e['builder']}): {e['precision']} engine from "
                   f"{Path(e['onnx']).name} -> {Path(e['engine']).name}, strongly typed {e['strongly_typed']}, "
                   f"flags {'+'.join(e['builder_flags']) or 'none'}, TF32 {'on' if e['tf32'] else 'off'}, "
                   f"shapes {e['shapes']}")
        for note in e["notes"]:
            typer.echo(f"  note: {note}")
    if "trt_report" in report:
        _print_readiness(out_dir / "trt_report.json", report["trt_report"]["warnings"])
    typer.echo(f"wrote {out_dir / 'export.json'}")


def _print_readiness(path: Path, n: int) -> None:
    """The count, then every warning that matters in full (they would otherwise hide behind the count)."""
    import json

    from ..deploy.export.readiness import important_warnings

    typer.echo(f"  TensorRT readiness: {n} warning(s) -> {path}")
    try:
        warnings = json.loads(path.read_text()).get("warnings", [])
    except (OSError, ValueError):
        return
    for w in important_warnings(warnings):
        typer.echo(f"  warning: {w}")
