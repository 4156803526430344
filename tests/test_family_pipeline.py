"""Each newly supported family end to end, as a user runs it: `vtpdeploy pipeline recipes/quickstart.yaml` (digits)
with `model.name` set to the family and its small kwargs, exporting ONNX (ORT and OpenVINO parity), INT8 and the
TensorRT readiness report; then the latency-guided planner plans the run's gated model on a table with an
injected measurement, and its plan compacts exactly. The families are test_families.FAMILIES with `e2e`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import image_batch, masked_and_compact, max_diff
from helpers import FakeMeasure
from helpers import run_cli_inprocess as cli
from test_families import SUPPORTED, Family, _id

import vtpdeploy

ROOT = Path(__file__).resolve().parents[1]
E2E = [f for f in SUPPORTED if f.e2e]
FAST = "eva02_tiny_patch14_224"  # RoPE, q/k/v bias fusion and a SwiGLU MLP in one family: the unmarked case
# The digits quickstart, cut to the minimum that runs every stage: no pretraining (random init), one epoch of
# sparse training and of fine-tuning, a small calibration set and few parity inputs.
SHORT = {"threads": 1, "train.epochs": 0, "sparsify.epochs": 1, "finetune.epochs": 1, "data.batch_size": 128,
         "export.enabled": "true", "export.int8": "true", "export.check_trt": "true", "export.calib_n": 16,
         "export.val_n": 16}


def _pipeline(f: Family, run: Path):
    keys = {"model.name": f.name, "model.kwargs": json.dumps(f.kwargs), **SHORT}
    sets = [a for k, v in keys.items() for a in ("--set", f"{k}={v}")]
    return cli("pipeline", ROOT / "recipes" / "quickstart.yaml", "--out", run, *sets)


def _check_export(run: Path) -> None:
    export = json.loads((run / "export" / "export.json").read_text())
    fp32 = {v["backend"] for v in export["validations"] if v["stage"] == "fp32" and v["max_abs_diff"] <= 1e-4}
    assert fp32 == {"ort"} | ({"openvino"} if importlib.util.find_spec("openvino") else set())
    int8 = next(v for v in export["validations"] if v["stage"] == "int8")
    assert int8["n"] == 16 and export["int8"]["tensorrt_valid"] and export["int8"]["quantized_weights"] > 0
    assert export["int8"]["heldout"]["n"] > 0  # fp32 vs INT8 on the digits val split
    readiness = json.loads((run / "export" / "trt_report.json").read_text())
    assert readiness["qdq"]["tensorrt_valid"] and readiness["targets"]["10"]["opset_ok"]
    ops = readiness["targets"]["10"]["ops"]
    assert ops and all(status == "native" for status in ops.values()), ops
    assert len(readiness["attention"]) == 2  # one row per block: the readiness check read both attentions


def _check_latency_plan(run: Path, tmp_path: Path) -> None:
    """The latency-guided planner on the run's gated (sparse-trained) model: a table measured by FakeMeasure, a
    closed loop on a device 1.2x slower than the table, and a plan that compacts exactly."""
    from vtpdeploy.latency import measure_table, model_dims, plan_to_target
    from vtpdeploy.prune.compact import widths_from_plan
    from vtpdeploy.prune.profiles import check_plan, constraints_for

    model = vtpdeploy.load(run / "stages" / "sparse").eval()
    c, fake, dims = constraints_for("cpu"), FakeMeasure(), model_dims(model)
    table = measure_table(model, "ort", cache_dir=tmp_path / "latency", measure_fn=fake, device_label="fake",
                          points=3, constraints=c)
    target = 0.8 * table.full_ms()  # the cpu profile's narrowest widths of a width-48 model: ~0.6 x
    plan, steps = plan_to_target(model, target, table, c, "gate", steps=3,
                                 measure=lambda p: 1.2 * fake("model", tuple(widths_from_plan(p)), dims))
    assert plan.thresholds["measured_ms"] <= target * 1.02 and 0.0 < plan.realised_rate < 1.0
    assert check_plan(plan, c) == [] and len(steps) >= 2  # the table-only plan missed: a corrected step followed
    masked, small = masked_and_compact(model, plan)
    x = image_batch(model)
    with torch.no_grad():
        assert max_diff(masked(x), small(x)) <= 1e-4


def _end_to_end(f: Family, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _pipeline(f, run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert report["compaction"]["max_abs_diff"] <= 1e-4
    assert report["macs"]["compact"] < report["macs"]["unpruned"]
    _check_export(run)
    _check_latency_plan(run, tmp_path)


@pytest.mark.parametrize("f", [f for f in E2E if f.name == FAST], ids=_id)
def test_new_family_runs_the_quickstart_end_to_end(f: Family, tmp_path):
    _end_to_end(f, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("f", [f for f in E2E if f.name != FAST], ids=_id)
def test_every_new_family_runs_the_quickstart_end_to_end(f: Family, tmp_path):
    _end_to_end(f, tmp_path)
