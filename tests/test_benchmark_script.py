"""benchmarks/deit_base.py --quick and benchmarks/gate_overhead.py run end to end on tiny models.

No timing assertions: only that the scripts run, write their files and report the documented keys.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


RESULT_KEYS = {
    "schema", "model", "random_init", "quick", "importance", "profile", "notes", "unpruned", "plans", "int8",
    "table", "latency_ms", "int8_vs_fp32_unpruned_ort_b1", "targets", "profile_compare_40", "paper_check",
    "bench", "environment", "wall_s",
}
ROW_KEYS = {"model", "backend", "runtime", "precision", "batch", "speedup", "speedup_ci", "mac_ratio",
            "efficiency", "efficiency_ci"}
PLAN_KEYS = {"profile", "requested_rate", "realised_rate", "importance", "params", "macs", "params_saved_pct",
             "macs_saved_pct", "compact_vs_mask_max_diff", "hardware_violations", "v_dims_per_head", "per_kind"}


def test_deit_base_quick_writes_results(tmp_path, capsys):
    out = tmp_path / "bench"
    res = _load("deit_base").main(["--out", str(out), "--quick", "--no-openvino"])
    printed = capsys.readouterr().out
    assert "RANDOM INIT" in printed and "weight_l1" in printed and "SYNTHETIC" in printed
    data = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(data)
    assert data["random_init"] is True and data["quick"] is True and data["importance"] == "weight_l1"
    for f in ("deit_base.onnx", "vtp20.onnx", "vtp40.onnx", "vtp40_none.onnx", "vtp40.int8.onnx",
              "vtp20.safetensors", "vtp20.json", "vtp40.safetensors", "vtp40.json"):
        assert (out / f).is_file(), f
    assert set(data["plans"]) == {"vtp20", "vtp40", "vtp40_none"}
    for label, p in data["plans"].items():
        assert PLAN_KEYS <= set(p)
        assert p["hardware_violations"] == []
        assert abs(p["realised_rate"] - p["requested_rate"]) <= 0.02
        assert p["compact_vs_mask_max_diff"] <= 1e-4
    assert data["plans"]["vtp40"]["profile"] == "cpu" and data["plans"]["vtp40_none"]["profile"] == "none"
    rows = data["table"]
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    # ORT fp32: vtp20, vtp40, vtp40_none at b1 and b2; ORT int8: vtp40.int8 at b1 and b2
    assert {(r["model"], r["precision"], r["batch"]) for r in rows} == {
        (m, "fp32", b) for m in ("vtp20", "vtp40", "vtp40_none") for b in (1, 2)} | {
        ("vtp40.int8", "int8", b) for b in (1, 2)}
    for r in rows:
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["mac_ratio"], rel=1e-2)
    assert data["int8_vs_fp32_unpruned_ort_b1"]["batch"] == 1
    assert {t["target"].split(":")[0] for t in data["targets"]} >= {"E >= 1.0", "INT8+VTP-40 >= 3.0x vs fp32 unpruned, ORT b1"}
    assert len(data["profile_compare_40"]) == 2
    assert data["paper_check"] is None  # only for the real DeiT-B
    assert res["table"] == rows


def test_gate_overhead_smoke(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    res = _load("gate_overhead").main(["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch", "2",
                                      "--rounds", "2", "--warmup", "1", "--json", str(out)])
    assert set(res["results"]) == {"input", "weight"}
    for r in res["results"].values():
        assert r["ratio"] > 0 and len(r["ci95"]) == 2
    assert json.loads(out.read_text())["model"] == "vit_tiny_patch16_224"
    assert "ratio" in capsys.readouterr().out
