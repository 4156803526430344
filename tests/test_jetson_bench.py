"""`vtpdeploy bench --tegrastats` end to end on a CPU machine, against stand-in Jetson tools on PATH.

The stand-in `tegrastats` prints Thor lines (format quoted in tests/test_tegrastats.py) with a RAM figure
that grows and a VIN rail that changes, so the report's numbers can be checked against what was printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_run_dir

STAND_IN = f"""#!{sys.executable}
import sys, time
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000 if "--interval" in sys.argv else 1.0
i = 0
while True:
    print(f"08-08-2026 21:00:39 RAM {{3429 + i}}/125749MB (lfb 31x4MB) CPU [90%@2601,75%@2601,off,7%@2601] "
          f"EMC_FREQ 34%@4266 GR3D_FREQ 87%@[1574,1574,1574] VDD_GPU 37939mW/8660mW/37939mW "
          f"VIN {{20000 + 1000 * (i % 2)}}mW/14453mW/28906mW", flush=True)
    i += 1
    time.sleep(interval)
"""
NVPMODEL = "#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n"
JETSON_CLOCKS = ("#!/bin/sh\necho 'cpu0: Online=1 Governor=schedutil MinFreq=2601000 MaxFreq=2601000 CurrentFreq=2601000'\n"
                 "echo 'GPU MinFreq=1574000000 MaxFreq=1574000000 CurrentFreq=1574000000'\n")


def _tool(d: Path, name: str, text: str) -> None:
    (d / name).write_text(text)
    (d / name).chmod(0o755)


def _bench(run: Path, out: Path, path_env: str, *extra: str):
    env = {**os.environ, "PATH": path_env}
    return subprocess.run([sys.executable, "-m", "vtpdeploy", "bench", str(run), "--backend", "ort", "--device", "cpu",
                           "--threads", "1", "--warmup-s", "0.1", "--duration-s", "0.6", "--json", str(out), "-q", *extra],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("jetson"))


def test_bench_samples_stand_in_tegrastats(run_dir, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    _tool(tools, "tegrastats", STAND_IN)
    _tool(tools, "nvpmodel", NVPMODEL)
    _tool(tools, "jetson_clocks", JETSON_CLOCKS)
    out = tmp_path / "r.json"
    res = _bench(run_dir, out, f"{tools}{os.pathsep}{os.environ['PATH']}", "--tegrastats")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning" not in res.stderr
    rep = json.loads(out.read_text())
    assert len(rep["results"]) == 2
    for r in rep["results"]:
        teg = r["memory"]["tegrastats"]
        assert teg["available"] and teg["path"] == str(tools / "tegrastats") and teg["error"] is None
        summ = teg["summary"]
        assert summ["samples"] >= 2 and summ["gpu_freq_mhz"] == 1574 and summ["gpu_load_mean_pct"] == 87.0
        assert summ["ram_total_mb"] == 125749 and 3429 <= summ["ram_used_first_mb"] <= summ["ram_used_max_mb"]
        assert summ["ram_delta_mb"] == summ["ram_used_max_mb"] - summ["ram_used_first_mb"]
        assert 20000 <= summ["rails"]["VIN"]["avg_mw"] <= 21000 and summ["rails"]["VIN"]["max_mw"] in (20000, 21000)
        power = r["power"]
        assert power["input"]["rails"] == ["VIN"] and power["input"]["avg_mw"] == summ["rails"]["VIN"]["avg_mw"]
        assert (power["nvpmodel"], power["nvpmodel_id"], power["jetson_clocks"]) == ("MAXN", 0, True)
        expected_mj = power["input"]["avg_mw"] * r["latency_ms"]["mean"] / 1000.0 / r["batch"]
        assert power["energy"]["mj_per_inference"] == pytest.approx(expected_mj, rel=1e-3)
        mem = r["memory"]["jetson"]
        assert mem["tegrastats_ram_delta_mb"] == summ["ram_delta_mb"] and mem["rss_start_mb"] > 0
        assert mem["rss_peak_mb"] >= mem["rss_start_mb"] and mem["file_mb"] == r["file_mb"] and "method" in mem


def test_missing_tegrastats_is_reported_and_warned_once(run_dir, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "r.json"
    # PATH without tegrastats: only the interpreter's own dir (for nothing else is needed)
    res = _bench(run_dir, out, f"{empty}{os.pathsep}{Path(sys.executable).parent}", "--tegrastats", "--batch", "1,2")
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: tegrastats not found on PATH: no GPU load, power or board RAM in this report"]
    rep = json.loads(out.read_text())
    assert len(rep["results"]) == 4  # two batches x two models, one warning in all
    for r in rep["results"]:
        teg = r["memory"]["tegrastats"]
        assert teg["available"] is False and teg["error"] == "tegrastats not found on PATH" and teg["summary"] is None
        assert r["power"]["input"] is None and r["power"]["energy"] is None
