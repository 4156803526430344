"""FP32 ONNX -> FP16 ONNX with the converter that ships inside onnxruntime.

Choice: weights and all compute are float16, but the graph keeps float32 `input`/`logits`
(`keep_io_types=True`; a Cast sits at each end). Callers feed the same float32 tensors as for the
fp32 model, and the graph is explicitly typed, which is what TensorRT >= 10's strongly-typed mode
(the only mode in TRT 11) wants: it builds the fp16 layers as fp16 without a precision flag.
"""

from __future__ import annotations

from pathlib import Path

from ...console import one_line, quiet
from ...errors import VtpError
from ...fileio import atomic_path


def convert_fp16(src: str | Path, dst: str | Path, *, keep_io_types: bool = True,
                 op_block_list: list[str] | None = None) -> Path:
    """Write the float16 version of `src` to `dst` atomically (unchecked; validate it afterwards)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    try:
        with quiet():
            kwargs = {"keep_io_types": keep_io_types, "disable_shape_infer": False}
            if op_block_list is not None:
                kwargs["op_block_list"] = op_block_list
            half = convert_float_to_float16(model, **kwargs)
    except Exception as exc:
        raise VtpError(f"FP16 conversion of {src} failed: {one_line(exc, 200)}") from None
    toposort(half.graph)  # the converter appends its input Casts at the end of the node list
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        onnx.save(half, str(tmp))
    return dst


def toposort(graph) -> None:
    """Reorder `graph.node` in place so that every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise VtpError(f"graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for new, old in zip(copies, ordered):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(copies)
