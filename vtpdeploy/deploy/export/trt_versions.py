"""The one place that knows how TensorRT 8.5 ... 11 differ, for the Python API and for trtexec.

Everything version-dependent in an engine build is decided here, from the installed version (the Python
API's `__version__`, or trtexec's banner), before any TensorRT object is touched:

| | 8.5 | 8.6 | 10.x | 11.x |
|---|---|---|---|---|
| network flag EXPLICIT_BATCH | needed | needed | ignored (not set) | removed |
| network flag STRONGLY_TYPED | - | - | opt-in | removed from use: always strongly typed |
| builder flags FP16 / INT8 | yes | yes | yes (not with strong typing) | removed |
| builder flag TF32 (on by default) | yes | yes | yes | yes |
| trtexec --skipInference | - | yes | yes | yes |
| trtexec --stronglyTyped | - | - | yes | default (not passed) |
| trtexec --fp16 / --int8 | yes | yes | yes | rejected |

Precision on a strongly typed builder comes from the ONNX's own types: model.fp16.onnx for FP16 and
model.int8.fp16.onnx (Q/DQ with fp16 float ops) for INT8. A feature a version lacks is a one-line
`VtpError`, never an AttributeError.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...console import one_line
from ...errors import VtpError

MIN_SUPPORTED = (8, 5)
PRECISIONS = ("fp32", "fp16", "int8")
# What an ONNX file is, as read from its nodes and types (see `onnx_precision`).
ONNX_KINDS = ("fp32", "fp16", "int8", "int8-fp16")
ONNX_FILE = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx",
             "int8-fp16": "model.int8.fp16.onnx"}


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
        if not m:
            raise VtpError(f"cannot read a TensorRT version from {str(text)[:60]!r}")
        return cls(int(m[1]), int(m[2]), int(m[3] or 0), text=str(text).strip())

    def __str__(self) -> str:
        return self.text or f"{self.major}.{self.minor}.{self.patch}"

    def at_least(self, major: int, minor: int = 0) -> bool:
        return (self.major, self.minor) >= (major, minor)

    # ---- what this version has (each line: the release that changed it) -------------------------
    @property
    def always_strongly_typed(self) -> bool:
        return self.major >= 11  # 11.0: every network is strongly typed

    @property
    def has_strongly_typed_flag(self) -> bool:
        return self.major == 10  # added in 10.0; deprecated and ignored in 11 (all networks are)

    @property
    def needs_explicit_batch(self) -> bool:
        return self.major < 10  # 8.x ONNX parser rejects implicit batch; 10.0 made it the only mode; 11 removed it

    @property
    def has_precision_flags(self) -> bool:
        return self.major < 11  # BuilderFlag.FP16/INT8 and trtexec --fp16/--int8/--best removed in 11.0

    @property
    def trtexec_skip_inference(self) -> bool:
        return self.at_least(8, 6)  # trtexec --skipInference: 8.6.0

    @property
    def max_opset(self) -> int:
        return 17 if self.major < 10 else 20 if self.major == 10 else 22

    def check_supported(self) -> None:
        if (self.major, self.minor) < MIN_SUPPORTED:
            raise VtpError(f"TensorRT {self} is older than {MIN_SUPPORTED[0]}.{MIN_SUPPORTED[1]}, the oldest supported "
                           "(JetPack 5.1); upgrade TensorRT")


@dataclass
class BuildPlan:
    """Every version-dependent choice of one engine build, decided before TensorRT is touched."""

    version: str
    precision: str  # what the engine is: fp32 | fp16 | int8
    onnx_kind: str  # what the ONNX is: fp32 | fp16 | int8 | int8-fp16
    strongly_typed: bool
    network_flags: list[str]  # NetworkDefinitionCreationFlag members to set
    builder_flags: list[str]  # BuilderFlag members to set
    cleared_flags: list[str]  # BuilderFlag members to clear
    tf32: bool  # TF32 math allowed for fp32 layers (TensorRT's default: on)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def onnx_for(version: TrtVersion, precision: str) -> str:
    """The ONNX kind (see ONNX_FILE) the export stage should feed the builder for `precision`."""
    if precision not in PRECISIONS:
        raise VtpError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    if precision == "fp16":
        return "fp16" if version.always_strongly_typed else "fp32"
    return "int8-fp16" if version.always_strongly_typed else "int8"


def plan_build(version: TrtVersion, precision: str, onnx_kind: str) -> BuildPlan:
    """Network flags, builder flags and TF32 for building an `onnx_kind` ONNX as a `precision` engine."""
    version.check_supported()
    if precision not in PRECISIONS:
        raise VtpError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if onnx_kind not in ONNX_KINDS:
        raise VtpError(f"unknown ONNX kind {onnx_kind!r}")
    v = f"TensorRT {version}"
    engine_kind = "int8" if onnx_kind.startswith("int8") else onnx_kind
    if precision == "int8" and engine_kind != "int8":
        raise VtpError(f"INT8 needs a Q/DQ ONNX (vtpdeploy export --int8 --calib DIR), not an {onnx_kind} one: "
                       "implicit calibration is not supported (deprecated in 10.1, removed in 11)")
    if precision == "fp32" and onnx_kind != "fp32":
        raise VtpError(f"an {onnx_kind} ONNX cannot be built as an fp32 engine: its precision is in the graph; "
                       f"build it as {engine_kind}")
    if precision == "fp16" and engine_kind == "int8":
        raise VtpError(f"a Q/DQ ({onnx_kind}) ONNX builds an int8 engine, not fp16")
    if onnx_kind == "int8-fp16" and version.major < 10:
        raise VtpError(f"{ONNX_FILE['int8-fp16']} (opset 19, fp16 Q/DQ) needs TensorRT >= 10; {v} builds "
                       f"{ONNX_FILE['int8']}")
    if precision == "fp16" and onnx_kind == "fp32" and not version.has_precision_flags:
        raise VtpError(f"{v} has no FP16 builder flag (removed in 11; strongly typed): build from "
                       f"{ONNX_FILE['fp16']} (vtpdeploy export --fp16)")

    notes: list[str] = []
    if version.always_strongly_typed:
        strongly = True
    elif version.has_strongly_typed_flag:
        # 10.x: an explicitly typed ONNX (fp16, fp16 Q/DQ) builds exactly as typed; an fp32 graph stays weakly
        # typed so the FP16/INT8 flags can lower it (a strongly typed network plus FP16 is a build error).
        strongly = onnx_kind in ("fp16", "int8-fp16")
    else:
        strongly = False
    network_flags = ["EXPLICIT_BATCH"] if version.needs_explicit_batch else []
    if strongly and version.has_strongly_typed_flag:
        network_flags.append("STRONGLY_TYPED")
    builder_flags: list[str] = []
    if not strongly:
        if precision in ("fp16", "int8"):
            builder_flags.append("FP16")  # un-quantized layers may run in fp16
        if precision == "int8":
            builder_flags.append("INT8")  # explicit Q/DQ: the flag enables int8 kernels, no calibrator
    cleared = ["TF32"] if precision == "fp32" else []  # true fp32: TF32 is on by default
    if precision == "int8" and onnx_kind == "int8" and strongly:
        notes.append(f"{v} is strongly typed: the un-quantized ops of this fp32 Q/DQ model (attention, softmax, "
                     f"LayerNorm, GELU) run in fp32; {ONNX_FILE['int8-fp16']} keeps them in fp16")
    return BuildPlan(version=str(version), precision=precision, onnx_kind=onnx_kind, strongly_typed=strongly,
                     network_flags=network_flags, builder_flags=builder_flags, cleared_flags=cleared,
                     tf32="TF32" not in cleared, notes=notes)


def trtexec_args(plan: BuildPlan, version: TrtVersion) -> list[str]:
    """trtexec options for `plan` (without --onnx/--saveEngine/shapes), valid for `version`."""
    args: list[str] = []
    if "STRONGLY_TYPED" in plan.network_flags:
        args.append("--stronglyTyped")  # 10.x only; 11 is strongly typed without it
    if "FP16" in plan.builder_flags:
        args.append("--fp16")
    if "INT8" in plan.builder_flags:
        args.append("--int8")
    if "TF32" in plan.cleared_flags:
        args.append("--noTF32")
    if version.trtexec_skip_inference:
        args.append("--skipInference")
    else:  # 8.5: no --skipInference; keep the post-build inference as short as trtexec allows
        args += ["--warmUp=0", "--duration=0", "--iterations=1", "--avgRuns=1"]
    return args


# ---- reading versions ------------------------------------------------------------------------------
_BANNER = re.compile(r"\[TensorRT v(\d+)\]")
_VERSION_LINE = re.compile(r"TensorRT version:?\s*(\d+\.\d+(?:\.\d+)*)")


def version_from_trtexec_output(text: str) -> TrtVersion | None:
    """From "[I] TensorRT version: 8.6.1" or the banner "&&&& RUNNING TensorRT.trtexec [TensorRT v8601]"."""
    m = _VERSION_LINE.search(text)
    if m:
        return TrtVersion.parse(m[1])
    m = _BANNER.search(text)
    if m:
        n = int(m[1])
        # NV_TENSORRT_VERSION: major*1000 + minor*100 + patch up to 9.x, major*10000 + minor*100 + patch from 10.0
        major, rest = (n // 10000, n % 10000) if n >= 100000 else (n // 1000, n % 1000)
        return TrtVersion(major, rest // 100, rest % 100, text=f"{major}.{rest // 100}.{rest % 100}")
    return None


@lru_cache(maxsize=8)
def trtexec_version(exe: str) -> TrtVersion:
    """The TensorRT version of the trtexec at `exe`, from `trtexec --help`'s banner (one cheap run)."""
    try:
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise VtpError(f"cannot run {exe} --help to read its TensorRT version: {exc}") from None
    version = version_from_trtexec_output(proc.stdout + proc.stderr)
    if version is None:
        raise VtpError(f"{exe} --help printed no TensorRT version; cannot choose trtexec options without it")
    return version


def python_version() -> TrtVersion:
    """The installed `tensorrt` Python package's version."""
    import tensorrt as trt

    text = getattr(trt, "__version__", None)
    if not isinstance(text, str):
        raise VtpError("the `tensorrt` module has no __version__ (a stub or partial install?); "
                       "reinstall TensorRT's Python bindings")
    return TrtVersion.parse(text)


def member(enum: Any, name: str, version: TrtVersion | str) -> Any:
    """`enum.name`, or a one-line VtpError naming the TensorRT version that lacks it."""
    try:
        return getattr(enum, name)
    except AttributeError:
        raise VtpError(f"TensorRT {version} has no {getattr(enum, '__name__', 'enum')}.{name}; "
                       "this build needs it (see docs/tensorrt.md)") from None


# ---- reading what an ONNX is ----------------------------------------------------------------------
def onnx_precision(path: str | Path) -> str:
    """fp32 | fp16 | int8 | int8-fp16: Q/DQ nodes -> int8 (-fp16 when its float tensors are fp16);
    fp16 initializers or inputs -> fp16; else fp32."""
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise VtpError(f"{path}: not a readable ONNX model ({one_line(exc, 160)})") from None
    g = model.graph
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    half = TensorProto.FLOAT16
    fp16 = (any(i.data_type == half for i in g.initializer)
            or any(v.type.tensor_type.elem_type == half for v in list(g.input) + list(g.value_info)))
    if qdq:
        return "int8-fp16" if fp16 else "int8"
    return "fp16" if fp16 else "fp32"


def engine_precision(onnx_kind: str) -> str:
    return "int8" if onnx_kind.startswith("int8") else onnx_kind
