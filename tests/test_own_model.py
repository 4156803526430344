"""The README's "your own model in three steps", end to end on a tiny saved state_dict and a 2-class ImageFolder:
pipeline (recipes/own_model.yaml + the five keys) -> calib -> export (fp16 + int8 engines on the stand-in
TensorRT, ranged batch) -> bench (baseline from the export's provenance, MACs from export.json) -> gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from helpers import run_cli_inprocess as cli
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KWARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 2}


def make_imagefolder(root: Path, per_class: dict[str, int]) -> Path:
    """root/{train,val}/{a,b}/*.png: two classes told apart by brightness."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for label, base in (("a", 40), ("b", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The user's inputs: a state_dict saved with torch.save and an ImageFolder."""
    root = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KWARGS)
    torch.save(model.state_dict(), root / "finetuned.pth")
    make_imagefolder(root / "data", {"train": 8, "val": 4})
    return root


def five_keys(own: Path) -> list[str]:
    """The five keys a user changes in recipes/own_model.yaml, then this test's CPU-sized settings."""
    keys = {"model.name": "vit_tiny_patch16_224", "model.checkpoint": own / "finetuned.pth",
            "data.path": own / "data", "model.kwargs": json.dumps(KWARGS), "prune.hardware": "cpu"}
    small = {"device": "cpu", "threads": 1, "data.batch_size": 8, "data.workers": 0, "sparsify.epochs": 1,
             "finetune.epochs": 1, "log": "[]"}
    return [a for k, v in {**keys, **small}.items() for a in ("--set", f"{k}={v}")]


def test_own_model_three_steps(own, tmp_path, monkeypatch):
    from trt_standins import read_log, use_python_trt

    run = tmp_path / "run"
    # 1. pipeline
    proc = cli("pipeline", ROOT / "recipes" / "own_model.yaml", "--out", run, *five_keys(own))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["preprocessing"]["interpolation"] == "bicubic"  # the model's own, not the digits' bilinear
    assert report["macs"]["compact"] < report["macs"]["unpruned"]
    assert {"model.onnx", "model.fp16.onnx"} <= {p.name for p in (run / "export").iterdir()}

    # 2. calib + export: one engine per precision on the stand-in TensorRT 10, ranged batch
    calib = tmp_path / "calib"
    assert cli("calib", run, "--out", calib, "--n", 8).returncode == 0
    log = tmp_path / "trt.jsonl"
    use_python_trt(monkeypatch, "10", log)
    out = tmp_path / "export"
    proc = cli("export", run, "--fp16", "--int8", "--calib", calib, "--trt", "--batch-range", "1:2:4",
               "--out", out, "--no-simplify", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "export.json").read_text())
    assert set(rep["engines"]) == {"fp16", "int8"}
    for precision in ("fp16", "int8"):
        info = json.loads((out / f"model.{precision}.engine.json").read_text())
        assert info["precision"] == precision and (out / f"model.{precision}.engine").is_file()
        assert info["shapes"]["min"][0] == 1 and info["shapes"]["opt"][0] == 2 and info["shapes"]["max"][0] == 4
    assert not (out / "model.engine").exists()
    profiles = [c for c in read_log(log) if c["api"] == "IOptimizationProfile.set_shape"]
    assert [(p["min"][0], p["opt"][0], p["max"][0]) for p in profiles] == [(1, 2, 4)] * 2
    assert rep["counts"]["macs"] == report["macs"]["compact"] and rep["provenance"]["which"] == "model"
    from vtpdeploy.deploy.export.readiness import important_warnings

    shown = important_warnings(json.loads((out / "trt_report.json").read_text())["warnings"])
    assert shown and all(f"warning: {w}" in proc.stdout for w in shown)  # in full, not only counted

    # 3. bench (baseline: the run's unpruned model, found from export.json) + gate
    bench = tmp_path / "bench.json"
    proc = cli("bench", out / "model.onnx", "--backend", "ort", "--batch", 2, "--iters", 4, "--warmup-s", 0,
               "--block", 2, "--threads", 1, "--json", bench, "--quiet")
    assert proc.returncode == 0, proc.stderr
    b = json.loads(bench.read_text())
    cand = next(r for r in b["results"] if r["role"] == "candidate")
    assert b["settings"]["baseline"].endswith("run/unpruned")
    assert cand["macs"] == report["macs"]["compact"] and cand["counts_from"] == "export.json"
    assert b["comparison"][0]["mac_ratio"] == pytest.approx(report["macs"]["unpruned"] / report["macs"]["compact"],
                                                            rel=1e-3)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"gates": [{"rule": "mac_ratio >= 1.1", "precision": "fp32"},
                                               {"rule": "macs <= 1e12", "backend": "ort"}]}))
    assert cli("gate", bench, rules).returncode == 0
    rules.write_text(yaml.safe_dump({"gates": ["mac_ratio >= 100"]}))
    assert cli("gate", bench, rules).returncode == 1
    swapped = cli("gate", rules, bench)
    assert swapped.returncode == 2 and f"vtpdeploy gate {bench} {rules}" in swapped.stderr
