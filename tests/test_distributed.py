"""torchrun: a 2-process gloo run on CPU matches a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from helpers import run_cli, write_recipe

from vtpdeploy.prune.plan import PrunePlan

DDP_RECIPE = {"data.augment": False, "data.val_fraction": 0.2507,  # 1346 train images: no sampler padding
              "data.batch_size": 64, "threads": 1, "train.epochs": 2,
              "sparsify.epochs": 2, "finetune.epochs": 1}


def _overlap(a: PrunePlan, b: PrunePlan) -> float:
    kept_a = {(g.block, g.kind, i) for g in a.gates for i in g.kept}
    kept_b = {(g.block, g.kind, i) for g in b.gates for i in g.kept}
    return len(kept_a & kept_b) / max(len(kept_a), len(kept_b))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_gloo_matches_one_process(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", DDP_RECIPE)
    one = run_cli("pipeline", recipe, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "vtpdeploy", "pipeline", str(recipe),
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=900, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert all(manifest["stages"][s]["status"] == "done" for s in ("train", "sparsify", "prune", "finetune", "compact"))
    overlap = _overlap(PrunePlan.load(tmp_path / "one" / "plan.json"), PrunePlan.load(tmp_path / "two" / "plan.json"))
    print(f"1-vs-2-process plan overlap: {overlap:.4f}")
    assert overlap >= 0.95
    # Only rank 0 wrote: one manifest, no leftover temp files from a second writer.
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_global_batch_must_split_across_ranks():
    from vtpdeploy.errors import RecipeError
    from vtpdeploy.train.setup import micro_batching
    from vtpdeploy.train.recipe import load_recipe

    r = load_recipe(None, ["data.batch_size=64"])
    assert micro_batching(r, 1) == (64, 1)
    assert micro_batching(r, 2) == (32, 1)
    r = load_recipe(None, ["data.batch_size=64", "data.micro_batch_size=16"])
    assert micro_batching(r, 2) == (16, 2)
    with pytest.raises(RecipeError, match="not a multiple"):
        micro_batching(load_recipe(None, ["data.batch_size=60", "data.micro_batch_size=16"]), 2)
