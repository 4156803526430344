"""End-to-end pipeline on digits with tiny epochs: artifacts, report, skip/re-run, resume after kill -9."""

from __future__ import annotations

import hashlib
import json
import signal

import pytest
import torch
import yaml
from helpers import run_cli, write_recipe

import vtpdeploy
from vtpdeploy.data import DigitsDataset, make_transform
from vtpdeploy.prune.plan import PrunePlan
from vtpdeploy.prune.saving import read_spec


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    recipe = write_recipe(root / "tiny.yaml")
    proc = run_cli("pipeline", recipe, "--out", root / "run")
    assert proc.returncode == 0, proc.stderr
    return root, recipe, root / "run", proc


def test_run_dir_has_every_artifact(finished_run):
    _, _, run, proc = finished_run
    for name in ("recipe.yaml", "manifest.json", "plan.json", "model.safetensors", "model.json",
                 "unpruned.safetensors", "unpruned.json", "report.json"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 1
    assert "torch" in manifest["packages"]
    for stage in ("train", "sparsify", "prune", "finetune", "compact"):
        entry = manifest["stages"][stage]
        assert entry["status"] == "done"
        assert entry["duration_s"] >= 0 and entry["started"] <= entry["ended"]
        for art in entry["artifacts"].values():
            assert len(art["sha256"]) == 64 and (run / art["path"]).is_file()
    assert "val top-1" in proc.stdout


def test_report_contents(finished_run):
    _, _, run, _ = finished_run
    report = json.loads((run / "report.json").read_text())
    assert set(report["accuracy"]) >= {"unpruned", "pruned", "finetuned"}
    assert report["params"]["compact"] < report["params"]["unpruned"]
    assert report["macs"]["compact"] < report["macs"]["unpruned"]
    assert report["plan"]["profile"] == "cpu"  # the default width profile
    # Width 32, 2 heads: the cpu profile's multiples are coarse here, so the realised rate moves a little.
    assert abs(report["plan"]["realised_rate"] - 0.4) < 0.06
    assert len(report["plan"]["blocks"]) == 2
    assert len(report["curves"]["sparsify"]["loss"]) == 2 and len(report["curves"]["finetune"]["loss"]) == 2
    assert report["compaction"]["max_abs_diff"] <= 1e-4


def test_saved_model_is_compact_and_matches_recorded_accuracy(finished_run):
    _, _, run, _ = finished_run
    model = vtpdeploy.load(run / "model")
    plan = PrunePlan.load(run / "plan.json")
    assert not list(vtpdeploy.iter_gates(model))
    for b, block in enumerate(model.blocks):
        assert block.mlp.fc1.out_features == len(plan.gate(b, "mlp_hidden").kept)
        assert block.attn.proj.in_features == len(plan.gate(b, "attn_v").kept)
    spec = read_spec(run / "model")
    ds = DigitsDataset("val", make_transform(spec.data_config))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        acc = 100.0 * float((model(x).argmax(-1) == y).float().mean())
    report = json.loads((run / "report.json").read_text())
    assert acc == pytest.approx(report["accuracy"]["finetuned"], abs=0.01)


def test_rerun_skips_and_changed_section_reruns_downstream(finished_run, tmp_path):
    root, recipe, run, _ = finished_run
    before = json.loads((run / "manifest.json").read_text())["stages"]
    proc = run_cli("pipeline", recipe, "--out", run)
    assert proc.returncode == 0, proc.stderr
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(after[s]["ended"] == before[s]["ended"] for s in before), "unchanged stages must be skipped"
    assert proc.stderr.count("up to date, skipped") == 5

    proc = run_cli("pipeline", recipe, "--out", run, "--set", "finetune.epochs=1")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((run / "manifest.json").read_text())["stages"]
    for s in ("train", "sparsify", "prune"):
        assert again[s]["ended"] == before[s]["ended"], s
    for s in ("finetune", "compact"):
        assert again[s]["key"] != before[s]["key"], s
    # The finished results the re-run replaced are kept, with their manifest entry and the old report.
    assert "re-running finetune, compact" in proc.stderr
    for s in ("finetune", "compact"):
        kept = run / "history" / before[s]["key"]
        assert json.loads((kept / "stage.json").read_text())["stage"] == s and (kept / "report.json").is_file()
        for art in before[s]["artifacts"].values():
            assert hashlib.sha256((kept / art["path"]).read_bytes()).hexdigest() == art["sha256"]
    assert len(json.loads((run / "report.json").read_text())["curves"]["finetune"]["loss"]) == 1
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["finetune"]["epochs"] == 1


def _crash_after_first_checkpoint(stage: str, recipe, run):
    """Run the pipeline; the training loop kill -9s itself right after `stage` wrote its first checkpoint."""
    proc = run_cli("pipeline", recipe, "--out", run, env={"VTPDEPLOY_CRASH_AFTER_CHECKPOINT": f"{stage}:1"})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    return run / "ckpt" / f"{stage}.pt"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sparsify", "finetune"])
def test_resume_after_kill_9(stage, tmp_path):
    epochs = {"train.epochs": 2, "sparsify.epochs": 2, "finetune.epochs": 2, f"{stage}.epochs": 3}
    recipe = write_recipe(tmp_path / "r.yaml", {**epochs, "data.augment": False})
    reference = run_cli("pipeline", recipe, "--out", tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "run"
    ckpt = _crash_after_first_checkpoint(stage, recipe, run)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"][stage]["status"] == "running"
    assert manifest["stages"]["train"]["status"] == "done"
    assert not (run / "report.json").exists()

    done = run_cli("pipeline", recipe, "--out", run)
    assert done.returncode == 0, done.stderr
    assert f"{stage}: resuming from epoch checkpoint 1/3" in done.stderr
    assert "train: up to date, skipped" in done.stderr
    report = json.loads((run / "report.json").read_text())
    assert len(report["curves"][stage]["loss"]) == 3
    assert not ckpt.exists()
    ref = json.loads((tmp_path / "uninterrupted" / "report.json").read_text())
    # Same data order and seeds per epoch: the resumed run ends where the uninterrupted one does.
    assert report["accuracy"]["finetuned"] == pytest.approx(ref["accuracy"]["finetuned"], abs=1.0)
    assert report["curves"][stage]["loss"] == pytest.approx(ref["curves"][stage]["loss"], rel=0.05)


def test_export_section_runs_as_the_next_stage(finished_run, tmp_path):
    import shutil

    _, recipe, run, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    # The run dir's own resolved recipe: every earlier stage is up to date, only export is new.
    proc = run_cli("pipeline", copy / "recipe.yaml", "--out", copy, "--set", "export.enabled=true",
                   "--set", "export.fp16=true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("up to date, skipped") == 5
    manifest = json.loads((copy / "manifest.json").read_text())
    export = manifest["stages"]["export"]
    assert export["status"] == "done"
    assert {"model", "model_fp16", "export"} <= set(export["artifacts"])
    result = json.loads((copy / "export" / "export.json").read_text())
    fp32 = [v for v in result["validations"] if v["stage"] == "fp32"]
    assert fp32 and all(v["max_abs_diff"] <= 1e-4 for v in fp32)
    assert json.loads((copy / "report.json").read_text())["export"]["validations"]


def test_latency_guided_plan_reports_predicted_and_measured(finished_run, tmp_path):
    import shutil

    _, _, run, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    proc = run_cli("pipeline", copy / "recipe.yaml", "--out", copy, "--set", "prune.target_latency_ms=1000",
                   "--set", "prune.latency_backend=torch", "--set", f"prune.latency_cache={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr
    latency = json.loads((copy / "report.json").read_text())["latency_plan"]
    assert latency["target_ms"] == 1000 and latency["backend"] == "torch"
    assert latency["predicted_ms"] > 0 and latency["measured_ms"] > 0
    table = latency["table"]  # where the table came from, in report.json and report.md
    assert table["source"] in ("fresh", "fresh, not cached") and table["age_s"] >= 0 and table["rounds"] >= 15
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == (table["source"] == "fresh")  # a table too noisy under load is not cached
    assert "table measured for this run" in (copy / "report.md").read_text()

    unreachable = run_cli("pipeline", copy / "recipe.yaml", "--out", copy, "--set", "prune.target_latency_ms=1e-6",
                          "--set", "prune.latency_backend=torch", "--set", f"prune.latency_cache={tmp_path / 'cache'}")
    assert unreachable.returncode == 2
    assert "not reachable" in unreachable.stderr and "Traceback" not in unreachable.stderr
