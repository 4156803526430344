#!/usr/bin/env python3
"""Stand-in `trtexec` (8.6, 10.x, 11.x option sets). NOT TensorRT: API-surface tests only.

Run as `trtexec.py VERSION ARGS...` (tests put a `trtexec` wrapper that fixes VERSION on PATH). It
accepts exactly the options vtpdeploy may pass, per version, rejects the rest as real trtexec does
("Unknown option"), prints the banner and the "TensorRT version" line real trtexec prints, and writes a
placeholder file (not an engine) to --saveEngine. Each run is appended to $TRT_STANDIN_LOG as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_trt_standin_surface", Path(__file__).resolve().with_name("_surface.py"))
_surface = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_surface)

# Options in every version vtpdeploy supports (trtexec --help, 8.5 -> 11).
COMMON = {"--onnx", "--saveEngine", "--timingCacheFile", "--minShapes", "--optShapes", "--maxShapes", "--noTF32",
          "--memPoolSize", "--warmUp", "--duration", "--iterations", "--avgRuns", "--verbose", "--help"}


def options(major: int, minor: int) -> set[str]:
    opts = set(COMMON)
    if (major, minor) >= (8, 6):
        opts.add("--skipInference")  # added in 8.6 (trtexec README / 8.6 release notes)
    if major < 11:
        opts |= {"--fp16", "--int8", "--best", "--calib"}  # 11: unknown options (11.0 release notes)
    if major == 10:
        opts.add("--stronglyTyped")  # added in 10.0; 11 is always strongly typed (not relied on there)
    return opts


def banner_number(major: int, minor: int, patch: int) -> int:
    # NV_TENSORRT_VERSION: major*1000+minor*100+patch before 10.0, major*10000+minor*100+patch from 10.0
    return (major * 10000 if major >= 10 else major * 1000) + minor * 100 + patch


def main(version: str, argv: list[str]) -> int:
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{banner_number(major, minor, patch)}] # trtexec {' '.join(argv)}")
    allowed = options(major, minor)
    args: dict[str, str] = {}
    for a in argv:
        key, _, value = a.partition("=")
        if key not in allowed:
            print(f"[E] Unknown option: {key} {value}".rstrip())
            _surface.record(tool="trtexec", version=version, argv=argv, rejected=key)
            return 1
        args[key] = value
    if "--help" in args:
        print("=== Model Options ===\n  --onnx=<file> ...")
        return 0
    print(f"[I] TensorRT version: {major}.{minor}.{patch}")
    facts = _surface.read_onnx_facts(args["--onnx"])
    strongly = major >= 11 or "--stronglyTyped" in args
    precision_flags = [k for k in ("--fp16", "--int8", "--best") if k in args]
    if strongly and precision_flags:
        print(f"[W] --stronglyTyped: {', '.join(precision_flags)} ignored")  # 10.x logs and switches them off
        precision_flags = []
    max_opset = 17 if major < 10 else 20 if major == 10 else 22
    if facts["opset"] > max_opset:
        print(f"[E] ONNX opset {facts['opset']} is not supported (max {max_opset})")
        return 1
    if not strongly and facts["qdq"] and "--int8" not in precision_flags and "--best" not in precision_flags:
        print("[E] Error[4]: int8 precision has been set for a layer but int8 is not configured in the builder")
        return 1
    desc = {"version": version, "strongly_typed": strongly, "flags": precision_flags, "argv": argv,
            "inputs": facts["inputs"], "outputs": facts["outputs"]}
    Path(args["--saveEngine"]).write_bytes(_surface.PLACEHOLDER + json.dumps(desc).encode())
    inference = "--skipInference" not in args
    if inference:
        print("[I] === Performance summary === (stand-in: nothing was run)")
    _surface.record(tool="trtexec", version=version, argv=argv, strongly_typed=strongly, inference=inference,
                    engine=args["--saveEngine"])
    print(f"&&&& PASSED TensorRT.trtexec [TensorRT v{banner_number(major, minor, patch)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
