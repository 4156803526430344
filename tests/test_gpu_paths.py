"""GPU paths: `python -m pytest -m gpu` on a CUDA machine; here the CUDA tests skip, the CPU guards run.

Covers torch CUDA bench (fp32 and fp16) with the weights/activations memory split, and a gated AMP
training step. TensorRT tests are marked `trt` (tests/test_runners.py, tests/test_trt_versions.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import make_run_dir

from vtpdeploy.errors import VtpError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("gpu"))


def test_torch_fp16_bench_on_cpu_is_a_one_line_error(run_dir):
    from vtpdeploy.deploy.bench import run_bench

    with pytest.raises(VtpError, match="fp16 inference needs --device cuda"):
        run_bench([run_dir], backend="torch", batches=[1], iters=2, warmup_s=0, precision="fp16")
    with pytest.raises(VtpError, match="int8 is for TensorRT"):
        run_bench([run_dir], backend="torch", batches=[1], iters=2, warmup_s=0, precision="int8")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, bytes_per_param", [("fp32", 4), ("fp16", 2)])
def test_torch_cuda_bench_reports_weights_and_activations(run_dir, precision, bytes_per_param):
    from vtpdeploy.deploy.bench import run_bench

    rep = run_bench([run_dir], backend="torch", device="cuda", batches=[1, 64], iters=20, warmup_s=0.0,
                    block_iters=5, precision=precision)
    assert len(rep["results"]) == 4 and len(rep["comparison"]) == 2
    for r in rep["results"]:
        mem = r["memory"]
        assert r["device"] == "cuda" and r["precision"] == precision
        assert mem["weights_mb"] == pytest.approx(r["params"] * bytes_per_param / 2**20, rel=0.02)
        assert mem["activations_mb"] is not None and mem["activations_mb"] >= 0
        assert r["peak_mem_mb"] == pytest.approx(mem["weights_mb"] + mem["activations_mb"], abs=0.01)
        assert "max_memory_allocated" in mem["activations_from"]
    by = {(r["role"], r["batch"]): r for r in rep["results"]}
    for batch in (1, 64):  # the compact model's smaller weights show in the headline
        assert by[("candidate", batch)]["memory"]["weights_mb"] < by[("baseline", batch)]["memory"]["weights_mb"]
    assert by[("baseline", 64)]["memory"]["activations_mb"] > by[("baseline", 1)]["memory"]["activations_mb"]
    for c in rep["comparison"]:
        lo, hi = c["speedup_ci"]
        assert lo <= c["speedup"] <= hi


@pytest.mark.gpu
@needs_cuda
def test_gated_amp_training_step_benchmark_runs():
    spec = importlib.util.spec_from_file_location(
        "gate_overhead", Path(__file__).parents[1] / "benchmarks" / "gate_overhead.py")
    gate_overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate_overhead)
    out = gate_overhead.main(["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch", "8", "--rounds", "4",
                              "--warmup", "1", "--variant", "input", "--device", "cuda", "--amp", "fp16"])
    res = out["results"]["input"]
    assert out["device"] == "cuda" and out["amp"] == "fp16" and out["gpu"]
    assert res["plain_ms"] > 0 and res["gated_ms"] > 0 and res["ci95"][0] <= res["ratio"] <= res["ci95"][1]
