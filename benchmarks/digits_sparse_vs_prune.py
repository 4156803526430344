"""Digits: VTP (sparse training, then prune by gates) vs prune-only (no sparse training, weight L1),
at 20 / 40 / 60 %, plus VTP-40 % with knowledge distillation from the unpruned model and VTP-40 % with
paper-faithful widths (`prune.hardware=none`) instead of the default `cpu` profile, and the structures
of issue 13: gather-free compact models (`prune.hardware=cpu-nogather`), whole-head pruning
(`prune.granularity=head` / `head+dim`) at 40 / 60 %, `prune.hardware=cpu-gather` (each block keeps its own
qkv/fc1 input dims, gathered) against the default `cpu` (one shared ranking of them, sliced), and
`prune.drop_sublayers=true` (an attention or MLP whose gates all fall under τ is removed whole).

    python benchmarks/digits_sparse_vs_prune.py --out runs/digits_cmp [--recipe recipes/quickstart.yaml]

Every arm shares the trained unpruned model: the quickstart run dir is copied and re-run with
overrides, so the pipeline skips the stages whose inputs did not change (train, and for VTP arms
sparsify too). Prints a Markdown table and writes DIR/results.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console

from vtpdeploy.fileio import atomic_write_json
from vtpdeploy.train.pipeline import run_pipeline
from vtpdeploy.train.recipe import load_recipe

ARMS = [
    # name, method label, overrides
    ("vtp20", "VTP (sparse → prune)", ["prune.rate=0.2"]),
    ("vtp40", "VTP (sparse → prune)", ["prune.rate=0.4"]),
    ("vtp60", "VTP (sparse → prune)", ["prune.rate=0.6"]),
    ("only20", "prune-only (weight L1)", ["prune.rate=0.2", "sparsify.enabled=false", "prune.importance=weight_l1"]),
    ("only40", "prune-only (weight L1)", ["prune.rate=0.4", "sparsify.enabled=false", "prune.importance=weight_l1"]),
    ("only60", "prune-only (weight L1)", ["prune.rate=0.6", "sparsify.enabled=false", "prune.importance=weight_l1"]),
    ("vtp40_kd", "VTP + soft KD", ["prune.rate=0.4", "finetune.distill=soft"]),
    ("vtp40_none", "VTP, paper-faithful widths (hardware none)", ["prune.rate=0.4", "prune.hardware=none"]),
    # structures of issue 13: gather-free compact models, whole-head pruning
    ("nogather40", "VTP, gather-free (cpu-nogather)", ["prune.rate=0.4", "prune.hardware=cpu-nogather"]),
    ("nogather60", "VTP, gather-free (cpu-nogather)", ["prune.rate=0.6", "prune.hardware=cpu-nogather"]),
    ("head40", "VTP, whole heads (granularity head)", ["prune.rate=0.4", "prune.granularity=head"]),
    ("head60", "VTP, whole heads (granularity head)", ["prune.rate=0.6", "prune.granularity=head"]),
    ("headdim40", "VTP, heads + V dims (head+dim)", ["prune.rate=0.4", "prune.granularity=head+dim"]),
    ("headdim60", "VTP, heads + V dims (head+dim)", ["prune.rate=0.6", "prune.granularity=head+dim"]),
    ("nogather60_hd", "VTP, gather-free + head+dim", ["prune.rate=0.6", "prune.hardware=cpu-nogather",
                                                       "prune.granularity=head+dim"]),
    # the default `cpu` shares one ranking of the qkv/fc1 inputs (sliced); `cpu-gather` lets each block pick its own
    ("gather40", "VTP, per-block inputs (cpu-gather)", ["prune.rate=0.4", "prune.hardware=cpu-gather"]),
    ("gather60", "VTP, per-block inputs (cpu-gather)", ["prune.rate=0.6", "prune.hardware=cpu-gather"]),
    # an attention / MLP whose every gate falls under τ is removed whole instead of kept at its minimum width
    ("drop40", "VTP, removed sublayers (drop_sublayers)", ["prune.rate=0.4", "prune.drop_sublayers=true"]),
    ("drop60", "VTP, removed sublayers (drop_sublayers)", ["prune.rate=0.6", "prune.drop_sublayers=true"]),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", type=Path, default=None, help="base recipe (default: embedded quickstart)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every arm")
    ap.add_argument("--arms", default=",".join(a[0] for a in ARMS))
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    wanted = args.arms.split(",")
    base = args.out / "base"
    t0 = time.perf_counter()
    run_pipeline(load_recipe(args.recipe, args.overrides + ["prune.rate=0.4"]), base, console)
    rows = []
    for name, method, overrides in ARMS:
        if name not in wanted:
            continue
        run = args.out / name
        if not (run / "manifest.json").exists():
            shutil.copytree(base, run, ignore=shutil.ignore_patterns(".lock", "export", "bench_cache"))
        t = time.perf_counter()
        report = run_pipeline(load_recipe(args.recipe, args.overrides + overrides), run, console)
        rows.append({
            "arm": name, "method": method, "rate": report["plan"]["requested_rate"],
            "realised_rate": report["plan"]["realised_rate"],
            "unpruned": report["accuracy"]["unpruned"], "pruned": report["accuracy"]["pruned"],
            "finetuned": report["accuracy"]["finetuned"],
            "params": report["params"]["compact"], "macs": report["macs"]["compact"],
            "live_heads": [b["live_heads"] for b in report["plan"]["blocks"]],
            "removed_sublayers": report["plan"]["removed_sublayers"],
            "seconds": round(time.perf_counter() - t, 1),
        })
    atomic_write_json(args.out / "results.json", {"rows": rows, "wall_seconds": round(time.perf_counter() - t0, 1),
                                                  "argv": sys.argv})
    print("| arm | method | rate (realised) | val top-1 unpruned | after prune | after fine-tune | params | MACs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['method']} | {r['rate']:.0%} ({r['realised_rate']:.3f}) | {r['unpruned']:.2f} "
              f"| {r['pruned']:.2f} | {r['finetuned']:.2f} | {r['params']:,} | {r['macs']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
