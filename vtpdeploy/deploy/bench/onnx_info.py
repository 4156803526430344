"""What an ONNX file declares, read without loading its weights: input shape and parameter count."""

from __future__ import annotations

from pathlib import Path

from ...console import one_line
from ...errors import VtpError


def onnx_input_shape(path: Path) -> tuple:
    """The first graph input's dims: ints, or the symbolic name (`?` when unnamed)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise VtpError(f"{path}: not a readable ONNX model ({one_line(exc, 160)})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise VtpError(f"{path}: ONNX model has no inputs")
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def onnx_param_count(path: Path) -> int | None:
    """Elements in the initializers (None when the file is unreadable)."""
    import numpy as np
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))
