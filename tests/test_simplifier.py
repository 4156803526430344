"""`--simplifier auto|onnxslim|onnxsim|none`: each kept graph validates; the tool that ran is recorded."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
from helpers import assert_one_line_error, make_run_dir, run_cli_inprocess, tiny_vit

from vtpdeploy.deploy.export.onnx_export import export_onnx, resolve_simplifier

HAS_ONNXSIM = importlib.util.find_spec("onnxsim") is not None


@pytest.fixture(scope="module")
def raw_nodes(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "raw.onnx"
    export_onnx(tiny_vit(), path, simplify=False, openvino=False)
    return len(onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("tool", [
    "onnxslim",
    pytest.param("onnxsim", marks=pytest.mark.skipif(not HAS_ONNXSIM, reason="onnxsim extra not installed")),
])
def test_each_simplifier_shrinks_the_graph_and_validates(tool, tmp_path, raw_nodes):
    res = export_onnx(tiny_vit(), tmp_path / "m.onnx", simplifier=tool, openvino=False)
    assert res.simplified and res.simplifier == tool and res.simplify_note is None
    simplified = [v for v in res.validations if v["stage"] == "fp32-simplified"]
    assert len(simplified) == 1 and simplified[0]["max_abs_diff"] <= 1e-4
    assert len(onnx.load(str(tmp_path / "m.onnx")).graph.node) < raw_nodes


def test_none_and_no_simplify_keep_the_exported_graph(tmp_path, raw_nodes):
    for kw in ({"simplifier": "none"}, {"simplify": False, "simplifier": "onnxslim"}):
        res = export_onnx(tiny_vit(), tmp_path / "m.onnx", openvino=False, **kw)
        assert not res.simplified and res.simplifier is None
        assert [v["stage"] for v in res.validations] == ["fp32"]
        assert len(onnx.load(str(tmp_path / "m.onnx")).graph.node) == raw_nodes


def test_auto_picks_onnxsim_when_installed():
    assert resolve_simplifier("auto") == ("onnxsim" if HAS_ONNXSIM else "onnxslim")
    assert resolve_simplifier("onnxslim") == "onnxslim"


def test_missing_onnxsim_keeps_the_unsimplified_model_with_a_note(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import onnxsim now raises ImportError
    res = export_onnx(tiny_vit(), tmp_path / "m.onnx", simplifier="onnxsim", openvino=False)
    assert not res.simplified and "onnxsim not installed" in res.simplify_note
    assert (tmp_path / "m.onnx").is_file()


def test_cli_records_the_simplifier_and_rejects_unknown_ones(tmp_path):
    run = make_run_dir(tmp_path)
    proc = run_cli_inprocess("export", str(run), "--out", str(tmp_path / "exp"), "--simplifier", "onnxslim",
                             "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert report["config"]["simplifier"] == "onnxslim" and report["simplifier"] == "onnxslim"
    assert_one_line_error(run_cli_inprocess("export", str(run), "--simplifier", "polygraphy"), "--simplifier")
    assert not (run / "export").exists()
