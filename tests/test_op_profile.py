"""ONNX Runtime per-op profile (benchmarks/op_profile.py, used by benchmarks/deit_base.py): the runner's profiling
switch, the trace parsing and the side-by-side table."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_vit

from vtpdeploy.deploy.runners.ort_runner import OrtRunner
from vtpdeploy.errors import VtpError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import op_profile  # noqa: E402  (benchmarks/ is not a package)
from op_profile import op_profile_table, ort_op_profile  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from vtpdeploy.deploy.export import export_onnx

    path = tmp_path_factory.mktemp("op_profile") / "tiny.dyn.onnx"
    export_onnx(tiny_vit(), path, dynamic_batch=True, openvino=False)
    return path


@pytest.fixture(scope="module")
def ort_graph_ops(tiny_onnx, tmp_path_factory) -> collections.Counter:
    """Op types of the graph ORT actually runs (after its CPU optimizations), with node counts."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.optimized_model_filepath = str(tmp_path_factory.mktemp("op_profile_opt") / "opt.onnx")
    ort.InferenceSession(str(tiny_onnx), sess_options=opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_runner_writes_a_profile_on_end_profiling(tiny_onnx, tmp_path):
    runner = OrtRunner(tiny_onnx, threads=1, profile_prefix=str(tmp_path / "prof"))
    runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    path = Path(runner.end_profiling())
    assert path.is_file() and path.parent == tmp_path and path.name.startswith("prof")
    events = json.loads(path.read_text())
    assert any(e.get("cat") == "Session" and e.get("name") == "model_run" for e in events)
    assert any(e.get("cat") == "Node" and e["name"].endswith("_kernel_time") for e in events)


@pytest.mark.parametrize("spin, entries", [
    ("on", {"session.force_spinning_stop": "", "session.intra_op.allow_spinning": ""}),
    ("run", {"session.force_spinning_stop": "1", "session.intra_op.allow_spinning": ""}),
    ("off", {"session.force_spinning_stop": "", "session.intra_op.allow_spinning": "0"}),
])
def test_runner_spin_sets_the_session_config(tiny_onnx, spin, entries):
    runner = OrtRunner(tiny_onnx, threads=2, spin=spin)
    opts = runner.session.get_session_options()
    for key, value in entries.items():
        assert _config_entry(opts, key) == value
    eager = OrtRunner(tiny_onnx, threads=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.abs(runner.infer(x) - eager.infer(x)).max() <= 1e-5


def _config_entry(opts, key: str) -> str:
    """The session config value of `key`, "" when unset (ORT raises for a key never set)."""
    try:
        return opts.get_session_config_entry(key)
    except Exception:  # noqa: BLE001 - onnxruntime's pybind Fail, not importable as a class
        return ""


def test_runner_rejects_an_unknown_spin(tiny_onnx):
    with pytest.raises(VtpError, match="ORT thread spinning 'sometimes': choose one of on, run, off"):
        OrtRunner(tiny_onnx, spin="sometimes")


def test_runner_without_profile_prefix_writes_nothing(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's default profile prefix is relative to the working dir
    runner = OrtRunner(tiny_onnx, threads=1)
    runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch", [1, 2])
def test_op_profile_sums_and_matches_the_graph_ort_runs(tiny_onnx, ort_graph_ops, batch):
    prof = ort_op_profile(tiny_onnx, batch=batch, threads=1, iters=4, warmup=2)
    assert (prof["model"], prof["batch"], prof["threads"], prof["iters"]) == (str(tiny_onnx), batch, 1, 4)
    ops = prof["ops"]
    assert ops["MatMul"]["ms"] > 0
    assert set(ops) <= set(ort_graph_ops)
    for op, row in ops.items():
        assert isinstance(row["nodes"], int) and row["nodes"] > 0
        assert row["nodes"] == ort_graph_ops[op]  # every node of a ViT runs once per inference
    assert abs(sum(row["share"] for row in ops.values()) - 1.0) <= 1e-6
    assert abs(prof["total_ms"] - sum(row["ms"] for row in ops.values())) <= 1e-6 * prof["total_ms"]
    ms = [row["ms"] for row in ops.values()]
    assert ms == sorted(ms, reverse=True)


@pytest.mark.parametrize("batch", [1, 2])
def test_op_profile_roles_split_linear_from_attention_with_exact_macs(tiny_onnx, batch):
    """TINY_VIT: 17 tokens, width 48, 2 blocks, 3 heads of 16, MLP 192, 10 classes (head on the class token)."""
    prof = ort_op_profile(tiny_onnx, batch=batch, threads=1, iters=2, warmup=1)
    roles = prof["roles"]
    tokens, width, heads, head_dim, hidden, depth = 17, 48, 3, 16, 192, 2
    linear = depth * tokens * (width * 3 * width + width * width + 2 * width * hidden) + width * 10
    attention = depth * 2 * heads * tokens * tokens * head_dim
    assert round(roles["linear"]["gmacs"] * 1e9) == batch * linear
    assert round(roles["attention"]["gmacs"] * 1e9) == batch * attention
    assert roles["attention"]["nodes"] == 2 * depth and roles["other"]["gmacs"] == 0
    assert abs(sum(r["ms"] for r in roles.values()) - prof["total_ms"]) <= 1e-6 * prof["total_ms"]


def test_node_role_reads_ort_shapes():
    def args(*ins, out):
        return {"input_type_shape": [{"float": s} for s in ins], "output_type_shape": [{"float": out}]}

    assert op_profile.node_role("FusedMatMul", args([1, 12, 197, 64], [1, 12, 64, 197], out=[1, 12, 197, 197])) == \
        ("attention", 12 * 197 * 197 * 64)
    assert op_profile.node_role("MatMul", args([1, 197, 768], out=[1, 197, 2304])) == ("linear", 197 * 2304 * 768)
    assert op_profile.node_role("Gemm", args([197, 3072], [768], out=[197, 768])) == ("linear", 197 * 768 * 3072)
    assert op_profile.node_role("Softmax", args([1, 12, 197, 197], out=[1, 12, 197, 197])) == ("other", 0)


def test_op_profile_drops_the_warmup_runs(tiny_onnx, monkeypatch):
    """Only the last `iters` model_run windows count: a slow fake warm-up kernel must not show up."""
    real = op_profile._per_op

    def with_slow_warmup(events, iters, path):
        first = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
        slow = {"cat": "Node", "name": "warm_kernel_time", "ts": first["ts"], "dur": 10**9,
                "args": {"op_name": "WarmupOnly", "node_index": "0"}}
        return real(events + [slow], iters, path)

    monkeypatch.setattr(op_profile, "_per_op", with_slow_warmup)
    prof = ort_op_profile(tiny_onnx, threads=1, iters=2, warmup=1)
    assert "WarmupOnly" not in prof["ops"] and prof["total_ms"] < 1000


def test_other_dynamic_dims_are_an_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    with pytest.raises(VtpError, match=r"symbolic input dims besides the batch: n \(dim 1\)"):
        ort_op_profile(path, iters=1, warmup=0)


def test_fixed_batch_mismatch_is_an_error(tmp_path):
    from vtpdeploy.deploy.export import export_onnx

    path = tmp_path / "tiny.b1.onnx"
    export_onnx(tiny_vit(), path, batch=1, openvino=False, validate=False)
    with pytest.raises(VtpError, match="fixed batch of 1"):
        ort_op_profile(path, batch=2, iters=1, warmup=0)


def _prof(total: float, ops: dict[str, float]) -> dict:
    return {"model": "m.onnx", "batch": 1, "threads": 1, "iters": 1, "total_ms": total,
            "ops": {op: {"ms": ms, "share": ms / total, "nodes": 1} for op, ms in ops.items()}}


def test_op_profile_table():
    unpruned = _prof(10.0, {"MatMul": 6.0, "Softmax": 2.0, "LayerNormalization": 1.0, "Add": 0.9, "Reshape": 0.1})
    pruned = _prof(6.0, {"MatMul": 3.0, "Softmax": 1.0, "Gather": 0.5, "Add": 0.45, "Split": 0.05})
    table = op_profile_table({"unpruned": unpruned, "pruned": pruned}, top=2)
    lines = table.splitlines()
    assert lines[0] == "| op | unpruned | pruned |"
    assert lines[1] == "|---|---:|---:|"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    # the top 2 of each profile, plus Gather and Split although small; not LayerNormalization, Add, Reshape
    assert list(rows) == ["MatMul", "Softmax", "Gather", "Split", "total"]
    assert rows["MatMul"] == "| MatMul | 6.000 (60.0%) | 3.000 (50.0%) |"
    assert rows["Gather"] == "| Gather | — | 0.500 (8.3%) |"
    assert rows["total"] == "| total | 10.000 (100.0%) | 6.000 (100.0%) |"


def test_op_profile_table_of_a_real_profile(tiny_onnx):
    prof = ort_op_profile(tiny_onnx, threads=1, iters=2, warmup=1)
    table = op_profile_table({"tiny": prof}, top=3)
    assert table.startswith("| op | tiny |")
    for op in list(prof["ops"])[:3]:
        assert f"| {op} |" in table
    if "Gather" in prof["ops"]:
        assert "| Gather |" in table


def test_role_table():
    def prof(linear_ms, linear_g, attn_ms, attn_g, other_ms):
        return {"roles": {"linear": {"ms": linear_ms, "nodes": 1, "gmacs": linear_g},
                          "attention": {"ms": attn_ms, "nodes": 1, "gmacs": attn_g},
                          "other": {"ms": other_ms, "nodes": 1, "gmacs": 0.0}}}

    lines = op_profile.role_table({"a": prof(100.0, 10.0, 8.0, 0.5, 12.0), "b|c": prof(50.0, 5.0, 0.0, 0.0, 9.0)}).splitlines()
    assert lines[0] == "| role | a | b\\|c |"
    assert lines[2].endswith("| 100.0 ms (10.00 G MACs, 10.0 ms/G) | 50.0 ms (5.00 G MACs, 10.0 ms/G) |")
    assert lines[3].endswith("| 8.0 ms (0.50 G MACs, 16.0 ms/G) | 0.0 ms (0.00 G MACs) |")
    assert lines[4].endswith("| 12.0 ms | 9.0 ms |")
