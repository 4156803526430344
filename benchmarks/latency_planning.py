#!/usr/bin/env python
"""Does latency-guided planning hit its target? The probe of the latency-planning issue, as a user runs it.

    python benchmarks/latency_planning.py --out runs/latplan              # DeiT-S + DeiT-B, ORT + OpenVINO b1
    python benchmarks/latency_planning.py --out /tmp/lp --quick           # tiny ViT smoke run (tests)
    python benchmarks/latency_planning.py --out runs/latcache --models deit_small_patch16_224 --backends ort \
        --load-jobs 2 --table-cache runs/latcache/cache   # the cache issue: table under load, plans on a quiet machine

Per model x backend: measure a latency table (interleaved rounds, calibrated on whole models, same threads
as the final model), plan for targets of 50 / 65 / 80 % of the table's measured unpruned latency
(`weight_l1` importance on random-init weights, `--profile cpu`; `--drop-sublayers` lets plans remove whole
attentions / MLPs) with the closed loop of
`vtpdeploy.latency` (plan, measure the compact model, correct, re-plan: `--steps`), export each
final plan with the one exporter (batch 1, static, as the table's parts), and benchmark them interleaved against the unpruned model in one run.
Reports the final plan's prediction (made before it was measured) vs its measurement (`pred_err`, with the
prediction scaled by the drift of the unpruned model between the table and the final run; `pred_err_raw_pct`
in results.json without), the table-only prediction error of the first step, and measured vs target
(`target_err`, target = fraction x the unpruned latency measured in that same final run). Writes
DIR/results.json; prints a table.

`--table-cache DIR` takes the table as the pipeline does (`latency.obtain_table`: cached tables are checked before
reuse, noisy ones are not cached) instead of measuring a fresh one. `--load-jobs N` first builds the table while N
CPU-burning processes run, stops them, then takes the table again from that cache for planning: each step's
`source`, age, spread and check are in results.json (`table_sources`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import vtpdeploy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_vit import QUICK_KW, image_sample, random_models  # noqa: E402  (benchmarks/ is not a package)

PRED_TOL = 10.0  # |predicted - measured| / measured, %
TARGET_BAND = (-15.0, 10.0)  # (measured - target) / target, %


def _say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None, measure_fn=None) -> dict:
    """`measure_fn(part, widths, dims) -> ms` replaces every timing of the table and the closed loop (tests)."""
    args = _parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    runs = []
    for name in args.models.split(","):
        for backend in args.backends.split(","):
            runs.append(_probe(args, name, backend, measure_fn))
    rows = [row for run in runs for row in run["plans"]]
    results = {
        "schema": "vtpdeploy-latency-planning/1",
        "random_init": True,
        "importance": "weight_l1",
        "profile": args.profile,
        "drop_sublayers": args.drop_sublayers,
        "load_jobs": args.load_jobs,
        "threads": args.threads,
        "targets": [float(t) for t in args.targets.split(",")],
        "criteria": {"pred_err_pct_abs_max": PRED_TOL, "target_err_pct_band": list(TARGET_BAND)},
        "runs": runs,
        "all_passed": all(r["passed"] for r in rows),
        "wall_s": round(time.time() - t_start, 1),
    }
    from vtpdeploy.fileio import atomic_write_text

    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1, default=str))
    _say("")
    _say(markdown_table(results))
    if args.doc:
        from readme_numbers import replace_block

        command = " ".join(["python benchmarks/latency_planning.py", *(argv or [])])
        drop = ", drop_sublayers" if args.drop_sublayers else ""
        body = (f"Produced by `{command}` ({results['wall_s'] / 60:.0f} min, {args.threads} threads, random init, "
                f"`weight_l1`, profile `{args.profile}`{drop}); ✗ marks a miss of |pred err| ≤ {PRED_TOL:.0f} % or "
                f"{TARGET_BAND[0]:+.0f} % ≤ vs target ≤ {TARGET_BAND[1]:+.0f} %.\n\n" + markdown_table(results)
                + f"\n\n<!-- data: {json.dumps({'all_passed': results['all_passed'], 'wall_s': results['wall_s']})} -->")
        atomic_write_text(args.doc, replace_block(args.doc.read_text(), "latency-planning", body))
        _say(f"rewrote the latency-planning block of {args.doc}")
    return results


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny ViT, few rounds (smoke test)")
    ap.add_argument("--models", default=None, help="timm names (default deit_small_patch16_224,deit_base_patch16_224)")
    ap.add_argument("--backends", default="ort,openvino")
    ap.add_argument("--targets", default="0.5,0.65,0.8", help="fractions of the unpruned latency")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--drop-sublayers", action="store_true",
                    help="plans may remove a whole attention or MLP (WidthConstraints.drop_sublayers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the table (default 15)")
    ap.add_argument("--steps", type=int, default=3, help="measure-and-correct steps per plan (1 = table only)")
    ap.add_argument("--table-cache", type=Path, default=None,
                    help="take the table from this cache as the pipeline does (checked, noisy ones not cached)")
    ap.add_argument("--load-jobs", type=int, default=0,
                    help="build the table first while this many CPU-burning processes run (then plan on a quiet machine)")
    ap.add_argument("--duration-s", type=float, default=None, help="timed seconds per model in the final run")
    ap.add_argument("--doc", type=Path, default=None,
                    help="rewrite the readme-numbers:latency-planning block of this Markdown file with the table")
    args = ap.parse_args(argv)
    try:
        fractions = [float(t) for t in args.targets.split(",")]
    except ValueError:
        ap.error(f"--targets: comma-separated fractions of the unpruned latency, got {args.targets!r}")
    if not all(0 < f <= 2 for f in fractions):
        ap.error(f"--targets: each fraction must be in (0, 2], got {args.targets!r}")
    unknown = set(args.backends.split(",")) - {"torch", "ort", "openvino"}
    if unknown:
        ap.error(f"--backends: unknown {', '.join(sorted(unknown))} (choose from torch, ort, openvino)")
    if args.doc and "<!-- readme-numbers:latency-planning:start -->" not in _read(args.doc):
        ap.error(f"--doc {args.doc}: no readme-numbers:latency-planning block to rewrite")
    if args.load_jobs < 0:
        ap.error(f"--load-jobs must be >= 0, got {args.load_jobs}")
    args.models = args.models or ("vit_tiny_patch16_224" if args.quick else
                                  "deit_small_patch16_224,deit_base_patch16_224")
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.duration_s = args.duration_s or (0.3 if args.quick else 5.0)
    return args


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


@contextlib.contextmanager
def _cpu_load(jobs: int):
    """`jobs` busy-looping Python processes, stopped on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(jobs)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def _table(args: argparse.Namespace, gated, backend: str, constraints, out: Path, measure_fn):
    """(table, how each obtain went): fresh into out/table, or through --table-cache (after --load-jobs)."""
    from vtpdeploy.latency import obtain_table

    kw = dict(batch=1, threads=args.threads, constraints=constraints, iters=args.rounds, progress=_say,
              cache_dir=args.table_cache or out / "table", measure_fn=measure_fn)
    sources = []
    if args.load_jobs:
        _say(f"building the table while {args.load_jobs} CPU-burning processes run")
        with _cpu_load(args.load_jobs):
            _, under_load = obtain_table(gated, backend, refresh=True, **kw)
        sources.append({"phase": "under load", **under_load.as_dict()})
    table, source = obtain_table(gated, backend, refresh=args.table_cache is None and not args.load_jobs, **kw)
    return table, [*sources, {"phase": "planning", **source.as_dict()}]


@contextlib.contextmanager
def _plan_measure(args: argparse.Namespace, gated, table, backend: str, constraints, measure_fn):
    """measure(plan) -> ms for the closed loop: RelativeMeasure, or `measure_fn` on the plan's widths."""
    if measure_fn is None:
        from vtpdeploy.latency import RelativeMeasure

        with RelativeMeasure(gated, table, backend, threads=args.threads, constraints=constraints,
                             rounds=3 if args.quick else 6) as measure:
            yield measure
        return
    from vtpdeploy.latency import model_dims
    from vtpdeploy.prune.compact import widths_from_plan

    dims = model_dims(gated)
    yield lambda p: measure_fn("model", tuple(widths_from_plan(p)), dims)


def _probe(args: argparse.Namespace, name: str, backend: str, measure_fn=None) -> dict:
    """Table, three plans, one interleaved run of plans vs the unpruned model."""
    from vtpdeploy import PlanError
    from vtpdeploy.deploy.bench import run_bench
    from vtpdeploy.deploy.export import export_onnx
    from vtpdeploy.latency import plan_to_target
    from vtpdeploy.prune.compact import compact_validated
    from vtpdeploy.prune.profiles import constraints_for

    out = args.out / f"{name}-{backend}"
    out.mkdir(parents=True, exist_ok=True)
    base, gated = random_models(name, QUICK_KW if args.quick else {})
    c = constraints_for(args.profile).model_copy(update={"drop_sublayers": args.drop_sublayers})
    t0 = time.time()
    table, sources = _table(args, gated, backend, c, out, measure_fn)
    table_s = round(time.time() - t0, 1)
    unpruned_table_ms = next(p["measured_ms"] for p in table.calibration.points if p["keep"] == 1.0)
    _say(f"{name} {backend}: table in {table_s}s, unpruned {unpruned_table_ms:.2f} ms, spread {table.spread_pct}%, "
         f"calibration x{table.calibration.scale:.3f} {table.calibration.offset_ms:+.2f} ms")
    x = image_sample(base)
    # batch 1, static: the same graphs as the table parts and the closed loop timed
    base_path = export_onnx(base, out / "unpruned.onnx", batch=1, sample=x, atol=1e-3).path
    with _plan_measure(args, gated, table, backend, c, measure_fn) as measure:
        planned, unreachable = [], []
        for fraction in (float(f) for f in args.targets.split(",")):
            target_ms = fraction * unpruned_table_ms
            try:
                p, steps = plan_to_target(gated, target_ms, table, c, "weight_l1", measure=measure, steps=args.steps,
                                          progress=_say)
            except PlanError as exc:
                _say(f"{name} {backend} {fraction}: {exc}")
                unreachable.append({"fraction": fraction, "target_table_ms": round(target_ms, 3), "error": str(exc),
                                    "passed": False, "model": name, "backend": backend})
                continue
            small, _ = compact_validated(gated, p, x, atol=1e-4 if args.quick else 5e-4)
            path = export_onnx(small, out / f"plan{round(100 * fraction)}.onnx", batch=1, sample=x, atol=1e-3).path
            planned.append({"fraction": fraction, "target_table_ms": target_ms, "predicted_ms": p.thresholds["predicted_ms"],
                            "table_predicted_ms": round(p.thresholds["table_predicted_ms"], 3), "steps": steps,
                            "first_step_err_pct": round(100 * (steps[0]["predicted_ms"] - steps[0]["measured_ms"])
                                                        / steps[0]["measured_ms"], 1),
                            "realised_rate": round(p.realised_rate, 4), "macs": vtpdeploy.count(small)["macs"],
                            "removed_sublayers": p.removed_sublayers(),
                            "path": str(path)})
    if not planned:
        return {"model": name, "backend": backend, "table_s": table_s, "table_sources": sources, "plans": unreachable}
    rep = run_bench([p["path"] for p in planned], backend=backend, batches=[1], baseline=str(base_path),
                    warmup_s=0.1 if args.quick else 1.0, duration_s=args.duration_s, threads=args.threads)
    p50 = {Path(r["model"]).name: r["latency_ms"]["p50"] for r in rep["results"]}
    unpruned_ms = p50[Path(base_path).name]
    for p in planned:
        measured = p50[Path(p["path"]).name]
        target = p["fraction"] * unpruned_ms
        drift = unpruned_ms / unpruned_table_ms  # the machine's speed now vs while the table was measured
        p.update(measured_ms=round(measured, 3), target_ms=round(target, 3),
                 pred_err_raw_pct=round(100 * (p["predicted_ms"] - measured) / measured, 1),
                 pred_err_pct=round(100 * (p["predicted_ms"] * drift - measured) / measured, 1),
                 target_err_pct=round(100 * (measured - target) / target, 1),
                 predicted_ms=round(p["predicted_ms"], 3), target_table_ms=round(p["target_table_ms"], 3))
        p["passed"] = abs(p["pred_err_pct"]) <= PRED_TOL and TARGET_BAND[0] <= p["target_err_pct"] <= TARGET_BAND[1]
        p.update(model=name, backend=backend)
    return {"model": name, "backend": backend, "table_s": table_s, "table_sources": sources,
            "table_spread_pct": table.spread_pct,
            "rounds": table.rounds, "calibration": table.calibration.model_dump(),
            "unpruned_table_ms": round(unpruned_table_ms, 3), "unpruned_ms": round(unpruned_ms, 3),
            "unpruned_drift_pct": round(100 * (unpruned_ms - unpruned_table_ms) / unpruned_table_ms, 1),
            "plans": planned + unreachable, "environment": rep.get("environment")}


def _removed(plan_row: dict) -> str:
    """' (−2 attn, −1 mlp)' for a plan that removes whole sublayers, else ''."""
    parts = [f"−{len(blocks)} {part}" for part, blocks in plan_row.get("removed_sublayers", {}).items() if blocks]
    return f" ({', '.join(parts)})" if parts else ""


def markdown_table(results: dict) -> str:
    lines = ["| model | backend | target | unpruned ms (drift) | target ms | predicted ms | measured ms | pred err | "
             "vs target | rate | steps (table-only pred err) | table spread |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for p in run["plans"]:
            if "error" in p:
                lines.append(f"| {run['model'].removesuffix('_patch16_224')} | {run['backend']} | "
                             f"{round(100 * p['fraction'])} % | | {p['target_table_ms']:.1f} | not reachable ✗ "
                             "| | | | | | |")
                continue
            mark = "" if p["passed"] else " ✗"
            lines.append(f"| {run['model'].removesuffix('_patch16_224')} | {run['backend']} | {round(100 * p['fraction'])} % "
                         f"| {run['unpruned_ms']:.1f} ({run['unpruned_drift_pct']:+.0f} %) | {p['target_ms']:.1f} | {p['predicted_ms']:.1f} | "
                         f"{p['measured_ms']:.1f} | {p['pred_err_pct']:+.1f} % | {p['target_err_pct']:+.1f} %{mark} | "
                         f"{p['realised_rate']:.2f}{_removed(p)} | {len(p['steps'])} ({p['first_step_err_pct']:+.1f} %) | "
                         f"{run['table_spread_pct']} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
