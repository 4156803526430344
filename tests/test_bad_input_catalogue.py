"""The bad-input catalogue: recipes, data, checkpoints, ONNX files, reports and CLI flags.

Every case must exit 2 with a short message naming the problem, print no traceback, and leave the
earlier artifacts of a finished run dir byte-identical.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import run_cli_inprocess, tree_digest, write_recipe

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from vtpbench_fixtures import make_run_dir  # noqa: E402


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    run = make_run_dir(root, "run")
    (root / "recipe_ok.yaml").write_text(yaml.safe_dump({"prune": {"rate": 0.4}}))
    (root / "bad.yaml").write_text("prune: {rate: 0.4\n")
    (root / "list.yaml").write_text("- just\n- a list\n")
    empty = root / "empty_data"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    noimg = root / "noimg"
    (noimg / "train" / "cat").mkdir(parents=True)
    (noimg / "val" / "cat").mkdir(parents=True)
    (noimg / "train" / "cat" / "readme.txt").write_text("not an image")
    (root / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    (root / "evil.pt").write_bytes(pickle.dumps({"w": _Evil(root / "pwned")}))
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


def R(world, name):  # noqa: N802 - short path helper for the table
    return str(world[0] / name)


CATALOGUE = {
    # recipes
    "recipe: malformed YAML": (lambda w: ["pipeline", R(w, "bad.yaml")], "malformed YAML"),
    "recipe: not a mapping": (lambda w: ["pipeline", R(w, "list.yaml")], "mapping of sections"),
    "recipe: unknown key": (lambda w: ["pipeline", write_recipe(w[0] / "k.yaml", {"model.nmae": "x"})],
                            "unknown key 'model.nmae'"),
    "recipe: rate 1.5": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "prune.rate=1.5"], "prune.rate"),
    "recipe: wrong type": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "train.epochs=many"],
                           "train.epochs"),
    "recipe: --set without =": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "prune.rate"],
                                "expected key.path=value"),
    "recipe: unknown model": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "model.name=vit_nope"],
                              "unknown timm model"),
    "recipe: unsupported model": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "model.name=resnet18",
                                             "--set", "model.kwargs={}"], "not a timm VisionTransformer"),
    # data
    "data: missing folder": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "data.kind=imagefolder",
                                        "--set", f"data.path={R(w, 'nowhere')}"], "does not exist"),
    "data: empty folder": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "data.kind=imagefolder",
                                      "--set", f"data.path={R(w, 'empty_data')}"], "no class folders"),
    "data: no images": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set", "data.kind=imagefolder",
                                   "--set", f"data.path={R(w, 'noimg')}"], "holds no images"),
    # checkpoints
    "checkpoint: corrupt": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set",
                                       f"model.checkpoint={R(w, 'corrupt.safetensors')}"], "corrupt safetensors"),
    "checkpoint: malicious pickle": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set",
                                                f"model.checkpoint={R(w, 'evil.pt')}"], "refused"),
    "checkpoint: mismatched": (lambda w: ["pipeline", R(w, "recipe_ok.yaml"), "--set",
                                          f"model.checkpoint={R(w, 'mismatch.pt')}"], "does not fit"),
    "checkpoint: truncated saved model": (lambda w: ["inspect", R(w, "trunc/model")], "corrupt safetensors"),
    # ONNX files
    "onnx: truncated file to bench": (lambda w: ["bench", R(w, "truncated.onnx"), "--baseline", "none",
                                                 "--iters", "1"], "truncated.onnx"),
    "onnx: missing file to bench": (lambda w: ["bench", R(w, "absent.onnx"), "--baseline", "none"], "absent.onnx"),
    # reports
    "report: malformed JSON": (lambda w: ["gate", R(w, "report_bad.json"), R(w, "rules_ok.yaml")], "report_bad"),
    "report: unknown metric": (lambda w: ["gate", R(w, "report_empty.json"), R(w, "rules_metric.yaml")],
                               "warp_factor"),
    "report: malformed rule": (lambda w: ["gate", R(w, "report_empty.json"), R(w, "rules_syntax.yaml")],
                               "malformed gate"),
    "report: previous rule without --previous": (lambda w: ["gate", R(w, "report_empty.json"),
                                                            R(w, "rules_prev.yaml")], "previous"),
    # CLI flags
    "flag: --batch 0": (lambda w: ["bench", str(w[1]), "--batch", "0", "--baseline", "none"], "batch"),
    "flag: unknown backend": (lambda w: ["bench", str(w[1]), "--backend", "tpu9000", "--baseline", "none"],
                              "tpu9000"),
    "flag: --int8 without --calib": (lambda w: ["export", str(w[1]), "--int8", "--out", R(w, "exp1")], "--calib"),
    "flag: empty calibration dir": (lambda w: ["export", str(w[1]), "--int8", "--calib", R(w, "calib_empty"),
                                               "--out", R(w, "exp2")], "calib"),
    "flag: unknown option": (lambda w: ["pipeline", "--frobnicate"], "frobnicate"),
    "flag: missing source": (lambda w: ["export", R(w, "no_such_run")], "no_such_run"),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input(case, world):
    args_of, needle = CATALOGUE[case]
    root, run = world
    before = tree_digest(run)
    proc = run_cli_inprocess(*args_of(world), "--out", str(run)) if args_of(world)[0] == "pipeline" \
        else run_cli_inprocess(*args_of(world))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-2000:])
    assert 1 <= len(lines) <= 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert needle.lower() in proc.stderr.lower(), (needle, proc.stderr)
    assert tree_digest(run) == before, "earlier artifacts changed"
    assert not (root / "pwned").exists(), "code from a malicious checkpoint ran"


def test_catalogue_is_big_enough():
    assert len(CATALOGUE) >= 20
