"""ONNX decompositions the legacy exporter lacks at the opsets TensorRT reads (<= 17), registered only while
`onnx_export` exports and removed after (the exporter's registry is process-wide; timm is never patched).

- `aten::rms_norm` (timm's `RmsNorm`: AIMv2, and any model built with `norm_layer=RmsNorm`): ONNX has
  `RMSNormalization` only from opset 23. Written as x / sqrt(mean(x^2) + eps) * weight, over the trailing
  `normalized_shape` dims, as `torch.nn.functional.rms_norm` computes it (eps None: the input dtype's eps).
- `aten::repeat_interleave` with a negative `dim` (timm's interleaved RoPE layout, e.g. the mixed-RoPE ViTs'
  per-forward frequencies): torch's symbolic adds the rank to `dim` in place, which rewrites the trace's shared
  constant -1 for every other op that reads it (a Gather on axis 3 of a rank-3 tensor, a wrong Expand). The
  dim is made positive in a new constant, then torch's own symbolic runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _rms_norm(g, x, normalized_shape, weight, eps):
    from torch.onnx import symbolic_helper

    dims = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
    axes = [-i for i in range(len(dims), 0, -1)]
    dtype = x.type().dtype() if x.type().scalarType() is not None else torch.float32
    eps = torch.finfo(dtype).eps if symbolic_helper._is_none(eps) else symbolic_helper._get_const(eps, "f", "eps")
    if g.opset < 18:
        mean_square = g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1)
    else:
        mean_square = g.op("ReduceMean", g.op("Mul", x, x), g.op("Constant", value_t=torch.tensor(axes)),
                           keepdims_i=1)
    rms = g.op("Sqrt", g.op("Add", mean_square, g.op("Constant", value_t=torch.tensor(eps, dtype=dtype))))
    y = g.op("Div", x, rms)
    return y if symbolic_helper._is_none(weight) else g.op("Mul", y, weight)


def _repeat_interleave(g, x, repeats, dim=None, output_size=None):
    from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset13

    rank = symbolic_helper._get_tensor_rank(x)
    if not symbolic_helper._is_none(dim) and rank is not None:
        axis = symbolic_helper._maybe_get_const(dim, "i")
        if isinstance(axis, int) and axis < 0:
            dim = g.op("Constant", value_t=torch.tensor(axis + rank))
    torch_symbolic = symbolic_opset13 if g.opset >= 13 else symbolic_opset9
    return torch_symbolic.repeat_interleave(g, x, repeats, dim, output_size)


SYMBOLICS = {"aten::rms_norm": _rms_norm, "aten::repeat_interleave": _repeat_interleave}


@contextmanager
def exporter_symbolics(opset: int) -> Iterator[None]:
    """Register `SYMBOLICS` at `opset` for the legacy exporter, for this block only: a symbolic registered at
    the export's own opset takes precedence over torch's. One a caller registered there is left as it is."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    try:
        from torch.onnx._internal.torchscript_exporter import registration
    except ImportError:  # torch < 2.9
        from torch.onnx._internal import registration

    def ours(name: str) -> bool:
        group = registration.registry.get_function_group(name)
        return group is None or not group._functions.overridden(opset)

    added = [name for name in SYMBOLICS if ours(name)]
    for name in added:
        register_custom_op_symbolic(name, SYMBOLICS[name], opset)
    try:
        yield
    finally:
        for name in added:
            unregister_custom_op_symbolic(name, opset)
