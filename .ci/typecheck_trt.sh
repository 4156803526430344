#!/usr/bin/env bash
# Static type check of the TensorRT-facing modules against the `tensorrt-stubs` type stubs (TensorRT 10.x API).
# The stubs go to a private folder with --no-deps: they depend on the real `tensorrt` (downloaded from NVIDIA's
# own index, unreachable here), and installed into site-packages their bare `tensorrt/` folder would look like an
# installed TensorRT. The version-specific surfaces (8.6, 11) are covered by tests/test_trt_versions.py.
set -euo pipefail
cd "$(dirname "$0")/.."
stubs="$(mktemp -d)"
trap 'rm -rf "$stubs"' EXIT
pip install -q --no-deps --target "$stubs" "tensorrt-stubs==10.13.0.35.1"
# These generated stubs carry two syntax errors (a parameter named `in`; a required parameter after defaults).
sed -i -E 's/([(, ])in: /\1in_: /g; s/channel_axis: int\) -> IScaleLayer/channel_axis: int = ...) -> IScaleLayer/' \
    "$stubs/tensorrt_bindings/tensorrt.pyi"
MYPYPATH="$stubs" python -m mypy vtpdeploy/deploy/export/trt_build.py vtpdeploy/deploy/export/trt_versions.py \
    vtpdeploy/deploy/runners/trt_runner.py vtpdeploy/deploy/bench/engines.py
