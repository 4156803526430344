"""`vtpdeploy inspect`: per-block kept dims, params and MACs of a compact model."""

from __future__ import annotations

import timm
import torch
from helpers import run_cli_inprocess

import vtpdeploy
from vtpdeploy.prune.inspection import block_table


def _compact(tmp_path):
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                          num_classes=10).eval()
    vtpdeploy.add_gates(m)
    for r in vtpdeploy.iter_gates(m):
        r.module.gate.data.uniform_(0.1, 1.0)
    p = vtpdeploy.plan(m, 0.5)
    small = vtpdeploy.compact(m, p).eval()
    vtpdeploy.save(small, tmp_path / "m")
    return small, p


def test_block_table_matches_plan_and_totals(tmp_path):
    small, p = _compact(tmp_path)
    rows, totals = block_table(small, (32, 32))
    assert len(rows) == 2
    for row in rows:
        b = row["block"]
        for kind in vtpdeploy.GATE_KINDS:
            assert row[kind] == len(p.gate(b, kind).kept), (b, kind)
        assert row["v_dims"] == p.v_dims_per_head(b)
    assert sum(r["params"] for r in rows) < totals["params"]
    assert 0 < sum(r["macs"] for r in rows) < totals["macs"] == vtpdeploy.count(small)["macs"]


def test_inspect_cli_prints_one_row_per_block(tmp_path):
    _compact(tmp_path)
    proc = run_cli_inprocess("inspect", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "V dims per head" in proc.stdout
    assert "qkv/fc1 inputs: gathered" in proc.stdout  # plan's default profile `none`: each block its own inputs
    assert sum(1 for line in proc.stdout.splitlines() if line.strip().startswith("│") and "total" not in line) == 2
