"""`vtpdeploy bench` from the command line: a real tiny run, and bad inputs (exit 2, one line)."""

from __future__ import annotations

import json

import pytest
from helpers import assert_one_line_error, make_run_dir, run_cli, tiny_vit


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from vtpdeploy.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("benchcli")
    run = make_run_dir(root)
    onnx1 = root / "tiny_b1.onnx"
    export_onnx(tiny_vit(), onnx1, batch=1, openvino=False)
    onnx64 = root / "tiny64.onnx"
    export_onnx(tiny_vit(img_size=64), onnx64, batch=1, openvino=False)
    return root, run, onnx1, onnx64


def test_cli_real_run_with_outputs_and_gate(env):
    root, run, onnx1, _ = env
    rules = root / "rules.yaml"
    rules.write_text('gates:\n  - "p90_ms <= 100000"\n  - "speedup >= 0.0001"\n')
    res = run_cli("bench", run, "--backend", "ort", "--batch", "1", "--warmup-s", "0", "--iters", "20", "--threads", "1",
               "--json", root / "r.json", "--md", root / "r.md", "--plot", root / "r.png", "--gate", rules,
               "--junit", root / "j.xml")
    assert res.returncode == 0, res.stderr
    rep = json.loads((root / "r.json").read_text())
    assert rep["schema_version"] == 1 and len(rep["results"]) == 2 and len(rep["comparison"]) == 1
    assert "run/model" in (root / "r.md").read_text() and (root / "r.png").stat().st_size > 1000
    assert "speedup vs baseline" in res.stdout and "PASS" in res.stdout
    res = run_cli("gate", root / "r.json", rules)
    assert res.returncode == 0
    rules.write_text('gates:\n  - "p50_ms <= 0.000001"\n')
    assert run_cli("gate", root / "r.json", rules).returncode == 1


def test_onnx_candidate_against_onnx_baseline_and_none(env):
    root, run, onnx1, _ = env
    from vtpdeploy.deploy.bench import run_bench

    rep = run_bench([onnx1], backend="openvino", baseline=str(onnx1), warmup_s=0, iters=10, threads=1, block_iters=5)
    assert [r["model"] for r in rep["results"]] == ["tiny_b1.onnx (baseline)", "tiny_b1.onnx"]
    assert rep["results"][1]["macs"] is None and rep["comparison"][0]["mac_ratio"] is None
    rep = run_bench([onnx1], backend="ort", baseline="none", warmup_s=0, iters=5, threads=1)
    assert len(rep["results"]) == 1 and rep["comparison"] == []


@pytest.mark.parametrize("case", ["unknown_backend", "not_installed", "batch0", "fixed_batch", "image_size",
                                  "truncated_onnx", "truncated_safetensors", "missing", "unpruned_needs_run",
                                  "torch_on_onnx", "both_durations"])
def test_bad_inputs(env, tmp_path, case):
    root, run, onnx1, onnx64 = env
    common = ["--warmup-s", "0", "--iters", "3", "--threads", "1"]
    if case == "unknown_backend":
        assert_one_line_error(run_cli("bench", run, "--backend", "tvm", *common), "unknown backend 'tvm'")
    elif case == "not_installed":
        from vtpdeploy.deploy.runners import available_backends

        if "trt" in available_backends():
            pytest.skip("TensorRT is installed here")
        assert_one_line_error(run_cli("bench", run, "--backend", "trt", "--device", "cuda", *common), "installed backends:", "ort")
    elif case == "batch0":
        assert_one_line_error(run_cli("bench", run, "--batch", "0", *common), "--batch must be >= 1")
    elif case == "fixed_batch":
        assert_one_line_error(run_cli("bench", onnx1, "--backend", "ort", "--baseline", "none", "--batch", "8", *common),
                        "fixed batch size 1", "--batch 8")
    elif case == "image_size":
        assert_one_line_error(run_cli("bench", onnx1, "--backend", "ort", "--baseline", onnx64, *common),
                        "does not match", "3x32x32")
    elif case == "truncated_onnx":
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(onnx1.read_bytes()[: onnx1.stat().st_size // 3])
        assert_one_line_error(run_cli("bench", bad, "--backend", "ort", "--baseline", "none", *common), "bad.onnx")
    elif case == "truncated_safetensors":
        for suffix in (".json", ".safetensors"):
            src = run / f"model{suffix}"
            data = src.read_bytes()
            (tmp_path / f"m{suffix}").write_bytes(data if suffix == ".json" else data[: len(data) // 2])
        assert_one_line_error(run_cli("bench", tmp_path / "m", "--backend", "torch", "--baseline", "none", *common),
                        "m.safetensors")
    elif case == "missing":
        assert_one_line_error(run_cli("bench", tmp_path / "nothing", *common), "no such artifact")
    elif case == "unpruned_needs_run":
        assert_one_line_error(run_cli("bench", onnx1, "--baseline", "unpruned", *common), "needs a run dir")
    elif case == "torch_on_onnx":
        assert_one_line_error(run_cli("bench", onnx1, "--backend", "torch", "--baseline", "none", *common), "torch backend")
    elif case == "both_durations":
        assert_one_line_error(run_cli("bench", run, "--duration-s", "1", *common), "not both")
