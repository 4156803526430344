"""The Torch-Pruning peer arm of benchmarks/deit_base.py (benchmarks/peer_torch_pruning.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import vtpdeploy

TINY = dict(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=3, num_classes=10)


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("peer_torch_pruning")


@pytest.mark.parametrize("mode", ["uniform", "bottleneck"])
def test_prunes_to_target_macs_and_exports(peer, mode, tmp_path):
    pytest.importorskip("torch_pruning")
    from vtpdeploy.deploy.export import export_onnx

    torch.manual_seed(0)
    base = vtpdeploy.count(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval())["macs"]
    # 61 %, not 60 %: at this width uniform MACs move in steps of ~2-3 % (embed dim and head dims drop 2 at a
    # time), and the two steps around 60 % are 58.8 % and 60.6 %, both just over 1 % off. 61 % is 0.1 % off.
    target = int(0.61 * base)
    model, info = peer.prune_to_macs("vit_tiny_patch16_224", target, mode, model_kwargs=TINY)

    assert peer.missing() is None
    assert info["peer"] == "torch-pruning" and info["mode"] == mode
    assert abs(info["macs"] - target) <= 0.01 * target
    assert info["macs"] == vtpdeploy.count(model)["macs"]
    assert 0 < info["pruning_ratio"] < 0.95 and 1 <= info["trials"] <= 12
    assert len(info["head_dims"]) == len(info["mlp_hidden"]) == 2
    assert (info["embed_dim"] == 96) == (mode == "bottleneck")
    assert max(info["head_dims"]) < 32 and max(info["mlp_hidden"]) < 384

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        assert model(torch.from_numpy(x)).shape == (2, 10)
    export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True, sample=x, atol=1e-4)


def test_unreachable_target_raises(peer):
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    base = vtpdeploy.count(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval())["macs"]
    with pytest.raises(ValueError, match="no pruning ratio"):  # MACs(ratio) is a staircase: no exact hit
        peer.prune_to_macs("vit_tiny_patch16_224", int(0.60 * base) + 1, "uniform", model_kwargs=TINY, tol=0.0)
    with pytest.raises(ValueError, match="mode"):
        peer.prune_to_macs("vit_tiny_patch16_224", int(0.60 * base), "global", model_kwargs=TINY)


def test_missing_torch_pruning_is_a_one_line_skip(peer, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    reason = peer.missing()
    assert reason is not None and "\n" not in reason
    assert "torch-pruning" in reason and "[bench]" in reason
