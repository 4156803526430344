"""MNIST-format (IDX) data: reading, the seeded val split, Fashion-MNIST as a named source, clean refusals."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import vtpdeploy.idx_data as idx_data
from helpers import assert_one_line_error, run_cli, tree_digest
from vtpdeploy.data import DataSection, build_dataset, num_classes_of, validate_data
from vtpdeploy.errors import DataError, PlanError

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "recipes" / "fashion_mnist.yaml"


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_folder(root: Path, n_train: int = 120, n_test: int = 40, gz: bool = True, seed: int = 0) -> dict:
    """A tiny MNIST-format folder: class c images are bright in row band c (learnable), standard file names."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c: 2 * c + 3, :] = 250
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        arrays[split] = (images.astype(np.uint8), labels)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_splits_keep_official_test_and_carve_a_seeded_stratified_val(tmp_path, gz):
    arrays = write_idx_folder(tmp_path / "d", gz=gz)
    section = DataSection(kind="idx", path=tmp_path / "d", val_fraction=0.25, split_seed=3)
    train, val, test = (build_dataset(section, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (90, 30, 40)
    assert not set(train.indices) & set(val.indices)
    assert np.bincount(val.targets[val.indices], minlength=10).tolist() == [3] * 10  # stratified
    img, label = test[7]
    assert label == arrays["t10k"][1][7]
    assert np.array_equal(np.asarray(img)[..., 0], arrays["t10k"][0][7])  # grey replicated into RGB
    again = build_dataset(section.model_copy(update={"split_seed": 3}), "val")
    assert np.array_equal(again.indices, val.indices)
    other = build_dataset(section.model_copy(update={"split_seed": 4}), "val")
    assert not np.array_equal(other.indices, val.indices)
    assert num_classes_of(section) == 10


def test_idx_limit_takes_a_seeded_subset_of_each_split(tmp_path):
    write_idx_folder(tmp_path / "d")
    section = DataSection(kind="idx", path=tmp_path / "d", val_fraction=0.25, limit=12)
    assert [len(build_dataset(section, s)) for s in ("train", "val", "test")] == [12, 12, 12]


@pytest.mark.parametrize("damage,needle", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated or corrupt"),
    (lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + p.read_bytes()[4:]), "bad header"),
    (lambda p: p.write_bytes(b"not gzip at all"), "cannot read"),
    (lambda p: p.unlink(), "has no t10k-images-idx3-ubyte"),
])
def test_corrupt_or_missing_idx_files_are_a_data_error(tmp_path, damage, needle):
    write_idx_folder(tmp_path / "d", gz=False)
    target = tmp_path / "d" / "t10k-images-idx3-ubyte"
    if needle == "cannot read":
        target.unlink()
        target = tmp_path / "d" / "t10k-images-idx3-ubyte.gz"
    damage(target)
    idx_data.load_idx_split.cache_clear()
    with pytest.raises(DataError, match=needle):
        validate_data(DataSection(kind="idx", path=tmp_path / "d"))


def test_fashion_mnist_named_source_without_the_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(idx_data.NAMED_SOURCES, "fashion_mnist", tmp_path / "absent")
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        validate_data(DataSection(kind="idx", dataset="fashion_mnist"))


def test_fashion_mnist_package_is_installed_and_complete():
    """CI installs Debian's dataset-fashion-mnist (.ci/run): the official 60,000 / 10,000 split, 10 classes."""
    section = DataSection(kind="idx", dataset="fashion_mnist", val_fraction=5000 / 60000)
    assert num_classes_of(section) == 10
    assert [len(build_dataset(section, s)) for s in ("train", "val", "test")] == [55000, 5000, 10000]


def test_pipeline_refuses_a_corrupt_idx_folder_in_one_line_and_keeps_the_run_dir(tmp_path):
    write_idx_folder(tmp_path / "d")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.arange(7) % 10)))  # 7 labels for 120 images
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    (run / "model.safetensors").write_bytes(b"an earlier result")
    before = tree_digest(run)
    proc = run_cli("pipeline", FASHION, "--out", run, "--set", f"data.path={tmp_path / 'd'}")
    assert_one_line_error(proc, "120 images but 7 labels")
    assert tree_digest(run) == before
    missing = run_cli("pipeline", FASHION, "--out", tmp_path / "new", "--set", f"data.path={tmp_path / 'nope'}")
    assert_one_line_error(missing, "does not exist")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_fashion_recipe_runs_on_any_idx_folder_until_train_then_to_the_end(tmp_path):
    """`--set data.path=DIR` is the only change; `--until train` caches the base and a later run goes on."""
    write_idx_folder(tmp_path / "d", n_train=240, n_test=40)
    run = tmp_path / "run"
    sets = ["--set", f"data.path={tmp_path / 'd'}", "--set", "train.epochs=2", "--set", "sparsify.epochs=1",
            "--set", "finetune.epochs=1", "--set", "model.kwargs.depth=2", "--set", "data.batch_size=32",
            "--set", "prune.target_macs=0.5"]
    first = run_cli("pipeline", FASHION, "--out", run, "--until", "train", *sets)
    assert first.returncode == 0, first.stderr
    assert "stopped after train" in first.stdout
    assert (run / "unpruned.safetensors").is_file() and not (run / "plan.json").exists()
    weights = (run / "unpruned.safetensors").read_bytes()
    second = run_cli("pipeline", FASHION, "--out", run, *sets)
    assert second.returncode == 0, second.stderr
    assert (run / "unpruned.safetensors").read_bytes() == weights  # train was up to date, not re-run
    report = json.loads((run / "report.json").read_text())
    assert report["data"] == "idx"
    share = report["macs"]["compact"] / report["macs"]["unpruned"]
    assert abs(share - 0.5) <= 0.01 * 0.5, share
    assert json.loads((run / "plan.json").read_text())["thresholds"]["macs_share"] == pytest.approx(share, abs=1e-4)


def test_until_names_a_stage(tmp_path):
    proc = run_cli("pipeline", "--out", tmp_path / "r", "--until", "deploy")
    assert_one_line_error(proc, "--until 'deploy'", "train, sparsify")
    assert not (tmp_path / "r").exists()


def test_mac_target_plan_keeps_the_asked_share_within_one_percent():
    from conftest import gated_random
    from helpers import tiny_vit
    from vtpdeploy.prune.mac_target import compact_macs, plan_to_macs
    from vtpdeploy.prune.profiles import constraints_for

    import vtpdeploy

    model = gated_random(tiny_vit())
    full = vtpdeploy.count(model)["macs"]
    for keep in (0.7, 0.55):  # the paper-faithful profile: MAC steps fine enough for a tiny model
        p = plan_to_macs(model, keep, constraints=constraints_for("none"))
        assert abs(compact_macs(model, p) / full - keep) <= 0.01 * keep
        assert p.thresholds["macs_share"] == pytest.approx(compact_macs(model, p) / full, abs=1e-4)
    with pytest.raises(PlanError, match="no plan keeps 0.050 of the MACs within 1 %"):
        plan_to_macs(model, 0.05, constraints=constraints_for("cpu"))


def test_target_macs_unset_keeps_existing_prune_stage_keys():
    from vtpdeploy.train.recipe import load_recipe, section_json

    assert "target_macs" not in section_json(load_recipe(None), "prune")
    assert '"target_macs": 0.5' in section_json(load_recipe(None, ["prune.target_macs=0.5"]), "prune")


def test_kept_fashion_base_still_matches_the_recipe_so_the_frontier_does_not_retrain_it():
    """benchmarks/fashion_base holds the 14-epoch base (about 45 min on 2 cores); a recipe or key change that
    touches the train stage would make every frontier run train it again."""
    from vtpdeploy.train.pipeline import _base_key, _key, compute_settings
    from vtpdeploy.train.recipe import load_recipe, section_json

    recipe = load_recipe(FASHION, ["threads=2"])
    key = _key(_base_key(recipe), section_json(recipe, "train"), json.dumps({}), "train", compute_settings(recipe))
    manifest = json.loads((ROOT / "benchmarks" / "fashion_base" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["key"] == key
