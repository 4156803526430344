"""Run report: the pipeline leaves report.md + decodable PNGs, `vtpdeploy report` regenerates them, JSON progress."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli, run_cli_inprocess, write_recipe

from vtpdeploy.prune.plan import PrunePlan
from vtpdeploy.train.epoch_log import SUMMARY_FIELDS, read_summary


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    """The tiny pipeline with `--log-format json` (a subprocess, so stderr holds only what the CLI writes)."""
    root = tmp_path_factory.mktemp("report")
    recipe = write_recipe(root / "tiny.yaml", {"sparsify.epochs": 3})
    proc = run_cli("--log-format", "json", "pipeline", recipe, "--out", root / "run")
    assert proc.returncode == 0, proc.stderr
    return root / "run", proc


def _figure_refs(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)


def test_pipeline_leaves_report_md_with_decodable_figures(json_run):
    import matplotlib.image as mpimg

    run, _ = json_run
    md = (run / "report.md").read_text()
    pngs = sorted((run / "figures").glob("*.png"))
    assert len(pngs) >= 4, pngs
    for png in pngs:
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (png, img.shape)
        assert float(np.std(img)) > 0.01, f"{png} is blank"
    assert sorted(_figure_refs(md)) == sorted(f"figures/{p.name}" for p in pngs)
    assert {"accuracy.png", "gate_scores.png", "widths.png", "v_dims.png", "curves.png"} <= {p.name for p in pngs}


def test_report_md_states_the_final_numbers_of_report_json(json_run):
    run, _ = json_run
    md = (run / "report.md").read_text()
    report = json.loads((run / "report.json").read_text())
    for stage, acc in report["accuracy"].items():
        assert f"{acc:.2f} %" in md, stage
    for counts in (report["params"], report["macs"]):
        assert f"{counts['unpruned']:,}" in md and f"{counts['compact']:,}" in md
    assert f"{100 * report['reduction']['params']:.1f} %" in md
    plan = PrunePlan.load(run / "plan.json")
    assert f"global: {plan.thresholds['global']:.4g}" in md  # τ
    for b in report["plan"]["blocks"]:  # the kept widths table
        assert f"| {b['block']} | {b['qkv_in']} / {b['qkv_in_size']} |" in md
    assert "```yaml\nseed: 0" in md  # the recipe that produced it
    assert report["environment"]["threads"] == 1 and report["environment"]["packages"]["torch"]


def test_gate_scores_file_matches_the_plan(json_run):
    """The histogram's data: one |â| per gated dim, and the plan's kept dims are the highest-scoring ones."""
    run, _ = json_run
    scores = json.loads((run / "gate_scores.json").read_text())
    plan = PrunePlan.load(run / "plan.json")
    assert scores["importance"] == "gate" and scores["thresholds"] == plan.thresholds
    assert len(scores["gates"]) == len(plan.gates)
    for row in scores["gates"]:
        g = plan.gate(row["block"], row["kind"])
        assert len(row["gate_abs"]) == g.size
        assert all(v >= 0 for v in row["gate_abs"])
        groups = [range(g.size)] if row["kind"] != "attn_v" else [
            range(h * plan.head_dim, (h + 1) * plan.head_dim) for h in range(plan.num_heads)]  # ranked per head
        for dims in groups:  # the plan keeps the best-scoring dims of each gate (or head)
            kept = [row["gate_abs"][i] for i in dims if i in g.kept]
            pruned = [row["gate_abs"][i] for i in dims if i not in g.kept]
            if kept and pruned:
                assert min(kept) >= max(pruned) - 1e-5, (row["block"], row["kind"])


def test_summary_csv_per_stage_in_timm_format(json_run):
    run, _ = json_run
    report = json.loads((run / "report.json").read_text())
    for stage, epochs in (("train", 2), ("sparsify", 3), ("finetune", 2)):
        path = run / "logs" / stage / "summary.csv"
        assert path.read_text().splitlines()[0] == ",".join(SUMMARY_FIELDS)
        rows = read_summary(path)
        assert [r["epoch"] for r in rows] == list(range(epochs))
        assert [r["train_loss"] for r in rows] == pytest.approx(report["curves"][stage]["loss"])
        assert all(0 <= r["eval_top1"] <= 100 and r["lr"] > 0 and r["epoch_time_s"] > 0 for r in rows)
    sparsify = read_summary(run / "logs" / "sparsify" / "summary.csv")
    assert all(r["train_l1"] > 0 and 0 < r["gate_abs_mean"] for r in sparsify)
    assert read_summary(run / "logs" / "train" / "summary.csv")[0]["gate_abs_mean"] is None  # no gates yet
    # The last fine-tune epoch is validated on the same model the finetune stage reports.
    finetune = read_summary(run / "logs" / "finetune" / "summary.csv")
    assert finetune[-1]["eval_top1"] == pytest.approx(report["accuracy"]["finetuned"], abs=0.01)


def test_log_format_json_lines_parse(json_run):
    run, proc = json_run
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines]  # every stderr line is one JSON object
    kinds = [e["event"] for e in events]
    for stage in ("train", "sparsify", "prune", "finetune", "compact"):
        start = next(i for i, e in enumerate(events) if e["event"] == "stage_start" and e["stage"] == stage)
        end = next(i for i, e in enumerate(events) if e["event"] == "stage_end" and e["stage"] == stage)
        assert start < end
    epochs = [e for e in events if e["event"] == "epoch_end" and e["stage"] == "sparsify"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and all(e["epochs"] == 3 for e in epochs)
    assert kinds[-1] == "pipeline_end"
    assert events[-1]["accuracy"] == json.loads((run / "report.json").read_text())["accuracy"]
    assert "━" not in proc.stderr  # no rich progress bar


def test_skipped_stages_emit_stage_skip_and_report_is_regenerated(json_run, tmp_path):
    run, _ = json_run
    (run / "report.md").unlink()
    proc = run_cli_inprocess("--log-format", "json", "pipeline", str(run / "recipe.yaml"), "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.strip()]
    assert [e["stage"] for e in events if e["event"] == "stage_skip"] == ["train", "sparsify", "prune", "finetune",
                                                                         "compact"]
    assert not [e for e in events if e["event"] in ("stage_start", "epoch_end")]
    assert (run / "report.md").is_file()


def test_report_command_regenerates_and_drops_stale_figures(json_run):
    run, _ = json_run
    (run / "figures" / "old.png").write_bytes(b"stale")
    before = (run / "report.md").read_text()
    proc = run_cli_inprocess("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and not (run / "figures" / "old.png").exists()
    assert (run / "report.md").read_text() == before


def test_report_includes_a_bench_json_when_present(json_run, tmp_path):
    import shutil

    run, _ = json_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lat = {"mean": 2.0, "p50": 1.9, "p90": 2.5, "p95": 2.6, "p99": 3.0, "min": 1.5, "max": 4.0}
    result = {"model": "run/model", "role": "candidate", "backend": "ort", "device": "cpu", "batch": 1,
              "latency_ms": lat, "throughput_ips": 500.0, "peak_mem_mb": 12.0, "macs": 1, "params": 1, "file_mb": 0.1,
              "latencies_ms": [1.9, 2.0, 2.1, 2.5]}
    bench = {"schema_version": 1, "tool": "vtpdeploy bench", "settings": {"device": "cpu"},
             "results": [result, {**result, "model": "run/unpruned", "role": "baseline",
                                  "latency_ms": {k: 2 * v for k, v in lat.items()}}],
             "comparison": [{"candidate": "run/model", "baseline": "run/unpruned", "backend": "ort", "batch": 1,
                             "speedup": 2.0, "speedup_ci": [1.8, 2.2], "mac_ratio": 1.0, "efficiency": 2.0}]}
    (copy / "bench.json").write_text(json.dumps(bench))
    proc = run_cli_inprocess("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    md = (copy / "report.md").read_text()
    assert "## Latency" in md and "figures/latency.png" in md and "2.000x" in md
    (copy / "bench.json").unlink()
    assert run_cli_inprocess("report", str(copy)).returncode == 0
    assert not (copy / "figures" / "latency.png").exists() and "## Latency" not in (copy / "report.md").read_text()


def test_report_on_a_non_run_dir_is_one_line_exit_2(tmp_path):
    assert_one_line_error(run_cli_inprocess("report", str(tmp_path)), "not a vtpdeploy run dir")
    (tmp_path / "manifest.json").write_text("{}")
    assert_one_line_error(run_cli_inprocess("report", str(tmp_path)), "no report.json")
    (tmp_path / "report.json").write_text("{not json")
    assert_one_line_error(run_cli_inprocess("report", str(tmp_path)), "unreadable")
    assert not (tmp_path / "report.md").exists()


def test_unknown_log_format_is_one_line_exit_2():
    assert_one_line_error(run_cli_inprocess("--log-format", "xml", "report", "."), "--log-format")
