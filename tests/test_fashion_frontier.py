"""benchmarks/fashion_frontier.py: the statistics, and the --quick machinery end to end (not the targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import frontier_report as fr  # noqa: E402

ROW_FIELDS = {"family", "method", "precision", "level", "seed", "test_top1", "params", "macs", "ort_b1_ms", "ort_b8_ms"}


def test_paired_ci_is_zero_for_equal_predictions_and_brackets_a_known_difference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 4000)
    a = labels.copy()
    b = labels.copy()
    b[:400] = (b[:400] + 1) % 10  # B wrong on 10 % more images
    same = fr.paired_diff_ci(a, a, labels)
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0]}
    d = fr.paired_diff_ci(a, b, labels)
    assert d["diff"] == pytest.approx(10.0)
    assert d["ci95"][0] < 10.0 < d["ci95"][1] and d["ci95"][1] - d["ci95"][0] < 2.5


def test_work_queue_runs_every_method_at_the_middle_level_first_and_scratch_once():
    import fashion_frontier as ff

    q = ff.work_queue(["vtp-sparse-cpu", "scratch"], ["2x", "3x", "4x"], [0, 1])
    assert q[:2] == [("vtp-sparse-cpu", "3x", 0), ("scratch", "3x", 0)]
    assert ("scratch", "3x", 1) not in q and ("vtp-sparse-cpu", "4x", 1) in q
    assert len(q) == len(set(q)) == 6 + 3



@pytest.mark.parametrize("gap, ci, ratio, met", [
    (0.5, [0.1, 0.9], 1.0, True),  # +0.5 pt at any speed
    (0.49, [0.1, 0.9], 1.09, False),  # neither
    (-0.04, [-0.38, 0.30], 1.10, True),  # 10 % faster, the gap not significant
    (-0.30, [-0.60, -0.01], 1.50, False),  # faster but significantly worse: not "matched top-1"
    (0.0, None, None, False),  # no CI or latency: not shown
])
def test_torch_pruning_bar_is_half_a_point_or_ten_percent_faster_at_matched_accuracy(gap, ci, ratio, met):
    import fashion_frontier as ff

    assert ff.beats_peer({"top1_gap": gap, "top1_gap_ci95": ci, "b1_ratio": ratio}) is met


def test_readme_summary_picks_each_familys_best_on_val_among_its_most_seeded_arms():
    def entry(family, method, seeds, val, level="3x"):
        return {"family": family, "method": method, "precision": "fp32", "level": level, "seeds": seeds,
                "val_top1_mean": val, "test_top1_mean": val - 0.5, "macs": 12e6, "ort_b1_ms": 0.7}

    summary = [entry("unpruned", "unpruned", [0], 88.8, "1x"),
               entry("vtpdeploy", "a", [0, 1, 2], 88.5), entry("vtpdeploy", "b", [0, 1, 2], 88.6),
               entry("vtpdeploy", "probe", [0], 89.9), entry("vtpdeploy", "c", [0, 1, 2], 90.0, "2x"),
               entry("torch-pruning", "tp", [0, 1, 2], 88.4), entry("scratch", "scratch", [0], 89.1)]
    _, rows = fr.readme_summary(summary)
    assert [r[0].split(" ")[0] for r in rows] == ["unpruned", "b", "tp", "scratch"]


@pytest.mark.slow
def test_quick_frontier_writes_rows_page_and_figure_and_resumes(tmp_path):
    out = tmp_path / "fq"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fashion_frontier.py"), "--out", str(out), "--quick"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-2000:]
    data = json.loads((out / "results" / "fashion_mnist.json").read_text())
    rows = data["rows"]
    assert {r["family"] for r in rows} >= {"unpruned", "vtpdeploy", "prune-only", "scratch"}
    assert any(r["precision"] == "int8" for r in rows)
    for r in rows:
        assert ROW_FIELDS <= set(r), r
        assert 0.0 <= r["test_top1"] <= 100.0 and r["ort_b1_ms"] > 0 and r["ort_b8_ms"] > 0
    base = next(r for r in rows if r["family"] == "unpruned")
    for r in rows:
        if r["family"] != "unpruned":
            tol = 0.015 if r["family"] == "torch-pruning" else 0.01  # TP's one ratio moves in steps of up to 4 %
            assert abs(r["macs"] / base["macs"] - 1 / 3) <= tol / 3, r
            assert "vs_unpruned" in r
    page = (out / "results" / "fashion_mnist.md").read_text()
    assert "![frontier](fashion_mnist_frontier.png)" in page and "| 3x | vtp-sparse-cpu |" in page
    assert (out / "results" / "fashion_mnist_frontier.png").stat().st_size > 10_000
    results = sorted(out.glob("arms/*/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    again = subprocess.run([*cmd, "--skip-bench"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "pipeline" not in again.stdout  # every arm was finished: nothing re-ran
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_readme_quotes_the_frontier_summary_from_its_sidecar():
    """The README's five-row Fashion-MNIST table is the script's own summary (docs/results/fashion_mnist.json)."""
    from results_page import markdown_table, read_data

    table = markdown_table(*fr.readme_summary(read_data("fashion_mnist")["summary"]))
    readme = (ROOT / "README.md").read_text()
    assert table in readme
    assert "docs/results/fashion_mnist_frontier.png" in readme and (ROOT / "docs/results/fashion_mnist_frontier.png").is_file()
