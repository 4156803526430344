"""Rewrite each block's exported attention as ONNX Runtime's fused `com.microsoft.Attention` op.

The legacy exporter writes a ViT block's attention as qkv MatMul -> Reshape/Transpose/Split/Squeeze
(plus Slice/Pad/Gather for a compact model's pruned, possibly uneven V) -> scaled MatMul -> Softmax ->
MatMul -> Transpose/Reshape (-> Gather) -> proj. `fuse_attention` replaces all of it, from the qkv
projection's input to proj's input, by one `Attention` node (input projection, bias, per-head
softmax(QK^T) V, merged heads), which accepts a V width different from Q/K (`qkv_hidden_sizes`):

- Matching starts at each Softmax and walks back through constant scalar Mul/Div (the scale) to the
  two score MatMuls, and forward through layout ops to proj. Which qkv column feeds which (head, dim) of
  Q, K and V, and which output column reaches proj, is *measured*, not assumed: the layout ops are run
  on probe tensors whose values name their column and their token, so any Reshape/Transpose/Split/
  Slice/Pad/Gather sequence the exporter emits is read exactly, and anything else leaves the block as is.
- Uneven V widths: V keeps the graph's padded per-head width; padded columns get zero weights, and the
  Gather that dropped them before proj becomes a row re-indexing of proj's weight (zero rows for pads).

The result runs on ONNX Runtime only. TensorRT's ONNX parser rejects `com.microsoft` ops: never use a
rewritten model to build an engine. `rewrite_attention_file` validates the rewrite numerically (ORT,
rewritten vs original, on random inputs) before the file is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...console import one_line
from ...errors import VtpError
from ...fileio import atomic_path
from ...prune.numerics import assert_close

CONTRIB_DOMAIN = "com.microsoft"
FUSED_OP = "Attention"
# Ops that only move values: the probe tells where each value goes.
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Split", "Squeeze", "Unsqueeze", "Slice", "Gather", "Pad",
                        "Identity", "Flatten", "Concat"})
_SCALE_OPS = ("Mul", "Div")


@dataclass
class AttentionSite:
    """One block's attention, as matched and measured in the graph."""

    softmax: str
    x: str  # input of the qkv projection, [B, N, C_in] (or [B*N, C_in]: then x3 is the [B, N, C_in] it flattens)
    qkv: str  # output of the qkv projection, [B, N, F] or [B*N, F]
    weight: np.ndarray  # [C_in, F]
    bias: np.ndarray | None  # [F]
    q: str  # Q before scaling, [B, H, N, d]
    k: str  # K^T before scaling, [B, H, d, N]
    v: str  # V, [B, H, N, dv]
    scores_out: str  # softmax(QK^T) V, [B, H, N, dv]
    out: str  # what proj reads, [B, N, C_out] or [B*N, C_out]
    scale_factors: list[tuple[str, bool]]  # (static tensor, divides) multiplied into the scores
    scale: float = 1.0
    num_heads: int = 0
    q_cols: np.ndarray | None = None  # [H, d] qkv column of each Q entry
    k_cols: np.ndarray | None = None  # [H, d]
    v_cols: np.ndarray | None = None  # [H, dv], -1 = padding (zero)
    out_map: np.ndarray | None = None  # [C_out] index into the merged [H * dv] attention output
    x3: str = ""
    out_flat: bool = False


@dataclass
class FuseReport:
    """How many attention blocks were found and rewritten, and why any was left alone."""

    found: int = 0
    rewritten: int = 0
    skipped: list[str] = field(default_factory=list)
    v_widths: list[list[int]] = field(default_factory=list)  # kept V dims per head, per rewritten block

    def to_dict(self) -> dict[str, Any]:
        return {"found": self.found, "rewritten": self.rewritten, "skipped": list(self.skipped),
                "op": f"{CONTRIB_DOMAIN}.{FUSED_OP}", "v_widths": self.v_widths}


class _Graph:
    """Producer/consumer maps and constant lookup over an onnx GraphProto."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in g.initializer}
        self.outputs = {o.name for o in g.output}
        self._np = numpy_helper

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _is_static(g: _Graph, name: str, depth: int = 32) -> bool:
    """True when `name` depends on no input data, only on constants and tensor shapes."""
    if name in g.inits:
        return True
    node = g.producer.get(name)
    if node is None or depth == 0:
        return False  # a graph input
    if node.op_type in ("Constant", "Shape"):
        return True
    return all(_is_static(g, i, depth - 1) for i in node.input if i)


def _strip_scale(g: _Graph, name: str, factors: list[tuple[str, bool]]) -> str:
    """Walk back through Mul/Div by a static tensor (the exporter's scale: a constant, or computed from a
    shape); append (tensor, divides) to `factors` and return the unscaled tensor."""
    while True:
        node = g.producer.get(name)
        if node is None or node.op_type not in _SCALE_OPS or len(node.input) != 2:
            return name
        static = [_is_static(g, t) for t in node.input]
        if static.count(True) != 1 or (node.op_type == "Div" and static[0]):
            return name
        i = static.index(True)
        factors.append((node.input[i], node.op_type == "Div"))
        name = node.input[1 - i]


def _layout_source(g: _Graph, name: str) -> str | None:
    """The first tensor upstream of `name` that a non-layout op produced (following data inputs)."""
    seen = 0
    while seen < 64:
        node = g.producer.get(name)
        if node is None or node.op_type not in LAYOUT_OPS:
            return name
        if node.op_type == "Concat":
            return None  # several data inputs: not a projection split
        name = node.input[0]
        seen += 1
    return None


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _projection(g: _Graph, name: str) -> tuple[str, np.ndarray, np.ndarray | None] | None:
    """(input, W [C_in, F], b [F] or None) when `name` = input @ W (+ b) with constant W and b: a MatMul
    (+ Add), or a Gemm (what onnxsim makes of them, on a [B*N, C_in] input)."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Gemm":
        a = _attrs(node)
        w, c = g.const(node.input[1]), g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if a.get("transA", 0) or w is None or w.ndim != 2 or (len(node.input) > 2 and node.input[2] and c is None):
            return None
        w = (w.T if a.get("transB", 0) else w) * np.float32(a.get("alpha", 1.0))
        if c is not None:
            if c.size not in (1, w.shape[1]):
                return None
            c = np.broadcast_to(c.reshape(-1), (w.shape[1],)) * np.float32(a.get("beta", 1.0))
        return node.input[0], np.ascontiguousarray(w, dtype=np.float32), c
    bias = None
    if node is not None and node.op_type == "Add":
        consts = [g.const(t) for t in node.input]
        if len(node.input) != 2 or sum(c is not None for c in consts) != 1:
            return None
        j = 0 if consts[0] is not None else 1
        bias, name = consts[j].reshape(-1), node.input[1 - j]
        node = g.producer.get(name)
        if node is None or len(g.consumers.get(name, [])) != 1:
            return None
    if node is None or node.op_type != "MatMul":
        return None
    w = g.const(node.input[1])
    if w is None or w.ndim != 2 or (bias is not None and bias.shape[0] != w.shape[1]):
        return None
    return node.input[0], w, bias


def _forward_layout(g: _Graph, name: str) -> str:
    """Follow single-consumer layout ops downstream of `name`; return the last tensor of the chain."""
    while True:
        node = g.only_consumer(name)
        if node is None or node.op_type not in LAYOUT_OPS or node.op_type == "Concat" or node.input[0] != name:
            return name
        name = node.output[0]


def find_sites(model) -> tuple[list[AttentionSite], list[str]]:
    """Every Softmax-centred attention whose Q, K and V come from one constant-weight projection."""
    g = _Graph(model)
    sites, skipped = [], []
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        label = node.name or node.output[0]
        factors: list[tuple[str, bool]] = []
        scores = _strip_scale(g, node.input[0], factors)
        mm1 = g.producer.get(scores)
        mm2 = g.only_consumer(node.output[0])
        if mm1 is None or mm1.op_type != "MatMul" or mm2 is None or mm2.op_type != "MatMul" \
                or mm2.input[0] != node.output[0]:
            skipped.append(f"{label}: not MatMul -> Softmax -> MatMul")
            continue
        q = _strip_scale(g, mm1.input[0], factors)
        k = _strip_scale(g, mm1.input[1], factors)
        v = mm2.input[1]
        roots = {_layout_source(g, t) for t in (q, k, v)}
        if len(roots) != 1 or None in roots:
            skipped.append(f"{label}: Q, K and V do not come from one projection through layout ops")
            continue
        qkv = roots.pop()
        proj = _projection(g, qkv)
        if proj is None:
            skipped.append(f"{label}: the qkv projection is not a MatMul with constant weights (+ constant bias)")
            continue
        out = _forward_layout(g, mm2.output[0])
        if out in g.outputs:
            skipped.append(f"{label}: attention output is a graph output")
            continue
        sites.append(AttentionSite(softmax=label, x=proj[0], qkv=qkv, weight=proj[1], bias=proj[2], q=q, k=k, v=v,
                                   scores_out=mm2.output[0], out=out, scale_factors=factors))
    return sites, skipped


def _probe_model(model, cuts: list[str], wanted: list[str]):
    """A copy of `model` in which each tensor in `cuts` is a graph input and `wanted` are outputs."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    cut = set(cuts)
    for n in m.graph.node:
        for i, o in enumerate(n.output):
            if o in cut:
                n.output[i] = f"{o}__probe_cut"
    m.graph.input.extend(onnx.helper.make_tensor_value_info(c, onnx.TensorProto.FLOAT, None) for c in cuts)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(w, onnx.TensorProto.FLOAT, None) for w in wanted)
    return m


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _model_inputs(model) -> dict[str, np.ndarray]:
    """Zero feeds for the model's real inputs (symbolic dims: 1)."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = np.zeros(dims, dtype=dtype)
    return feeds


def _measure_layouts(model, sites: list[AttentionSite], skipped: list[str]) -> list[AttentionSite]:
    """Fill in each site's column maps by running its layout ops on column- and token-coded probes."""
    if not sites:
        return sites
    feeds = _model_inputs(model)
    g = _Graph(model)
    for s in sites:  # a flattened [B*N, C_in] projection input: the [B, N, C_in] tensor it was reshaped from
        flat = g.producer.get(s.x)
        s.x3 = flat.input[0] if flat is not None and flat.op_type == "Reshape" else s.x
    shape_names = list(dict.fromkeys(t for s in sites for t in (s.qkv, s.scores_out, s.x, s.x3)))
    factor_names = sorted({t for s in sites for t, _ in s.scale_factors})
    wanted = shape_names + factor_names
    values = dict(zip(wanted, _session(_probe_model(model, [], wanted)).run(wanted, feeds)))
    shapes = {t: values[t].shape for t in shape_names}
    kept = []
    for s in sites:
        if len(shapes[s.scores_out]) != 4:
            skipped.append(f"{s.softmax}: the heads are not [B, H, N, d] but {shapes[s.scores_out]}")
            continue
        B, _, N, _ = shapes[s.scores_out]
        c_in, f = s.weight.shape
        if shapes[s.x3] != (B, N, c_in) or shapes[s.qkv] not in ((B, N, f), (B * N, f)) \
                or shapes[s.x] not in ((B, N, c_in), (B * N, c_in)):
            skipped.append(f"{s.softmax}: qkv input {shapes[s.x3]} / output {shapes[s.qkv]} is not "
                           f"[B, N, C] / [B(*)N, F] with B, N = {B}, {N}")
            continue
        if any(values[t].size != 1 for t, _ in s.scale_factors):
            skipped.append(f"{s.softmax}: the scores are scaled by a tensor, not a scalar")
            continue
        for t, divides in s.scale_factors:
            v = float(values[t].reshape(()))
            s.scale = s.scale / v if divides else s.scale * v
        kept.append(s)
    sites = kept
    if not sites:
        return sites
    cuts = [t for s in sites for t in (s.qkv, s.scores_out)]
    wanted = [t for s in sites for t in (s.q, s.k, s.v, s.out)]
    sess = _session(_probe_model(model, cuts, wanted))
    coded = {}
    for what in ("col", "tok"):
        f = dict(feeds)
        for s in sites:
            qkv_shape = shapes[s.qkv]
            f[s.qkv] = _code(what, qkv_shape, token_axes=tuple(range(len(qkv_shape) - 1)),
                             col_axes=(len(qkv_shape) - 1,))
            Bo, H, No, dv = shapes[s.scores_out]
            f[s.scores_out] = _code(what, (Bo, H, No, dv), token_axes=(0, 2), col_axes=(1, 3))
        coded[what] = dict(zip(wanted, sess.run(wanted, f)))
    good = []
    for s in sites:
        reason = _read_maps(s, shapes, coded["col"], coded["tok"])
        if reason is None:
            good.append(s)
        else:
            skipped.append(f"{s.softmax}: {reason}")
    return good


def _code(what: str, shape: tuple[int, ...], token_axes: tuple[int, ...], col_axes: tuple[int, ...]) -> np.ndarray:
    """1 + the flat column index (what='col') or 1 + the flat token index b*N + n (what='tok')."""
    axes = token_axes if what == "tok" else col_axes
    sizes = [shape[a] for a in axes]
    if int(np.prod(sizes)) >= 2 ** 24:
        raise VtpError(f"attention probe: {int(np.prod(sizes))} positions cannot be coded exactly in float32")
    flat = np.arange(int(np.prod(sizes)), dtype=np.float32).reshape(sizes) + 1.0
    view = [1] * len(shape)
    for a, n in zip(axes, sizes):
        view[a] = n
    return np.ascontiguousarray(np.broadcast_to(flat.reshape(view), shape), dtype=np.float32)


def _read_maps(s: AttentionSite, shapes: dict, col: dict, tok: dict) -> str | None:
    B, H, N, dv = shapes[s.scores_out]
    F = shapes[s.qkv][-1]
    expect_tok = (np.arange(B * N, dtype=np.float32) + 1.0).reshape(B, N)
    q, k, v = col[s.q], col[s.k], col[s.v]
    if q.shape[:3] != (B, H, N) or k.shape[:2] != (B, H) or k.shape[3] != N or v.shape != (B, H, N, dv) \
            or k.shape[2] != q.shape[3]:
        return f"unexpected Q/K/V shapes {q.shape}, {k.shape}, {v.shape}"
    tq, tk, tv = tok[s.q], tok[s.k], tok[s.v]
    if not (np.array_equal(tq, np.broadcast_to(expect_tok[:, None, :, None], q.shape))
            and np.array_equal(tk, np.broadcast_to(expect_tok[:, None, None, :], k.shape))):
        return "Q/K mix tokens"
    q_cols, k_cols, v_cols = q[0, :, 0, :] - 1, k[0, :, :, 0] - 1, v[0, :, 0, :] - 1
    if not (np.array_equal(q, np.broadcast_to(q_cols[None, :, None, :] + 1, q.shape))
            and np.array_equal(k, np.broadcast_to(k_cols[None, :, :, None] + 1, k.shape))
            and np.array_equal(v, np.broadcast_to(v_cols[None, :, None, :] + 1, v.shape))):
        return "Q/K/V columns differ across tokens"
    pad = v_cols < 0
    v_tok_ok = np.where(pad[None, :, None, :], tv == 0, tv == expect_tok[:, None, :, None])
    if not v_tok_ok.all() or (q_cols < 0).any() or (k_cols < 0).any():
        return "V mixes tokens, or Q/K have padding"
    used = np.concatenate([q_cols.ravel(), k_cols.ravel(), v_cols[~pad]])
    if used.max() >= F or len(np.unique(used)) != used.size:
        return "Q/K/V columns overlap"
    o, to = col[s.out], tok[s.out]
    if o.shape[:-1] not in ((B, N), (B * N,)):
        return f"unexpected attention output shape {o.shape}"
    s.out_flat = o.ndim == 2
    o, to = o.reshape(B, N, -1), to.reshape(B, N, -1)
    out_map = o[0, 0, :] - 1
    if not (np.array_equal(o, np.broadcast_to(out_map[None, None, :] + 1, o.shape))
            and np.array_equal(to, np.broadcast_to(expect_tok[:, :, None], o.shape))):
        return "the merged heads mix tokens or columns"
    if (out_map < 0).any() or pad.ravel()[out_map.astype(np.int64)].any():
        return "proj reads padded V columns"
    s.num_heads = H
    s.q_cols, s.k_cols = q_cols.astype(np.int64), k_cols.astype(np.int64)
    s.v_cols, s.out_map = v_cols.astype(np.int64), out_map.astype(np.int64)
    return None


def _proj_weight(g: _Graph, node) -> np.ndarray | None:
    """W [C_out, D] when `node` computes its input 0 @ W (+ bias): a MatMul or a Gemm with constant weights."""
    if node.op_type == "MatMul":
        w = g.const(node.input[1])
        return w if w is not None and w.ndim == 2 and node.input[1] != node.input[0] else None
    if node.op_type == "Gemm":
        a = _attrs(node)
        w = g.const(node.input[1])
        if a.get("transA", 0) or w is None or w.ndim != 2:
            return None
        return w.T if a.get("transB", 0) else w
    return None


def _proj_users(g: _Graph, s: AttentionSite) -> list | None:
    """What reads `s.out`; None when the columns move and a reader is not a constant-weight MatMul/Gemm."""
    users = g.consumers.get(s.out, [])
    if _identity(s):
        return users
    ok = all(u.input[0] == s.out and _proj_weight(g, u) is not None for u in users)
    return users if ok and users else None


def _identity(s: AttentionSite) -> bool:
    return s.out_map.size == s.v_cols.size and np.array_equal(s.out_map, np.arange(s.out_map.size))


def fuse_attention(model) -> tuple[Any, FuseReport]:
    """A copy of `model` with every matched attention block rewritten as one `com.microsoft.Attention`."""
    import onnx
    from onnx import helper, numpy_helper

    src = model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    report = FuseReport()
    sites, report.skipped = find_sites(model)
    report.found = len(sites) + len(report.skipped)
    sites = _measure_layouts(model, sites, report.skipped)
    g = _Graph(model)
    taken = {t.name for t in model.graph.initializer} | set(g.producer)
    new_nodes: dict[str, list] = {}  # inserted before the node that produced the site's qkv tensor

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    for s in sites:
        users = _proj_users(g, s)
        if users is None:
            report.skipped.append(f"{s.softmax}: merged heads are re-indexed but not read by a constant MatMul/Gemm")
            continue
        w = s.weight
        b = s.bias if s.bias is not None else np.zeros(w.shape[1], w.dtype)
        H, dv = s.v_cols.shape
        pad = s.v_cols < 0
        v_idx = np.where(pad, 0, s.v_cols).ravel()
        w_v = np.where(pad.ravel()[None, :], 0.0, w[:, v_idx]).astype(w.dtype)
        b_v = np.where(pad.ravel(), 0.0, b[v_idx]).astype(w.dtype)
        w_new = np.concatenate([w[:, s.q_cols.ravel()], w[:, s.k_cols.ravel()], w_v], axis=1)
        b_new = np.concatenate([b[s.q_cols.ravel()], b[s.k_cols.ravel()], b_v]).astype(w.dtype)
        stem = s.softmax.rsplit("/", 1)[0] if "/" in s.softmax else s.softmax
        w_name, b_name = fresh(f"{stem}/fused_qkv.weight"), fresh(f"{stem}/fused_qkv.bias")
        out_name = fresh(f"{stem}/Attention_output_0")
        model.graph.initializer.extend([numpy_helper.from_array(w_new, w_name), numpy_helper.from_array(b_new, b_name)])
        qk = int(s.q_cols.size)
        added = [helper.make_node(
            FUSED_OP, [s.x3, w_name, b_name], [out_name], name=fresh(f"{stem}/{FUSED_OP}"), domain=CONTRIB_DOMAIN,
            num_heads=int(H), qkv_hidden_sizes=[qk, qk, int(H * dv)], scale=float(s.scale))]
        if s.out_flat:  # proj reads [B*N, C]: flatten the fused [B, N, H*dv] output the same way
            shape_name = fresh(f"{stem}/fused_flat_shape")
            model.graph.initializer.append(numpy_helper.from_array(np.array([-1, H * dv], np.int64), shape_name))
            flat_name = fresh(f"{stem}/Attention_flat_output_0")
            added.append(helper.make_node("Reshape", [out_name, shape_name], [flat_name], name=fresh(f"{stem}/fused_flat")))
            out_name = flat_name
        new_nodes.setdefault(g.producer[s.qkv].name, []).extend(added)
        for u in users:
            if _identity(s):
                for i, t in enumerate(u.input):
                    if t == s.out:
                        u.input[i] = out_name
                continue
            # fold the dropped padding and any column order into proj's rows
            wp = _proj_weight(g, u)
            rows = np.zeros((H * dv, wp.shape[1]), dtype=wp.dtype)
            rows[s.out_map] = wp
            p_name = fresh(f"{stem}/fused_proj.weight")
            model.graph.initializer.append(numpy_helper.from_array(rows, p_name))
            u.input[0], u.input[1] = out_name, p_name
            if u.op_type == "Gemm":
                for a in u.attribute:
                    if a.name == "transB":
                        a.i = 0
        report.rewritten += 1
        report.v_widths.append([int(n) for n in (~pad).sum(axis=1)])
    if report.rewritten:
        _insert_and_prune(model, new_nodes)
        if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return model, report


def _insert_and_prune(model, new_nodes: dict[str, list]) -> None:
    """Place each fused node after the node it replaces (keeps topological order), then drop dead nodes
    and unused initializers."""
    nodes = []
    for n in model.graph.node:
        nodes.append(n)
        nodes.extend(new_nodes.get(n.name, []))
    live = {o.name for o in model.graph.output}
    kept = []
    for n in reversed(nodes):
        if any(o in live for o in n.output if o):
            kept.append(n)
            live.update(i for i in n.input if i)
    kept.reverse()
    del model.graph.node[:]
    model.graph.node.extend(kept)
    inits = [t for t in model.graph.initializer if t.name in live]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    vi = [v for v in model.graph.value_info if v.name in live]
    del model.graph.value_info[:]
    model.graph.value_info.extend(vi)


def count_fused(model) -> int:
    """Number of `com.microsoft.Attention` nodes in `model` (a ModelProto or a path)."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model))
    return sum(1 for n in model.graph.node if n.op_type == FUSED_OP and n.domain == CONTRIB_DOMAIN)


def _ort_outputs(model_bytes: bytes, x: np.ndarray, batch: int | None, threads: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise VtpError(f"ONNX Runtime cannot load the attention-rewritten model ({one_line(exc, 200)})") \
            from None
    from types import SimpleNamespace

    from .onnx_export import run_batched

    name = sess.get_inputs()[0].name
    return run_batched(SimpleNamespace(infer=lambda chunk: sess.run(None, {name: chunk})[0]), x, batch)


def validate_fused(original, fused, *, atol: float = 1e-4, n: int = 4, seed: int = 0, threads: int = 1) -> float:
    """max |diff| of ORT outputs, `fused` vs `original`, on `n` seeded random inputs.

    Raises NumericalMismatchError past `atol`.
    """
    inits = {t.name for t in original.graph.initializer}
    inp = next(i for i in original.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inp.type.tensor_type.shape.dim]
    if any(d == 0 for d in dims[1:]):
        raise VtpError(f"{inp.name}: attention rewrite validation needs fixed non-batch input dims, got {dims}")
    batch = dims[0] or None
    x = np.random.default_rng(seed).standard_normal((max(n, batch or 1), *dims[1:]), dtype=np.float32)
    ref = _ort_outputs(original.SerializeToString(), x, batch, threads)
    out = _ort_outputs(fused.SerializeToString(), x, batch, threads)
    return assert_close(ref, out, atol, "attention rewrite (com.microsoft.Attention) on ORT vs the original ONNX")


def rewrite_attention_file(src: str | Path, dst: str | Path, *, atol: float = 1e-4, n: int = 4, seed: int = 0,
                           threads: int = 1, require_all: bool = True) -> dict[str, Any]:
    """Fuse `src`'s attention blocks, validate on ORT and write `dst` atomically; returns the report.

    `require_all`: a VtpError when any Softmax-attention was left unfused (nothing is written).
    """
    import onnx

    src, dst = Path(src), Path(dst)
    try:
        original = onnx.load(str(src))
    except Exception as exc:
        raise VtpError(f"{src}: not a readable ONNX model ({one_line(exc, 160)})") from None
    fused, report = fuse_attention(original)
    if report.rewritten == 0:
        raise VtpError(f"{src}: no attention block could be fused"
                       + (f" ({report.skipped[0]})" if report.skipped else " (no Softmax)"))
    if require_all and report.skipped:
        raise VtpError(f"{src}: {len(report.skipped)} of {report.found} attention blocks not fused: {report.skipped[0]}")
    diff = validate_fused(original, fused, atol=atol, n=n, seed=seed, threads=threads)
    with atomic_path(dst) as tmp:
        onnx.save(fused, str(tmp))
    return {**report.to_dict(), "max_abs_diff": diff, "atol": atol, "n": n, "path": str(dst)}
