"""The bad-input catalogue: recipes, data, checkpoints, ONNX files, reports, CLI flags and run dirs.

Every case must exit 2 with one line `error: ...` naming the problem, print no traceback, leave the
artifacts of an earlier finished run dir byte-identical, and never run code from a checkpoint.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import yaml
from helpers import (
    MaliciousPickle,
    assert_one_line_error,
    make_run_dir,
    run_cli,
    run_cli_inprocess,
    tree_digest,
    write_recipe,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    run = make_run_dir(root, "run")
    (root / "recipe_ok.yaml").write_text(yaml.safe_dump({"prune": {"rate": 0.4}}))
    (root / "bad.yaml").write_text("model:\n  name: [unclosed\n")
    (root / "list.yaml").write_text("- just\n- a list\n")
    empty = root / "empty_data"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    noimg = root / "noimg"
    (noimg / "train" / "cat").mkdir(parents=True)
    (noimg / "val" / "cat").mkdir(parents=True)
    (noimg / "train" / "cat" / "readme.txt").write_text("not an image")
    (root / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    (root / "evil.pt").write_bytes(pickle.dumps({"weights": MaliciousPickle(root / "pwned")}))
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, root / "mismatch.pt")
    (root / "truncated.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    src = (run / "model.safetensors").read_bytes()
    trunc = root / "trunc"
    trunc.mkdir()
    (trunc / "model.safetensors").write_bytes(src[: len(src) // 3])
    (trunc / "model.json").write_text((run / "model.json").read_text())
    (root / "report_bad.json").write_text("{not json")
    (root / "report_empty.json").write_text(json.dumps({"schema_version": 1, "results": []}))
    (root / "rules_ok.yaml").write_text(yaml.safe_dump({"gates": ["p50_ms <= 1000"]}))
    (root / "rules_metric.yaml").write_text(yaml.safe_dump({"gates": ["warp_factor <= 9"]}))
    (root / "rules_syntax.yaml").write_text(yaml.safe_dump({"gates": ["p50_ms <== banana"]}))
    (root / "rules_prev.yaml").write_text(yaml.safe_dump({"gates": ["p50_ms <= previous * 1.05"]}))
    (root / "calib_empty").mkdir()
    return root, run


def _recipe(w, name: str, overrides: dict) -> str:
    return str(write_recipe(w[0] / name, overrides))


def _ok(w, *sets: str) -> list[str]:
    """`pipeline recipe_ok.yaml --set A --set B ...`"""
    return ["pipeline", str(w[0] / "recipe_ok.yaml"), *(x for s in sets for x in ("--set", s))]


def R(w, name):
    return str(w[0] / name)


# case -> (argv builder over the world, needles that the one error line must contain)
CATALOGUE = {
    # recipes
    "recipe: malformed YAML": (lambda w: ["pipeline", R(w, "bad.yaml")], ["malformed YAML", "at line"]),
    "recipe: not a mapping": (lambda w: ["pipeline", R(w, "list.yaml")], ["mapping of sections"]),
    "recipe: missing file": (lambda w: ["pipeline", R(w, "absent.yaml")], ["recipe not found"]),
    "recipe: unknown key in file": (lambda w: ["pipeline", _recipe(w, "k.yaml", {"model.nmae": "x"})],
                                    ["unknown key 'model.nmae'"]),
    "recipe: unknown key via --set": (lambda w: _ok(w, "sparsify.lambda=1"), ["unknown key 'sparsify.lambda'"]),
    "recipe: rate 1.0 in file": (lambda w: ["pipeline", _recipe(w, "r1.yaml", {"prune.rate": 1.0})],
                                 ["prune.rate", "(0, 1)"]),
    "recipe: rate 1.5 via --set": (lambda w: _ok(w, "prune.rate=1.5"), ["prune.rate"]),
    "recipe: rate 0 via --set": (lambda w: _ok(w, "prune.rate=0"), ["prune.rate"]),
    "recipe: wrong type": (lambda w: _ok(w, "train.epochs=many"), ["train.epochs"]),
    "recipe: --set without =": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "prune.rate"],
                                ["expected key.path=value"]),
    "recipe: unknown model": (lambda w: _ok(w, "model.name=vit_nope"), ["unknown timm model", "vit_nope"]),
    "recipe: unsupported model": (lambda w: _ok(w, "model.name=resnet18", "model.kwargs={}"),
                                  ["resnet18", "not a timm VisionTransformer"]),
    # data
    "data: missing folder": (lambda w: _ok(w, "data.kind=imagefolder", f"data.path={R(w, 'nowhere')}"),
                             ["data.path", "does not exist"]),
    "data: empty folder": (lambda w: _ok(w, "data.kind=imagefolder", f"data.path={R(w, 'empty_data')}"),
                           ["data.path", "no class folders"]),
    "data: no images": (lambda w: _ok(w, "data.kind=imagefolder", f"data.path={R(w, 'noimg')}"), ["holds no images"]),
    # checkpoints
    "checkpoint: corrupt": (lambda w: _ok(w, f"model.checkpoint={R(w, 'corrupt.safetensors')}"),
                            ["corrupt safetensors"]),
    "checkpoint: malicious pickle": (lambda w: _ok(w, f"model.checkpoint={R(w, 'evil.pt')}"), ["refused"]),
    "checkpoint: mismatched": (lambda w: _ok(w, f"model.checkpoint={R(w, 'mismatch.pt')}"),
                               ["does not fit the model"]),
    "checkpoint: missing": (lambda w: _ok(w, f"model.checkpoint={R(w, 'no.pt')}"), ["not found"]),
    "checkpoint: truncated saved model": (lambda w: ["inspect", R(w, "trunc/model")], ["corrupt safetensors"]),
    # ONNX files
    "onnx: truncated file to bench": (lambda w: ["bench", R(w, "truncated.onnx"), "--baseline", "none",
                                                 "--iters", "1"], ["truncated.onnx"]),
    "onnx: missing file to bench": (lambda w: ["bench", R(w, "absent.onnx"), "--baseline", "none"], ["absent.onnx"]),
    # reports
    "report: malformed JSON": (lambda w: ["gate", R(w, "report_bad.json"), R(w, "rules_ok.yaml")], ["report_bad"]),
    "report: unknown metric": (lambda w: ["gate", R(w, "report_empty.json"), R(w, "rules_metric.yaml")],
                               ["warp_factor"]),
    "report: malformed rule": (lambda w: ["gate", R(w, "report_empty.json"), R(w, "rules_syntax.yaml")],
                               ["malformed gate"]),
    "report: previous rule without --previous": (lambda w: ["gate", R(w, "report_empty.json"),
                                                            R(w, "rules_prev.yaml")], ["previous"]),
    # CLI flags
    "flag: --batch 0": (lambda w: ["bench", str(w[1]), "--batch", "0", "--baseline", "none"], ["batch"]),
    "flag: unknown backend": (lambda w: ["bench", str(w[1]), "--backend", "tpu9000", "--baseline", "none"],
                              ["tpu9000"]),
    "flag: --int8 without --calib": (lambda w: ["export", str(w[1]), "--int8", "--out", R(w, "exp1")], ["--calib"]),
    "flag: empty calibration dir": (lambda w: ["export", str(w[1]), "--int8", "--calib", R(w, "calib_empty"),
                                               "--out", R(w, "exp2")], ["calib"]),
    "flag: unknown option": (lambda w: ["pipeline", "--frobnicate"], ["frobnicate"]),
    "flag: missing source": (lambda w: ["export", R(w, "no_such_run")], ["no_such_run"]),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input(case, world):
    build, needles = CATALOGUE[case]
    root, run = world
    args = build(world)
    before = tree_digest(run)
    # pipeline cases point --out at the finished run dir: its earlier artifacts must survive
    proc = run_cli_inprocess(*args, "--out", str(run)) if args[0] == "pipeline" else run_cli_inprocess(*args)
    assert_one_line_error(proc, *needles)
    assert tree_digest(run) == before, "earlier artifacts changed"
    assert not (root / "pwned").exists(), "code from a malicious checkpoint ran"


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "pipeline", write_recipe(tmp_path / "r.yaml", {"prune.rate": 2}))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_refuses_foreign_non_empty_out_dir(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    proc = run_cli("pipeline", write_recipe(tmp_path / "r.yaml"), "--out", foreign)
    assert_one_line_error(proc, "not a vtpdeploy run dir")
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_second_pipeline_on_locked_run_dir_exits_2(tmp_path):
    import fcntl

    run = make_run_dir(tmp_path, "run")
    with open(run / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = tree_digest(run)
        proc = run_cli("pipeline", write_recipe(tmp_path / "r.yaml"), "--out", run)
        assert_one_line_error(proc, "another vtpdeploy pipeline")
        assert tree_digest(run) == before
