"""How often does the CI latency gate fail a correct build? Rerun .ci/run's bench + gate N times and count.

    python benchmarks/ci_gate_reliability.py [--runs 20] [--run-dir DIR] [--broken] [--json OUT]

Builds recipes/ci_tiny.yaml once (or reuses --run-dir), then runs `vtpdeploy bench ... --gate
.ci/latency_gates.yaml` N times, exactly as .ci/run does, and prints the pass count and the spread
(min / median / max) of the gated statistic (the lower 95 % CI bound of the speedup) and of the point speedup.
--broken swaps the compact model for the unpruned one (a compaction that did nothing): the gate must fail.
Exit 0 when every run of a correct build passes (or every --broken run fails), else 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / ".ci" / "latency_gates.yaml"
# The flags of .ci/run's bench line: keep in step with it.
BENCH_ARGS = ["--backend", "ort", "--batch", "8", "--threads", "1", "--warmup-s", "1", "--duration-s", "10"]


def vtpdeploy(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtpdeploy", *map(str, args)], text=True, capture_output=True,
                          **kw)


def build_run(work: Path) -> Path:
    run = work / "run"
    proc = vtpdeploy("pipeline", ROOT / "recipes" / "ci_tiny.yaml", "--out", run)
    if proc.returncode != 0:
        sys.exit(f"pipeline failed:\n{proc.stderr[-2000:]}")
    return run


def unpruned_candidate(run: Path, work: Path) -> Path:
    """A copy of `run` whose 'compact' model is the unpruned one: what a no-op compaction would ship."""
    broken = work / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns(".lock", "ckpt"))
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(run / f"unpruned{suffix}", broken / f"model{suffix}")
    report = json.loads((broken / "report.json").read_text())
    for key in ("params", "macs"):
        if key in report:
            report[key]["compact"] = report[key]["unpruned"]
    (broken / "report.json").write_text(json.dumps(report))
    return broken


def one_gate(run: Path, out: Path) -> dict:
    t0 = time.time()
    proc = vtpdeploy("bench", run, *BENCH_ARGS, "--json", out, "--gate", RULES, "--quiet")
    if proc.returncode not in (0, 1):
        sys.exit(f"bench could not run (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    comp = json.loads(out.read_text())["comparison"][0]
    load1 = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    return {"passed": proc.returncode == 0, "speedup": comp["speedup"], "lower": comp["speedup_ci"][0],
            "upper": comp["speedup_ci"][1], "load1": load1, "wall_s": round(time.time() - t0, 1)}


def spread(values: list[float]) -> str:
    return f"min {min(values):.3f} / median {statistics.median(values):.3f} / max {max(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--run-dir", type=Path, help="an existing ci_tiny run dir (default: build one)")
    ap.add_argument("--broken", action="store_true", help="gate an unpruned candidate instead (must fail)")
    ap.add_argument("--json", type=Path, help="write every run's numbers here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = args.run_dir or build_run(work)
        if args.broken:
            run = unpruned_candidate(run, work)
        rows = []
        for i in range(args.runs):
            rows.append(one_gate(run, work / f"bench{i}.json"))
            r = rows[-1]
            print(f"run {i + 1:2d}/{args.runs}: {'PASS' if r['passed'] else 'FAIL'}  speedup {r['speedup']:.3f} "
                  f"[{r['lower']:.3f}, {r['upper']:.3f}]  load1 {r['load1']}  {r['wall_s']} s", flush=True)
    passed = sum(r["passed"] for r in rows)
    print(f"{'broken (unpruned) candidate' if args.broken else 'correct build'}: {passed}/{len(rows)} passed "
          f"the gate {RULES.relative_to(ROOT)}")
    print(f"gated statistic (lower CI bound): {spread([r['lower'] for r in rows])}")
    print(f"point speedup:                    {spread([r['speedup'] for r in rows])}")
    if args.json:
        args.json.write_text(json.dumps({"broken": args.broken, "bench_args": BENCH_ARGS, "runs": rows}, indent=1))
    ok = passed == 0 if args.broken else passed == len(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
