"""Calibration sets: reproducible bytes, train split only, loading checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_vit

import vtpdeploy
from vtpdeploy.errors import DataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from vtpdeploy.train.recipe import Recipe

    run = tmp_path_factory.mktemp("calibrun") / "run"
    run.mkdir()
    vtpdeploy.save(tiny_vit(), run / "model")
    (run / "recipe.yaml").write_text(yaml.safe_dump(Recipe().model_dump(mode="json")))
    (run / "manifest.json").write_text("{}")
    return run


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_same_bytes_different_seed_differs(run_dir, tmp_path):
    from vtpdeploy.deploy.export.calib import calib_from_source

    a = calib_from_source(run_dir, tmp_path / "a", n=40, seed=7)
    b = calib_from_source(run_dir, tmp_path / "b", n=40, seed=7)
    c = calib_from_source(run_dir, tmp_path / "c", n=40, seed=8)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a["files"] == b["files"] and a["files"]["calib.npy"] != c["files"]["calib.npy"]
    assert a["indices"] != c["indices"]
    x = np.load(tmp_path / "a" / "calib.npy")
    assert x.dtype == np.float32 and x.shape == (40, 3, 32, 32) and a["shape"] == [40, 3, 32, 32]
    labels = np.load(tmp_path / "a" / "labels.npy")
    assert labels.shape == (40,) and set(labels) <= set(range(10))
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["source"]["split"] == "train" and man["transform"]["input_size"] == [3, 32, 32]


def test_draws_only_from_train_split(run_dir, tmp_path):
    from vtpdeploy.data import DigitsDataset
    from vtpdeploy.deploy.export.calib import calib_from_source

    man = calib_from_source(run_dir, tmp_path / "cal", n=2000, seed=0)
    train = DigitsDataset("train")
    assert man["n"] == len(train)  # capped at the train split size
    assert max(man["indices"]) < len(train)
    val_ids = set(DigitsDataset("val").indices.tolist())
    assert not val_ids & set(train.indices[man["indices"]].tolist())
    with pytest.raises(DataError, match="train split"):
        calib_from_source(run_dir, tmp_path / "v", n=10, split="val")


def test_load_calibration_checks(run_dir, tmp_path):
    from vtpdeploy.deploy.export.calib import calib_from_source, load_calibration

    calib_from_source(run_dir, tmp_path / "cal", n=5, seed=0)
    x, y, man = load_calibration(tmp_path / "cal", (3, 32, 32))
    assert x.shape == (5, 3, 32, 32) and man["n"] == 5
    with pytest.raises(DataError, match="model expects"):
        load_calibration(tmp_path / "cal", (3, 224, 224))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no calib.npy"):
        load_calibration(tmp_path / "empty")
    np.save(tmp_path / "cal" / "calib.npy", np.zeros((5, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match="sha256"):
        load_calibration(tmp_path / "cal")


def test_image_folder_source(tmp_path):
    from PIL import Image

    from vtpdeploy.deploy.export.calib import calib_from_source

    for cls in ("a", "b"):
        d = tmp_path / "imgs" / "train" / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    man = calib_from_source(tmp_path / "imgs", tmp_path / "cal", n=4, seed=1, input_size=(3, 24, 24))
    assert man["shape"] == [4, 3, 24, 24] and man["source"]["split"] == "train"
    assert set(np.load(tmp_path / "cal" / "labels.npy")) <= {0, 1}
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no images"):
        calib_from_source(tmp_path / "none", tmp_path / "cal2", n=4, input_size=(3, 24, 24))
