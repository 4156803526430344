"""benchmarks/deit_base.py, latency_planning.py, sublayer_removal.py --quick and gate_overhead.py run end to end on
tiny models.

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
    "bench", "environment", "wall_s", "peers", "vtp40_vs_peers", "int8_vtp40_vs_int8_deit_base", "op_profile_ort_b1",
    "baseline_spread_pct",
}
HAVE_TP = importlib.util.find_spec("torch_pruning") is not None
ROW_KEYS = {"model", "backend", "runtime", "precision", "batch", "speedup", "speedup_ci", "mac_ratio",
            "efficiency", "efficiency_ci"}
PLAN_KEYS = {"profile", "requested_rate", "realised_rate", "importance", "params", "macs", "params_saved_pct",
             "macs_saved_pct", "compact_vs_mask_max_diff", "hardware_violations", "v_dims_per_head", "per_kind"}


@pytest.mark.skipif(not HAVE_TP, reason="torch-pruning (the `bench` extra) is not installed")
def test_deit_base_quick_writes_results(tmp_path, capsys):
    out = tmp_path / "bench"
    res = _load("deit_base").main(["--out", str(out), "--quick", "--no-openvino"])
    printed = capsys.readouterr().out
    assert "RANDOM INIT" in printed and "weight_l1" in printed and "SYNTHETIC" in printed
    assert "per-operator profile" in printed and "| MatMul |" in printed
    assert "| attention products (QKᵀ, attn·V) |" in printed
    data = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(data)
    assert data["random_init"] is True and data["quick"] is True and data["importance"] == "weight_l1"
    for f in ("deit_base.onnx", "vtp20.onnx", "vtp40.onnx", "vtp40_none.onnx", "vtp40_nogather.onnx", "vtp40_nogather_heads.onnx",
              "tp_uniform.onnx", "tp_bottleneck.onnx", "vtp40.int8.onnx", "deit_base.int8.onnx", "vtp40_nogather_heads.int8.onnx",
              "vtp20.safetensors", "vtp20.json", "vtp40.safetensors", "vtp40.json"):
        assert (out / f).is_file(), f
    assert set(data["plans"]) == {"vtp20", "vtp40", "vtp40_gather", "vtp40_none", "vtp40_nogather", "vtp40_nogather_heads"}
    for label, p in data["plans"].items():
        assert PLAN_KEYS <= set(p)
        assert p["hardware_violations"] == []
        assert p["compact_vs_mask_max_diff"] <= 1e-4
        if not label.startswith("vtp40_nogather"):  # their rate is searched for VTP-40's MACs
            assert abs(p["realised_rate"] - p["requested_rate"]) <= 0.02
    assert data["plans"]["vtp40"]["profile"] == "cpu" and data["plans"]["vtp40_none"]["profile"] == "none"
    gather = data["plans"]["vtp40_gather"]  # the same widths as cpu, only which input dims differ
    assert gather["profile"] == "cpu-gather" and (gather["params"], gather["macs"]) == (
        data["plans"]["vtp40"]["params"], data["plans"]["vtp40"]["macs"])
    assert data["plans"]["vtp40_nogather"]["profile"] == "cpu-nogather"
    heads = data["plans"]["vtp40_nogather_heads"]
    assert heads["profile"] == "cpu-nogather" and heads["granularity"] == "head"
    for live, v_dims in zip(heads["live_heads"], heads["v_dims_per_head"]):  # whole heads: a V head is all or nothing
        assert set(v_dims) <= {0, 32} and live == sum(d > 0 for d in v_dims)
    vtp40_macs = data["plans"]["vtp40"]["macs"]
    for mode in ("uniform", "bottleneck"):
        peer = data["peers"][f"tp_{mode}"]
        assert peer["mode"] == mode and abs(peer["macs"] / vtp40_macs - 1) <= 0.01
    rows = data["table"]
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    fp32 = ("vtp20", "vtp40", "vtp40_gather", "vtp40_none", "vtp40_nogather", "vtp40_nogather_heads", "tp_uniform", "tp_bottleneck")
    assert {(r["model"], r["precision"], r["batch"]) for r in rows} == {
        (m, "fp32", b) for m in fp32 for b in (1, 2)} | {
        (m, "int8", b) for m in ("vtp40.int8", "deit_base.int8", "vtp40_nogather.int8", "vtp40_nogather_heads.int8")
        for b in (1, 2)}
    for r in rows:
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["mac_ratio"], rel=1e-2)
    assert data["int8_vs_fp32_unpruned_ort_b1"]["batch"] == 1
    assert data["int8_vs_fp32_unpruned_ort_b1"]["model"] == "vtp40.int8"
    by = {(r["model"], r["batch"]): r for r in rows}
    assert {(p["model"], p["batch"]) for p in data["int8_vtp40_vs_int8_deit_base"]} == {
        (m, b) for m in ("vtp40.int8", "vtp40_nogather.int8", "vtp40_nogather_heads.int8") for b in (1, 2)}
    for pair in data["int8_vtp40_vs_int8_deit_base"]:  # same run: ratio of the two speedups vs fp32 DeiT-B
        expected = by[(pair["model"], pair["batch"])]["speedup"] / by[("deit_base.int8", pair["batch"])]["speedup"]
        assert pair["ratio"] == pytest.approx(expected, rel=0.02) and pair["ci"][0] <= pair["ratio"] <= pair["ci"][1]
    vtp40_models = ("vtp40", "vtp40_nogather", "vtp40_nogather_heads")
    assert {(r["model"], r["vs"], r["batch"]) for r in data["vtp40_vs_peers"]} == {
        (v, f"tp_{m}", b) for v in vtp40_models for m in ("uniform", "bottleneck") for b in (1, 2)}
    assert set(data["op_profile_ort_b1"]) == {"deit_base", *vtp40_models, "vtp40_gather", "tp_bottleneck"}
    assert data["op_profile_ort_b1"]["vtp40"]["ops"]["MatMul"]["ms"] > 0
    for label, prof in data["op_profile_ort_b1"].items():  # the linear role holds every linear MAC of the ONNX model
        macs = data["unpruned"]["macs"] if label == "deit_base" else (data["plans"].get(label) or data["peers"][label])["macs"]
        assert 0.8 * macs < (prof["roles"]["linear"]["gmacs"] + prof["roles"]["attention"]["gmacs"]) * 1e9 <= macs
    targets = {t["target"].split(":")[0] for t in data["targets"]}
    assert {"E >= 1.0"} | {f"{v} >= 5% faster than tp_{m}" for v in vtp40_models for m in ("uniform", "bottleneck")} <= targets
    for m in ("vtp40.int8", "vtp40_nogather.int8", "vtp40_nogather_heads.int8"):
        assert {f"INT8 VTP-40 >= 1.7x INT8 DeiT-B, ORT b1 ({m})", f"INT8 VTP-40 >= 3.5x fp32 DeiT-B, ORT b1 ({m})"} <= targets
    assert set(data["baseline_spread_pct"]) == {"ort|b1", "ort|b2"}
    for group, spread in data["baseline_spread_pct"].items():
        base_row = next(r for r in data["bench"]["fp32"]["results"] if r["role"] == "baseline"
                        and f"{r['backend']}|b{r['batch']}" == group)
        assert spread == pytest.approx(100 * (max(base_row["block_means_ms"]) / min(base_row["block_means_ms"]) - 1), abs=0.06)
    assert len(data["profile_compare_40"]) == 2
    schedules = data["bench"]["fp32"]["schedules"] + data["bench"]["int8"]["schedules"]
    assert schedules and all(sch["block_iters"] == 2 for sch in schedules)  # short interleaved rounds (--block)
    assert data["paper_check"] is None  # only for the real DeiT-B
    assert res["table"] == rows


def test_deit_base_skips_the_peer_arm_in_one_line_without_its_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # as if the `bench` extra were not installed
    out = tmp_path / "bench"
    pages = tmp_path / "results"
    res = _load("deit_base").main(["--out", str(out), "--quick", "--no-openvino", "--no-none", "--no-nogather",
                                   "--no-gather", "--no-int8-s8", "--batches", "1", "--results-dir", str(pages)])
    printed = capsys.readouterr().out
    skip_lines = [line for line in printed.splitlines() if "Torch-Pruning arm skipped" in line]
    assert len(skip_lines) == 1 and "bench" in skip_lines[0]
    assert "Traceback" not in printed
    assert res["peers"] == {} and res["vtp40_vs_peers"] == []
    assert not (out / "tp_uniform.onnx").exists()
    assert {r["model"] for r in res["table"]} == {"vtp20", "vtp40", "vtp40.int8", "deit_base.int8"}  # no nogather
    page = (pages / "deit_base.md").read_text()  # rendered by deit_base_render through results_page.write_page
    assert "| VTP-40 % (`cpu`: inputs sliced) |" in page and "<!--" not in page  # the page and its data, no README block
    assert "python benchmarks/deit_base.py --out" in page and "| MatMul |" in page
    data = json.loads((pages / "deit_base.json").read_text())
    assert data["record"]["targets"] == len(res["targets"])
    assert data["results"]["table"] == json.loads(json.dumps(res["table"])) and "bench" not in data["results"]


def test_latency_planning_quick(tmp_path, capsys):
    out = tmp_path / "lp"
    res = _load("latency_planning").main(["--out", str(out), "--quick", "--backends", "ort", "--targets", "1.2,0.2"])
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res, default=str))
    (run,) = data["runs"]
    assert run["rounds"] in (3, 6) and [p["keep"] for p in run["calibration"]["points"]] == [1.0, 0.7, 0.4]  # 6: noisy, re-measured
    assert run["table_sources"][-1]["source"] in ("fresh", "fresh, not cached")
    reached = [p for p in run["plans"] if "error" not in p]
    unreachable = [p for p in run["plans"] if "error" in p]
    assert [p["fraction"] for p in unreachable] == [0.2]  # fixed costs: a tiny ViT cannot drop to 20 %
    assert "not reachable" in unreachable[0]["error"] and unreachable[0]["passed"] is False
    for p in reached:
        assert p["measured_ms"] > 0 and p["predicted_ms"] <= p["target_table_ms"] + 1e-6
        assert p["target_err_pct"] == pytest.approx(100 * (p["measured_ms"] - p["target_ms"]) / p["target_ms"], abs=1.0)
    assert "| vit_tiny | ort | 20 % |" in capsys.readouterr().out


def test_latency_planning_quick_with_drop_sublayers_records_what_it_removed(tmp_path):
    """A deterministic device (ms from MACs) times the table and the closed loop: load cannot change the plan."""
    import onnx
    from helpers import FakeMeasure

    out = tmp_path / "lpd"
    res = _load("latency_planning").main(["--out", str(out), "--quick", "--backends", "ort", "--targets", "0.7",
                                          "--drop-sublayers", "--steps", "1", "--load-jobs", "1",
                                          "--table-cache", str(tmp_path / "cache")], measure_fn=FakeMeasure())
    assert res["drop_sublayers"] is True and res["load_jobs"] == 1
    # the cache benchmark's two steps: a table built under load, then taken from the cache (checked) to plan
    (run,) = res["runs"]
    assert [(s["phase"], s["source"]) for s in run["table_sources"]] == [("under load", "fresh"), ("planning", "cache")]
    assert run["table_sources"][1]["check"]["mismatch_pct"] == pytest.approx(0.0, abs=1e-6)
    reached = [p for run in res["runs"] for p in run["plans"] if "error" not in p]
    assert reached
    for p in reached:  # what the plan says it removed is what the exported graph lacks (depth 2)
        ops = [n.op_type for n in onnx.load(p["path"]).graph.node]
        removed = p["removed_sublayers"]
        assert set(removed) == {"attn", "mlp"}
        assert ops.count("Softmax") == 2 - len(removed["attn"])
        assert ops.count("LayerNormalization") == 2 * 2 + 1 - len(removed["attn"]) - len(removed["mlp"])


def test_gate_overhead_smoke(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    res = _load("gate_overhead").main(["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch", "2",
                                      "--rounds", "2", "--warmup", "1", "--json", str(out)])
    assert set(res["results"]) == {"input", "weight"}
    for r in res["results"].values():
        assert r["ratio"] > 0 and len(r["ci95"]) == 2
    assert json.loads(out.read_text())["model"] == "vit_tiny_patch16_224"
    assert "ratio" in capsys.readouterr().out


def test_sublayer_removal_quick(tmp_path, capsys):
    """Arms at equal MACs, each exact against its hard-mask model; the doc block is rewritten from the run."""
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n<!-- readme-numbers:sublayer-removal:start -->\nold\n<!-- readme-numbers:sublayer-removal:end -->\n")
    out = tmp_path / "sl"
    res = _load("sublayer_removal").main(["--out", str(out), "--quick", "--no-openvino", "--doc", str(doc)])
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(res, default=str))
    arms = res["arms"]
    assert list(arms) == ["heads2", "heads3_noattn1"]
    assert [(a["removed_attentions"], a["heads"]) for a in arms.values()] == [(0, 2), (1, 3)]
    for a in arms.values():
        assert abs(a["macs_vs_target_pct"]) <= 5.0 and a["compact_vs_mask_max_diff"] <= 1e-4
        assert a["hidden"] % 32 == 0
    assert {(r["model"], r["backend"], r["batch"]) for r in res["vs_deit_base"]} == {
        ("heads2", "ort", 1), ("heads3_noattn1", "ort", 1)}
    (paired,) = res["vs_heads2"]
    assert paired["model"] == "heads3_noattn1" and paired["ci"][0] <= paired["ratio"] <= paired["ci"][1]
    import onnx

    ops = [n.op_type for n in onnx.load(str(out / "heads3_noattn1.onnx")).graph.node]
    assert ops.count("Softmax") == 2 and ops.count("LayerNormalization") == 2 * 3 + 1 - 1  # depth 3, 1 removed
    text = doc.read_text()
    assert "old" not in text and "| `heads3_noattn1` | 1 | 3 |" in text and text.startswith("# x\n")
    assert "| `heads2` | 0 | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("script,argv", [
    ("sublayer_removal", ["--arms", "3"]),
    ("sublayer_removal", ["--doc", "no-such-doc.md"]),
    ("latency_planning", ["--targets", "half"]),
    ("latency_planning", ["--targets", "0"]),
    ("latency_planning", ["--backends", "trt"]),
    ("deit_base", ["--results-dir", "/dev/null"]),
    ("deit_base", ["--block", "0"]),
])
def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys, script, argv):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _load(script).main(["--out", str(out), "--quick", *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err and not out.exists()
