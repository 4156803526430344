"""The traps a new user fell into (issue 23), one test each: wrong numbers or lost results without a warning,
and refusals that did not say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, make_run_dir, run_cli_inprocess, tiny_vit

ROOT = Path(__file__).resolve().parents[1]


def test_data_defaults_to_the_models_own_preprocessing():
    """A recipe's data section that sets no preprocessing gets the model's timm config (DeiT: bicubic, crop < 1);
    the digits quickstart and ci_tiny keep their explicit bilinear / crop 1.0."""
    import timm

    from vtpdeploy.data import DataSection, data_config_for
    from vtpdeploy.train.recipe import load_recipe

    deit = timm.get_pretrained_cfg("deit_small_patch16_224").to_dict()
    cfg = data_config_for(deit, DataSection(kind="imagefolder", path="/data"))
    assert cfg["interpolation"] == deit["interpolation"] == "bicubic" and cfg["crop_pct"] == deit["crop_pct"] < 1
    own = load_recipe(ROOT / "recipes" / "own_model.yaml")
    assert own.data.interpolation is None and own.data.crop_pct is None
    for recipe in (load_recipe(None), load_recipe(ROOT / "recipes" / "quickstart.yaml"),
                   load_recipe(ROOT / "recipes" / "ci_tiny.yaml")):
        assert (recipe.data.interpolation, recipe.data.crop_pct) == ("bilinear", 1.0)


def _onnx(path: Path) -> Path:
    from vtpdeploy.deploy.export import export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(tiny_vit(), path, simplify=False)
    return path


@pytest.fixture(scope="module")
def loose_onnx(tmp_path_factory):
    return _onnx(tmp_path_factory.mktemp("loose") / "model.onnx")


def test_bench_refuses_an_onnx_without_a_known_unpruned_counterpart(loose_onnx):
    """Never a silent random-init DeiT-B baseline: one line asking for --baseline."""
    from vtpdeploy.deploy.bench.artifacts import resolve, resolve_baseline
    from vtpdeploy.errors import VtpError

    with pytest.raises(VtpError, match="no known unpruned counterpart.*--baseline"):
        resolve_baseline(None, [resolve(str(loose_onnx))])
    assert resolve_baseline("none", [resolve(str(loose_onnx))]) is None


def test_bench_finds_the_counterpart_and_macs_from_export_provenance(tmp_path):
    from vtpdeploy.deploy.bench.artifacts import resolve, resolve_baseline

    run = make_run_dir(tmp_path)
    onnx = _onnx(run / "export" / "model.onnx")
    (onnx.parent / "export.json").write_text(json.dumps({
        "artifacts": {"fp32": {"path": "model.onnx"}}, "counts": {"params": 123, "macs": 4567},
        "provenance": {"run_dir": str(run.resolve()), "which": "model"}}))
    art = resolve(str(onnx))
    base = resolve_baseline(None, [art])
    assert (base.kind, base.which, base.path) == ("run", "unpruned", run.resolve())
    assert art.counts() == {"params": 123, "macs": 4567, "counts_from": "export.json"}


def test_unusable_device_is_exit_2_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    proc = run_cli_inprocess("pipeline", "--set", "device=cuda", "--out", out)
    assert_one_line_error(proc, "device: 'cuda'", "--set device=cpu")
    assert not out.exists()
    assert_one_line_error(run_cli_inprocess("pipeline", "--set", "device=gpu0", "--out", out), "not a torch device")


def test_unknown_recipe_key_suggests_the_closest(tmp_path):
    proc = run_cli_inprocess("pipeline", "--set", "prune.rat=0.3", "--out", tmp_path / "r")
    assert_one_line_error(proc, "unknown key 'prune.rat'", "did you mean 'prune.rate'?", "vtpdeploy recipe")


def test_checkpoint_mismatch_message_is_whole(tmp_path):
    from vtpdeploy.errors import CheckpointError
    from vtpdeploy.prune.saving import load_weights

    torch.save(tiny_vit(num_classes=7).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as info:
        load_weights(tiny_vit(), tmp_path / "w.pth")
    msg = str(info.value)
    assert "head.weight (7, 48) vs model (10, 48)" in msg and "head.bias (7,) vs model (10,)" in msg
    assert msg.endswith("against the checkpoint") and "\n" not in msg


def test_refusals_say_what_to_do(tmp_path, loose_onnx):
    pth = tmp_path / "finetuned.pth"
    torch.save(tiny_vit().state_dict(), pth)
    assert_one_line_error(run_cli_inprocess("export", pth, "--out", tmp_path / "e"), "recipes/own_model.yaml")
    rules = tmp_path / "rules.yaml"
    rules.write_text("gates: ['p50_ms <= 1']\n")
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"schema_version": 1, "results": [], "comparison": []}))
    assert_one_line_error(run_cli_inprocess("gate", rules, report), f"run `vtpdeploy gate {report} {rules}`")


def test_trt_backend_missing_gives_the_install_hint(loose_onnx):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    proc = run_cli_inprocess("bench", loose_onnx, "--backend", "trt", "--device", "cuda", "--baseline", "none")
    assert_one_line_error(proc, "pip install 'vtpdeploy[trt]'", "JetPack")


def test_refused_calib_leaves_no_empty_out(tmp_path):
    run = make_run_dir(tmp_path)
    out = tmp_path / "calib"
    assert_one_line_error(run_cli_inprocess("calib", run, "--out", out, "--split", "val"), "--split train")
    assert not out.exists()


def test_bench_warns_about_s8_int8_on_a_cpu_runtime(tmp_path, loose_onnx):
    import numpy as np

    from vtpdeploy.deploy.bench.artifacts import resolve
    from vtpdeploy.deploy.bench.hints import runtime_warnings
    from vtpdeploy.deploy.export.quantize import quantize_int8

    int8 = tmp_path / "model.int8.onnx"
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    quantize_int8(loose_onnx, int8, x, method="MinMax", activation_type="s8")
    art = resolve(str(int8))
    assert "s8 (TensorRT-format) INT8" in runtime_warnings([art], ["ort"], "cpu")[0]
    assert runtime_warnings([art], ["trt"], "cuda") == [] and runtime_warnings([resolve(str(loose_onnx))], ["ort"],
                                                                                "cpu") == []


def test_gate_rules_select_precision_and_say_what_the_report_holds():
    from vtpdeploy.deploy.bench.rules import GateError, evaluate

    row = {"model": "m", "role": "candidate", "backend": "ort", "batch": 1, "latency_ms": {"p50": 5.0},
           "throughput_ips": 1.0, "peak_mem_mb": 1.0, "macs": 1, "params": 1, "file_mb": 1.0,
           "artifact": "export/model.int8.onnx"}
    fp = {**row, "model": "f", "artifact": "export/model.fp16.onnx", "latency_ms": {"p50": 50.0}}
    report = {"schema_version": 1, "results": [row, fp],
              "comparison": [{"candidate": "m", "backend": "ort", "batch": 1, "speedup": 0.4}]}
    res = evaluate(report, [{"rule": "p50_ms <= 10", "precision": "int8"},
                            {"rule": "p50_ms <= 100", "precision": ["fp16", "fp32"]}])
    assert [len(r.checks) for r in res] == [1, 1] and all(r.passed for r in res)
    assert not evaluate(report, [{"rule": "speedup >= 1", "precision": "int8"}])[0].passed
    with pytest.raises(GateError, match="selects none of the report's 1 comparison entries; they have "
                                        "precision=int8"):
        evaluate(report, [{"rule": "speedup >= 1", "precision": "fp16"}])
