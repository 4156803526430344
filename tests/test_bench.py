"""Bench statistics, the interleaved loop, and the report schema of a real (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run_dir

from vtpdeploy.deploy.bench import stats
from vtpdeploy.deploy.bench.loop import Slot, measure, warmup
from vtpdeploy.deploy.bench.schema import Row
from vtpdeploy.deploy.runners.base import Runner


# ---- statistics on synthetic latencies (no timing) -----------------------------------------------
def test_summary_and_throughput():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["p50"] == 2.5
    assert set(s) == {"mean", "p50", "p90", "p95", "p99", "min", "max"}
    assert stats.throughput([10.0, 10.0], batch=8) == pytest.approx(800.0)


def test_bootstrap_recovers_known_ratio():
    rng = np.random.default_rng(1)
    drift = np.linspace(1.0, 1.5, 200)  # a machine slowing down, shared by both (paired rounds)
    base = 10.0 * drift * rng.lognormal(0, 0.05, 200)
    cand = 5.0 * drift * rng.lognormal(0, 0.05, 200)
    sp, lo, hi = stats.bootstrap_speedup(base, cand, seed=0)
    assert lo <= sp <= hi
    assert lo < 2.0 < hi and hi - lo < 0.1
    assert stats.bootstrap_speedup(base, cand, seed=0) == (sp, lo, hi)  # seeded
    _, ulo, uhi = stats.bootstrap_speedup(base, cand, seed=0, paired=False)
    assert uhi - ulo > hi - lo  # unpaired ignores the shared drift, so it is wider


def test_bootstrap_self_comparison_contains_one():
    rng = np.random.default_rng(2)
    a = rng.lognormal(0, 0.2, 100)
    b = rng.lognormal(0, 0.2, 100)
    sp, lo, hi = stats.bootstrap_speedup(a, b, seed=0)
    assert lo <= 1.0 <= hi and lo <= sp <= hi
    assert stats.bootstrap_speedup(a, a, seed=0) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("n, n_boot, seed, conf", [(2, 500, 0, 0.95), (17, 2000, 3, 0.9), (60, 1000, 7, 0.99)])
def test_paired_bootstrap_resamples_shared_rounds_with_the_given_seed(n, n_boot, seed, conf):
    """The interval is the percentile bootstrap over round indices drawn once for both arrays."""
    rng = np.random.default_rng(n)
    drift = np.linspace(1.0, 2.0, n)
    base, cand = 10.0 * drift * rng.lognormal(0, 0.1, n), 6.0 * drift * rng.lognormal(0, 0.1, n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ratios = base[idx].mean(axis=1) / cand[idx].mean(axis=1)
    want_lo, want_hi = np.quantile(ratios, [(1 - conf) / 2, (1 + conf) / 2])
    sp, lo, hi = stats.bootstrap_speedup(base, cand, n_boot=n_boot, seed=seed, conf=conf)
    assert sp == pytest.approx(base.mean() / cand.mean(), rel=1e-12)
    assert lo == pytest.approx(min(want_lo, sp), rel=1e-12) and hi == pytest.approx(max(want_hi, sp), rel=1e-12)


# ---- the interleaved loop with fake runners --------------------------------------------------------
class Counting(Runner):
    log: list = []

    def __init__(self, name):
        super().__init__(name)
        self.name = name

    def infer(self, x):
        Counting.log.append(self.name)
        return x


def test_interleaving_order_and_iters():
    Counting.log = []
    x = np.zeros((1, 3, 4, 4), np.float32)
    slots = [Slot("base", Counting("A"), x), Slot("cand", Counting("B"), x), Slot("c2", Counting("C"), x)]
    warmup(slots, warmup_s=0.0, min_iters=2)
    assert all(s.warmup_iters == 2 for s in slots)
    Counting.log = []
    sched = measure(slots, duration_s=None, iters=25, block_iters=10)
    assert sched["sequence"] == "ABC" "CBA" "ABC"  # 10 + 10 + 5 iterations, order alternates each round
    assert sched["slots"] == {"A": "base", "B": "cand", "C": "c2"} and sched["rounds"] == 3
    assert [len(s.latencies_ms) for s in slots] == [25, 25, 25]
    assert [len(s.block_means_ms) for s in slots] == [3, 3, 3]
    assert Counting.log[:10] == ["A"] * 10 and Counting.log[30:40] == ["C"] * 10


def test_duration_mode_runs_at_least_two_rounds():
    x = np.zeros((1, 3, 4, 4), np.float32)
    slots = [Slot("a", Counting("A"), x), Slot("b", Counting("B"), x)]
    warmup(slots, warmup_s=0.0)
    sched = measure(slots, duration_s=0.01, iters=None, block_iters=5)
    assert sched["rounds"] >= 2 and len(slots[0].block_means_ms) == len(slots[1].block_means_ms)


# ---- a real tiny run: report schema ----------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def report(run_dir):
    from vtpdeploy.deploy.bench import BenchOptions, run_bench

    options = BenchOptions(backend="torch,ort", batches=[1, 2], warmup_s=0.0, iters=20, threads=1, block_iters=3)
    return run_bench([run_dir], options, block_iters=5)  # a keyword overrides the options' field


NUM = (int, float)


def test_report_schema(report, run_dir):
    assert report["schema_version"] == 1
    assert set(report) >= {"schema_version", "results", "comparison", "environment", "settings", "schedules"}
    assert len(report["results"]) == 2 * 2 * 2  # 2 models x 2 backends x 2 batches
    for r in report["results"]:
        assert isinstance(r["model"], str) and r["backend"] in ("torch", "ort") and r["batch"] in (1, 2)
        assert r["role"] in ("baseline", "candidate")
        assert set(r["latency_ms"]) == {"mean", "p50", "p90", "p95", "p99", "min", "max"}
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert isinstance(r["throughput_ips"], NUM) and r["throughput_ips"] > 0
        assert r["peak_mem_mb"] is None or isinstance(r["peak_mem_mb"], NUM)
        assert r["memory"]["method"] in ("rss_hwm_delta", "rss_sampled_delta")
        assert isinstance(r["macs"], int) and isinstance(r["params"], int) and r["counts_from"] == "report.json"
        assert isinstance(r["file_mb"], float) and r["file_mb"] > 0
        assert r["iters"] == 20 and r["blocks"] == 4 and r["input_shape"] == [r["batch"], 3, 32, 32]
        # ORT spins inside a run only: spinning left over from one model's run must not slow the next one
        assert r.get("spin") == ("run" if r["backend"] == "ort" else None)
        # each runner's own extras, only on its rows; every row is a valid typed Row
        assert r.get("precision") == ("fp32" if r["backend"] == "torch" else None) and "tensorrt" not in r
        assert Row.model_validate(r).model_dump(exclude_unset=True) == r
    roles = {r["model"]: r["role"] for r in report["results"]}
    assert roles == {"run/unpruned": "baseline", "run/model": "candidate"}
    assert len(report["comparison"]) == 4
    rep = json.loads((run_dir / "report.json").read_text())
    for c in report["comparison"]:
        lo, hi = c["speedup_ci"]
        assert lo <= c["speedup"] <= hi
        assert c["mac_ratio"] == pytest.approx(rep["macs"]["unpruned"] / rep["macs"]["compact"], rel=1e-3)
        assert c["efficiency"] == pytest.approx(c["speedup"] / c["mac_ratio"], rel=1e-2)
        assert c["candidate"] == "run/model" and c["baseline"] == "run/unpruned"
    for s in report["schedules"]:
        assert s["sequence"] == "AB" "BA" "AB" "BA" and s["slots"] == {"A": "run/unpruned", "B": "run/model"}
    env = report["environment"]
    assert env["cpu_cores"] >= 1 and env["threads"] == 1 and env["packages"]["torch"]
    assert env["gpu"] is None or isinstance(env["gpu"], dict)
    assert env["jetson"] is None and "tensorrt" in env
    json.dumps(report)  # serialisable


def test_comparisons_are_typed_and_the_documented_schema_is_current(report):
    from vtpdeploy.deploy.bench.schema import Comparison, schema_markdown

    assert [Comparison.model_validate(c).model_dump() for c in report["comparison"]] == report["comparison"]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "bench.md").read_text()
    block = doc.split("<!-- bench-schema:start -->\n")[1].split("\n<!-- bench-schema:end -->")[0]
    assert block == schema_markdown(), "regenerate docs/bench.md's schema block (see vtpdeploy/deploy/bench/schema.py)"


def test_onnx_cache_reused_and_keyed_by_sha(run_dir):
    cache = sorted(p.name for p in (run_dir / "bench_cache").glob("*.onnx"))
    assert len(cache) == 4 and all(".b1.onnx" in n or ".b2.onnx" in n for n in cache)
    from vtpdeploy.deploy.bench.artifacts import resolve

    art = resolve(str(run_dir))
    assert art.onnx_for(1).name in cache  # same sha -> same file, no re-export


def test_markdown_and_plot(report, tmp_path):
    from vtpdeploy.deploy.bench.plot import write_plot
    from vtpdeploy.deploy.bench.report import markdown

    md = markdown(report)
    assert "| run/model |" in md and "Speedup vs baseline" in md
    png = write_plot(report, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnx_artifact_params_from_initializers(run_dir, tmp_path):
    from vtpdeploy.deploy.bench.artifacts import resolve

    src = next((run_dir / "bench_cache").glob("model.*.b1.onnx"))
    dst = tmp_path / "lonely.onnx"
    dst.write_bytes(src.read_bytes())
    c = resolve(str(dst)).counts()
    assert c["macs"] is None and c["counts_from"] == "onnx-initializers" and c["params"] > 1000
