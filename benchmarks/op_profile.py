"""Where ONNX Runtime (CPU) spends its time, per operator type, from ORT's own profiler.

    prof = ort_op_profile("unpruned.onnx", batch=1, threads=4)
    print(op_profile_table({"unpruned": prof, "pruned": ort_op_profile("model.onnx", threads=4)}))

ORT writes a chrome-trace JSON list: one `"cat": "Node"` event per executed kernel, named
`<node name>_kernel_time`, with `dur` in µs and `args.op_name` (the op type after ORT's graph
optimizations, so fused types such as FusedMatMul or SkipLayerNormalization appear, not the exported
ones), and one `"cat": "Session"` event named `model_run` per inference, which delimits the runs.
Profiling adds a little per-node overhead, so these times sit slightly above a plain benchmark's.

Op types mix roles: ORT runs some linear layers as `MatMul` (+ Add) and others as `Gemm`, and the
attention products QKᵀ and attn·V are `MatMul` / `FusedMatMul` too. `roles` therefore splits kernel
time by what a node does, read from the shapes ORT records: a matmul-type node with two activation
inputs of rank ≥ 3 is an attention product, one with a single activation input (the weight is an
initializer, which ORT does not list) is a linear layer. MACs come from the same shapes
(output elements × the inner dim), so ms per G-MAC shows whether a role scales with its MACs.
"""

from __future__ import annotations

import bisect
import json
import tempfile
from pathlib import Path

import numpy as np

from vtpdeploy.errors import VtpError

KERNEL_SUFFIX = "_kernel_time"
ALWAYS_SHOWN = ("Gather", "Split", "Transpose")  # the ops pruning adds or removes; shown even when small
MATMUL_OPS = ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat", "QGemm")
ROLES = ("linear", "attention", "other")


def ort_op_profile(onnx_path: str | Path, *, batch: int = 1, threads: int | None = None, iters: int = 20,
                   warmup: int = 5, seed: int = 0) -> dict:
    """Mean per-run kernel time per op type over `iters` profiled runs after `warmup` untimed ones (ORT CPU EP)."""
    from vtpdeploy.deploy.runners.ort_runner import OrtRunner

    if iters < 1 or warmup < 0 or batch < 1:
        raise VtpError(f"op profile needs iters >= 1, warmup >= 0 and batch >= 1 (got {iters}, {warmup}, {batch})")
    with tempfile.TemporaryDirectory(prefix="vtp_ort_profile_") as tmp:
        runner = OrtRunner(onnx_path, threads=threads, profile_prefix=str(Path(tmp) / "ort_profile"))
        x = np.random.default_rng(seed).standard_normal(_input_shape(runner, batch, onnx_path)).astype(np.float32)
        for _ in range(warmup + iters):
            runner.infer(x)
        with open(runner.end_profiling()) as fh:
            events = json.load(fh)
    ops, roles = _per_op(events, iters, onnx_path)
    total = sum(op["ms"] for op in ops.values())
    for op in ops.values():
        op["share"] = op["ms"] / total if total > 0 else 0.0
    return {"model": str(onnx_path), "batch": batch, "threads": threads, "iters": iters, "total_ms": total,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["ms"])), "roles": roles}


def _input_shape(runner, batch: int, onnx_path) -> tuple[int, ...]:
    shape = runner.input_shape()
    if not shape:
        raise VtpError(f"{onnx_path}: the model declares no input shape")
    if isinstance(shape[0], int) and shape[0] != batch:
        raise VtpError(f"{onnx_path}: the input has a fixed batch of {shape[0]}, asked to profile batch {batch}")
    symbolic = [f"{d} (dim {i})" for i, d in enumerate(shape[1:], 1) if not isinstance(d, int)]
    if symbolic:
        raise VtpError(f"{onnx_path}: symbolic input dims besides the batch: {', '.join(symbolic)}; "
                       f"only dim 0 may be dynamic (export with fixed image size)")
    return (batch, *(int(d) for d in shape[1:]))


def _shapes(args: dict, key: str) -> list[list[int]]:
    return [list(next(iter(d.values()))) for d in args.get(key, []) if isinstance(d, dict) and d]


def node_role(op: str, args: dict) -> tuple[str, int]:
    """(role, MACs) of one kernel event: `attention` (two activation inputs of rank >= 3), `linear`
    (a matmul-type op otherwise) or `other` (MACs 0)."""
    if op not in MATMUL_OPS:
        return "other", 0
    ins, outs = _shapes(args, "input_type_shape"), _shapes(args, "output_type_shape")
    macs = int(np.prod(outs[0])) * int(ins[0][-1]) if ins and ins[0] and outs else 0
    return ("attention" if sum(len(s) >= 3 for s in ins) >= 2 else "linear"), macs


def _per_op(events: list[dict], iters: int, onnx_path) -> tuple[dict[str, dict], dict[str, dict]]:
    """({op_type: {ms, nodes}}, {role: {ms, nodes, gmacs}}): kernel time summed over the last `iters`
    model_run windows, / iters."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) < iters:
        # ORT stops recording once its event buffer is full, so a long profile can lose whole runs
        raise VtpError(f"{onnx_path}: ORT's profile holds {len(runs)} model runs, fewer than the {iters} profiled")
    runs = runs[-iters:]
    starts = [a for a, _ in runs]
    by_op: dict[str, dict] = {}
    by_role = {r: _tally() for r in ROLES}  # every role listed, even with no node
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > runs[i][1]:
            continue  # a warm-up run's kernel
        args = e.get("args", {})
        op = args.get("op_name", "?")
        # node_index as well: ORT-inserted nodes (e.g. layout reorders) need not have unique names
        node, dur = (e["name"], args.get("node_index")), float(e["dur"])
        role, macs = node_role(op, args)
        _add(by_op.setdefault(op, _tally()), node, dur)
        _add(by_role[role], node, dur, macs)
    if not by_op:
        raise VtpError(f"{onnx_path}: ORT's profile has no kernel events in the profiled runs")
    ops = {op: {"ms": t["us"] / iters / 1000.0, "nodes": len(t["nodes"])} for op, t in by_op.items()}
    roles = {r: {"ms": t["us"] / iters / 1000.0, "nodes": len(t["nodes"]), "gmacs": t["macs"] / iters / 1e9}
             for r, t in by_role.items()}
    return ops, roles


def _tally() -> dict:
    return {"us": 0.0, "nodes": set(), "macs": 0}


def _add(tally: dict, node: tuple, dur_us: float, macs: int = 0) -> None:
    tally["us"] += dur_us
    tally["nodes"].add(node)
    tally["macs"] += macs


def role_table(profiles: dict[str, dict]) -> str:
    """Markdown table, one column per labelled profile: ms per role, with G-MACs and ms per G-MAC."""
    labels = [str(label).replace("|", "\\|") for label in profiles]
    lines = ["| role | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for role in ROLES:
        cells = []
        for p in profiles.values():
            r = p["roles"][role]
            per = f", {r['ms'] / r['gmacs']:.1f} ms/G" if r["gmacs"] > 0 else ""
            cells.append(f"{r['ms']:.1f} ms ({r['gmacs']:.2f} G MACs{per})" if role != "other" else f"{r['ms']:.1f} ms")
        lines.append(f"| {ROLE_NAMES[role]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ROLE_NAMES = {"linear": "linear layers (qkv, proj, fc1, fc2, head)", "attention": "attention products (QKᵀ, attn·V)",
              "other": "everything else"}


def op_profile_table(profiles: dict[str, dict], top: int = 10) -> str:
    """Markdown table, one column per labelled profile: "ms (share %)" for each profile's top `top` op types
    (plus Gather, Split, Transpose wherever they occur), `—` where a profile lacks the op, and a total row."""
    shown: set[str] = set()
    for prof in profiles.values():
        shown.update(list(prof["ops"])[:top])  # ops are sorted by ms, descending
        shown.update(op for op in ALWAYS_SHOWN if op in prof["ops"])

    def peak(op: str) -> float:
        return max(p["ops"][op]["ms"] for p in profiles.values() if op in p["ops"])

    labels = [str(label).replace("|", "\\|") for label in profiles]
    lines = ["| op | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for op in sorted(shown, key=lambda o: (-peak(o), o)):
        cells = [_cell(p["ops"][op]["ms"], p["ops"][op]["share"]) if op in p["ops"] else "—"
                 for p in profiles.values()]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(_cell(p["total_ms"], 1.0) for p in profiles.values()) + " |")
    return "\n".join(lines)


def _cell(ms: float, share: float) -> str:
    return f"{ms:.3f} ({100.0 * share:.1f}%)"
