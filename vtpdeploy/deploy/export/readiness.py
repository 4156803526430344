"""TensorRT readiness: will this ONNX (and these head dims / widths) build well on TRT 8.5 ... 11?

The 8.5 target describes the TensorRT 8.5 parser only; JetPack 5 (TensorRT 8.5, Python 3.8) is not a
supported vtpdeploy device (see docs/docker.md).

A static, hand-kept table (from the onnx-tensorrt operator docs and TRT release notes) covers the ops
timm ViTs export to. Findings are warnings; `strict` turns any warning into `ReadinessError`
(exit code 1: "checks failed", distinct from 2: "bad input").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import VtpError

TARGETS = ("8.5", "8.6", "10", "11")
# Highest ONNX opset each TensorRT ONNX parser accepts (approximate, per release notes).
MAX_OPSET = {"8.5": 17, "8.6": 17, "10": 20, "11": 22}
# Ops seen in exported ViTs: (first ONNX opset defining the op as used, first TRT target parsing it natively).
OP_SUPPORT: dict[str, tuple[int, str]] = {
    "Add": (1, "8.5"), "Sub": (1, "8.5"), "Mul": (1, "8.5"), "Div": (1, "8.5"), "Pow": (1, "8.5"),
    "Sqrt": (1, "8.5"), "Erf": (9, "8.5"), "Tanh": (1, "8.5"), "Sigmoid": (1, "8.5"), "Relu": (1, "8.5"),
    "Conv": (1, "8.5"), "MatMul": (1, "8.5"), "Gemm": (1, "8.5"), "Softmax": (13, "8.5"),
    "ReduceMean": (1, "8.5"), "Reshape": (5, "8.5"), "Transpose": (1, "8.5"), "Flatten": (1, "8.5"),
    "Concat": (1, "8.5"), "Slice": (10, "8.5"), "Split": (13, "8.5"), "Squeeze": (13, "8.5"),
    "Unsqueeze": (13, "8.5"), "Gather": (1, "8.5"), "Shape": (1, "8.5"), "Expand": (8, "8.5"),
    "Where": (9, "8.5"), "Equal": (11, "8.5"), "ConstantOfShape": (9, "8.5"), "Cast": (1, "8.5"),
    "Identity": (1, "8.5"), "Constant": (1, "8.5"), "Pad": (11, "8.5"), "Range": (11, "8.5"),
    "Less": (9, "8.5"), "Greater": (9, "8.5"), "Not": (1, "8.5"), "Tile": (6, "8.5"), "Max": (8, "8.5"),
    "Min": (8, "8.5"), "Neg": (1, "8.5"), "Clip": (11, "8.5"), "GlobalAveragePool": (1, "8.5"),
    "QuantizeLinear": (13, "8.5"), "DequantizeLinear": (13, "8.5"),
    "MaxPool": (1, "8.5"),  # hybrid CNN stems
    # Weight-standardised convs of hybrid ResNet stems (timm StdConv2d); 8.5's parser maps it to the
    # InstanceNormalization_TRT plugin, 8.6 added the native INormalizationLayer path (default from 10).
    "InstanceNormalization": (6, "8.6"),
    "LayerNormalization": (17, "8.6"),  # native INormalizationLayer from TRT 8.6; 8.5's parser lacks it
    "Gelu": (20, "10"),
    "GroupNormalization": (18, "8.6"),  # native from TRT 8.6 (8.6 release notes); needs opset 18, so 10+ parses it
}
# Targets whose builder is always strongly typed: precision comes from the ONNX's types, no FP16/INT8 flags.
STRONGLY_TYPED_TARGETS = ("11",)
FMHA_FP16 = "head dim % 8 == 0 and 16 <= head dim <= 256"
FMHA_INT8 = "head dim in {16, 32, 64} and sequence <= 512"


class ReadinessError(VtpError):
    """`--strict` and the readiness report has warnings."""

    exit_code = 1


def _tv(target: str) -> tuple[int, ...]:
    return tuple(int(p) for p in target.split("."))


def model_widths(model) -> dict[str, Any]:
    """Attention head dims, sequence length and Linear widths of a (compact or timm) ViT."""
    from torch import nn

    from ...prune.sites import read_dims

    dims = read_dims(model)
    blocks = [{"name": f"blocks.{i}.attn", "num_heads": b.num_heads, "qk_head_dim": max(b.qk_dims),
               "v_head_dim": max(b.v_dims), **({"v_dims": b.v_dims} if b.compact else {})}
              for i, b in enumerate(dims.blocks) if "attn" not in b.removed_sublayers]  # removed: no attention
    linears = [{"name": name, "in": int(mod.in_features), "out": int(mod.out_features)}
               for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and mod.weight.numel()]
    return {"attention": blocks, "linear": linears, "seq_len": dims.tokens}


def _onnx_facts(path: str | Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    ops = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")})
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    return {"opset": opset, "ops": ops, "custom_ops": custom, "io_shapes": shapes}


def _mha_checks(widths: dict[str, Any], precisions: list[str]) -> tuple[list[dict], list[str]]:
    rows, warnings = [], []
    seq = widths.get("seq_len")
    for b in widths.get("attention", []):
        dims = sorted({b["qk_head_dim"], b["v_head_dim"]})
        fp16_ok = all(d % 8 == 0 and 16 <= d <= 256 for d in dims)
        int8_ok = all(d in (16, 32, 64) for d in dims) and (seq is None or seq <= 512)
        row = {**b, "seq_len": seq, "fused_mha_fp16": fp16_ok, "fused_mha_int8": int8_ok}
        rows.append(row)
        if "fp16" in precisions and not fp16_ok:
            warnings.append(f"{b['name']}: head dims {dims} miss the FP16 fused-MHA limits ({FMHA_FP16}); "
                            "TensorRT falls back to unfused attention")
        if "int8" in precisions and not int8_ok:
            warnings.append(f"{b['name']}: head dims {dims}, sequence {seq} miss the INT8 fused-MHA limits "
                            f"({FMHA_INT8}); TensorRT falls back to unfused attention")
        if b.get("v_dims") and len(set(b["v_dims"])) > 1:
            warnings.append(f"{b['name']}: uneven V dims {b['v_dims']} are padded to {b['v_head_dim']} per head "
                            "(gather + pad ops around attention)")
    return rows, warnings


def check_trt_readiness(onnx_path: str | Path, model=None, widths: dict[str, Any] | None = None, *,
                        targets: tuple[str, ...] | list[str] = TARGETS, precisions: list[str] | None = None,
                        int8_path: str | Path | None = None,
                        int8_fp16_path: str | Path | None = None) -> dict[str, Any]:
    """The trt_report.json content for `onnx_path` (fp32 ONNX) on each TensorRT `targets` version.

    `int8_path` / `int8_fp16_path`: the INT8 Q/DQ model and its fp16-float twin (model.int8.fp16.onnx), if any.
    Head dims and widths come from `model` (via `model_widths`) or a ready `widths` dict
    {"attention": [{name, num_heads, qk_head_dim, v_head_dim}], "linear": [{name, in, out}], "seq_len"}.
    """
    for t in targets:
        if t not in MAX_OPSET:
            raise VtpError(f"unknown TensorRT target {t!r}; choose from {', '.join(TARGETS)}")
    precisions = list(precisions or ["fp16", "int8"])
    facts = _onnx_facts(onnx_path)
    if widths is None and model is not None:
        widths = model_widths(model)
    widths = widths or {"attention": [], "linear": [], "seq_len": None}
    warnings: list[str] = []
    per_target = {}
    for t in targets:
        per_target[t] = _target_check(t, facts)
        warnings += [f"TensorRT {t}: {w}" for w in per_target[t]["warnings"]]
    dims = facts["io_shapes"]
    dynamic = any(isinstance(d, str) for shape in dims.values() for d in shape)
    shapes = {"io": dims, "dynamic": dynamic,
              "note": "dynamic batch: the engine needs an optimisation profile (min/opt/max)" if dynamic
              else "static shapes: the engine is built for exactly this batch"}
    mha_rows, mha_warn = _mha_checks(widths, precisions)
    warnings += mha_warn
    odd = [lin for lin in widths.get("linear", []) if lin["in"] % 8 or lin["out"] % 8]
    for lin in odd:
        warnings.append(f"{lin['name']}: Linear {lin['in']}->{lin['out']} is not a multiple of 8 "
                        "(Tensor Core kernels pad it; consider a width multiple of 8 in the prune plan)")
    report: dict[str, Any] = {
        "onnx": str(onnx_path),
        "opset": facts["opset"],
        "ops": facts["ops"],
        "targets": per_target,
        "shapes": shapes,
        "attention": mha_rows,
        "fused_mha_limits": {"fp16": FMHA_FP16, "int8": FMHA_INT8},
        "linear_not_multiple_of_8": odd,
    }
    if int8_path is not None:
        report["qdq"] = _qdq_check(int8_path, int8_fp16_path, targets, per_target, warnings)
    report["warnings"] = warnings
    report["ok"] = not warnings
    return report


def _target_check(t: str, facts: dict) -> dict[str, Any]:
    """One TensorRT version: is the opset parsed, is every op native; its warnings."""
    tw: list[str] = []
    if facts["opset"] is not None and facts["opset"] > MAX_OPSET[t]:
        tw.append(f"opset {facts['opset']} > {MAX_OPSET[t]}, the highest TensorRT {t} parses; export with --opset {MAX_OPSET[t]}")
    ops = {}
    for op in facts["ops"]:
        if op not in OP_SUPPORT:
            ops[op] = "unknown"
            tw.append(f"op {op} is not in the readiness table; check the onnx-tensorrt operator list")
            continue
        min_opset, since = OP_SUPPORT[op]
        ok = _tv(t) >= _tv(since)
        ops[op] = "native" if ok else f"needs TensorRT >= {since}"
        if not ok:
            hint = " (export with --opset 16 to decompose it)" if op == "LayerNormalization" else ""
            tw.append(f"op {op} is not native before TensorRT {since}{hint}")
    for op in facts["custom_ops"]:
        ops[op] = "custom"
        tw.append(f"custom-domain op {op} needs a TensorRT plugin")
    return {"max_opset": MAX_OPSET[t], "opset_ok": facts["opset"] is None or facts["opset"] <= MAX_OPSET[t],
            "ops": ops, "warnings": tw}


def _qdq_check(int8_path, int8_fp16_path, targets, per_target: dict, warnings: list[str]) -> dict[str, Any]:
    """The INT8 model's Q/DQ facts for TensorRT; adds its warnings to `warnings` (and strongly typed targets')."""
    from .quantize import qdq_summary

    q = qdq_summary(int8_path)
    if q["non_int8_qdq"]:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(q["quant_dtypes"].items()) if k != "int8")
        warnings.append(f"INT8: {len(q['non_int8_qdq'])} Q/DQ nodes are not int8 ({kinds}): TensorRT accepts "
                        "only int8 Q/DQ; u8 activations (--int8-activations u8) are for CPU runtimes, "
                        "re-export with --int8-activations s8 for TensorRT")
    if q["nonzero_zero_points"]:
        warnings.append(f"INT8: {len(q['nonzero_zero_points'])} non-zero zero points; TensorRT needs symmetric Q/DQ")
    not_pc = [w["name"] for w in q["weights"] if not w["per_channel"]]
    typed = [t for t in targets if t in STRONGLY_TYPED_TARGETS]
    if typed and int8_fp16_path is None:
        from .trt_versions import onnx_precision

        if onnx_precision(int8_path) == "int8":  # Q/DQ around fp32 float ops
            for t in typed:
                msg = (f"{Path(int8_path).name} keeps its un-quantized ops (attention, softmax, LayerNorm, GELU) in "
                       "fp32 on this strongly typed builder, so INT8 can be slower than FP16: build INT8 from "
                       "model.int8.fp16.onnx (vtpdeploy export --int8 --int8-fp16)")
                per_target[t]["warnings"].append(msg)
                warnings.append(f"TensorRT {t}: {msg}")
    return {"path": str(int8_path), "qdq_nodes": q["qdq_nodes"],
            "nonzero_zero_points": q["nonzero_zero_points"], "per_tensor_weights": not_pc,
            "symmetric": not q["nonzero_zero_points"], "quant_dtypes": q["quant_dtypes"],
            "tensorrt_valid": not q["nonzero_zero_points"] and not q["non_int8_qdq"],
            "int8_fp16_path": str(int8_fp16_path) if int8_fp16_path is not None else None}


def important_warnings(warnings: list[str]) -> list[str]:
    """The warnings that cost speed or validity on every target (fused-MHA fallback, INT8 Q/DQ TensorRT
    rejects): printed in full; the rest are counted and left in trt_report.json."""
    return [w for w in warnings if "fused-MHA" in w or w.startswith("INT8:")]


def enforce(report: dict[str, Any], strict: bool) -> None:
    """Raise ReadinessError (exit 1) when `strict` and the report has warnings."""
    if strict and report["warnings"]:
        n = len(report["warnings"])
        raise ReadinessError(f"TensorRT readiness: {n} warning(s) with --strict; first: {report['warnings'][0]}")
