"""The quickstart and digits results pages (docs/results/), and the CI check that a fresh quickstart reproduces them.

    python benchmarks/readme_numbers.py [--out runs/readme]      # run quickstart + digits comparison, write the pages
    python benchmarks/readme_numbers.py --check RUN_DIR         # compare a quickstart run dir with the recorded one
    python benchmarks/readme_numbers.py --add-cpu RUN_DIR       # record RUN_DIR as this CPU's reference run
    python benchmarks/readme_numbers.py --pages                 # rewrite both pages from their JSON data only

Each page (`docs/results/quickstart.md`, `digits.md`) is written with `results_page.write_page`; its numbers and the
package versions that produced them are in the JSON sidecar (`quickstart.json`, `digits.json`), which is what the
check reads. The README's small quickstart table quotes the same record (tests/test_readme_numbers.py checks it).
The check allows ±0.5 pt top-1 and ±2 % params/MACs and, on a mismatch, prints the package versions of both runs
(the usual cause).

Seeded training is reproducible on one kind of CPU, not across kinds: the float kernels differ, the trained weights
drift, and the global threshold then cuts other dims (AMD EPYC and Intel Xeon with the same packages: 98.00 vs
99.11 % after fine-tuning, 261,882 vs 263,946 params). The record therefore names its CPU, and `other_cpus` holds a
reference run per further CPU model (`--add-cpu`); the check compares with the reference of the CPU it runs on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_page import RESULTS_DIR, notes, read_data, write_page  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART_COMMAND = "python benchmarks/readme_numbers.py"
ACCURACY_TOL_PT = 0.5
COUNT_TOL = 0.02
STAGES = ("unpruned", "pruned", "finetuned")
# The digits arms the results page shows (benchmarks/digits_sparse_vs_prune.py has more).
README_ARMS = ("vtp20", "vtp40", "vtp60", "only20", "only40", "only60", "vtp40_kd", "vtp40_none",
               "gather40", "gather60", "nogather40", "nogather60", "nogather60_hd", "head60", "headdim60",
               "drop40", "drop60")


def _block_re(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- readme-numbers:{name}:start -->\n)(.*?)(<!-- readme-numbers:{name}:end -->)", re.S)


def replace_block(text: str, name: str, body: str) -> str:
    """Rewrite a generated block of a doc (docs/hardware.md's latency-planning and sublayer-removal tables)."""
    pattern = _block_re(name)
    if not pattern.search(text):
        raise SystemExit(f"error: the doc has no readme-numbers:{name} block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text, count=1)


def quickstart_record(run_dir: Path) -> dict:
    """The numbers the quickstart page records for a quickstart run dir, with its packages and CPU model (the manifest's, else
    this machine's: the check runs where the run ran)."""
    from vtpdeploy.deploy.bench.environment import cpu_model

    report = json.loads((run_dir / "report.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {
        "cpu": manifest.get("cpu") or cpu_model(),
        "accuracy": {k: report["accuracy"][k] for k in STAGES},
        "params": report["params"], "macs": report["macs"],
        "max_abs_diff": report["compaction"]["max_abs_diff"],
        "wall_seconds": report.get("wall_seconds"),
        "packages": manifest.get("packages", {}),
    }


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _pct(new: int, old: int) -> str:
    return f"{(new - old) / old:+.1%}".replace("-", "−")


def quickstart_table(rec: dict) -> str:
    acc, params, macs = rec["accuracy"], rec["params"], rec["macs"]
    versions = ", ".join(f"{k} {v}" for k, v in rec["packages"].items() if k != "vtpdeploy")
    return "\n".join([
        "| | unpruned | compact (VTP 40 %) |",
        "|---|---|---|",
        f"| val top-1 (450 held-out digits) | {acc['unpruned']:.2f} % | {acc['pruned']:.2f} % after pruning, "
        f"**{acc['finetuned']:.2f} %** after fine-tuning ({_signed(acc['finetuned'] - acc['unpruned'])} pt) |",
        f"| params | {params['unpruned']:,} | {params['compact']:,} ({_pct(params['compact'], params['unpruned'])}) |",
        f"| MACs | {macs['unpruned'] / 1e6:.2f} M | {macs['compact'] / 1e6:.2f} M "
        f"({_pct(macs['compact'], macs['unpruned'])}) |",
        f"| compact vs hard-mask model | | max \\|Δlogit\\| {rec['max_abs_diff']:.1e} (tolerance 1e-4) |",
        "",
        f"Produced by `python benchmarks/readme_numbers.py` with {versions}"
        + (f", on {rec['cpu']}." if rec.get("cpu") else "."),
        *(f"On {cpu} the same command gives {o['accuracy']['finetuned']:.2f} % after fine-tuning and "
          f"{o['params']['compact']:,} params (its reference run, recorded with `--add-cpu`)."
          for cpu, o in sorted((rec.get("other_cpus") or {}).items())),
    ])


def digits_table(rows: list[dict], packages: dict) -> str:
    lines = ["| method | rate (realised) | after pruning | after fine-tuning | params | MACs | live heads per block |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        heads = ",".join(str(h) for h in r.get("live_heads") or [])
        removed = [f"−{len(blocks)} {part}" for part, blocks in (r.get("removed_sublayers") or {}).items() if blocks]
        heads += f" ({', '.join(removed)} removed)" if removed else ""
        lines.append(f"| {r['method']} | {r['rate']:.0%} ({r['realised_rate']:.3f}) | {r['pruned']:.2f} | "
                     f"{r['finetuned']:.2f} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {heads} |")
    return "\n".join(lines)


def read_record(results_dir: Path = RESULTS_DIR) -> dict:
    """The recorded quickstart run (quickstart.json, less the command that wrote it)."""
    return {k: v for k, v in read_data("quickstart", results_dir).items() if k != "command"}


def write_quickstart_page(rec: dict, results_dir: Path = RESULTS_DIR) -> Path:
    """quickstart.md + quickstart.json, and the figure the README shows (quickstart_accuracy.png, from the record)."""
    import tempfile

    from vtpdeploy.train.figures import accuracy_and_size

    with tempfile.TemporaryDirectory() as tmp:
        figure = accuracy_and_size({k: rec["accuracy"][k] for k in STAGES}, rec["params"], rec["macs"],
                                   Path(tmp) / "accuracy.png")
        sections = [notes("quickstart.intro"), "![val top-1 per stage, params and MACs](quickstart_accuracy.png)",
                    quickstart_table(rec), notes("quickstart")]
        return write_page("quickstart", "Quickstart results", sections, rec, command=QUICKSTART_COMMAND,
                          figures={"quickstart_accuracy.png": figure}, results_dir=results_dir)


def write_digits_page(record: dict, results_dir: Path = RESULTS_DIR) -> Path:
    return write_page("digits", "VTP vs prune-only on digits",
                      [notes("digits.intro"), digits_table(record["rows"], record["packages"]), notes("digits")],
                      record, command=QUICKSTART_COMMAND, results_dir=results_dir)


def reference_for(record: dict, cpu: str | None) -> dict:
    """The recorded run to compare a run on `cpu` with: its `other_cpus` entry for that CPU model, else the main one."""
    other = (record.get("other_cpus") or {}).get(cpu or "")
    return {**record, **other, "cpu": cpu} if other else record


def check(run_dir: Path, results_dir: Path = RESULTS_DIR) -> list[str]:
    """Differences between a quickstart run dir and the recorded quickstart run of its CPU (empty: reproduced)."""
    got = quickstart_record(run_dir)
    want = reference_for(read_record(results_dir), got["cpu"])
    problems = []
    for stage in STAGES:
        a, b = got["accuracy"][stage], want["accuracy"][stage]
        if abs(a - b) > ACCURACY_TOL_PT:
            problems.append(f"{stage} top-1 {a:.2f} % vs recorded {b:.2f} % (tolerance ±{ACCURACY_TOL_PT} pt)")
    for what in ("params", "macs"):
        for which in ("unpruned", "compact"):
            a, b = got[what][which], want[what][which]
            if abs(a - b) > COUNT_TOL * b:
                problems.append(f"{which} {what} {a:,} vs recorded {b:,} (tolerance ±{COUNT_TOL:.0%})")
    if problems:
        problems.append(f"versions here: {got['packages']}, CPU {got['cpu']}")
        problems.append(f"versions of the recorded run: {want.get('packages')}, CPU {want.get('cpu')} "
                        f"(reference runs exist for: {', '.join([str(want.get('cpu'))] + list(want.get('other_cpus') or {}))})")
    return problems


def kept_references(main: dict, cpu: str) -> dict:
    """The reference runs of the CPUs other than `cpu` once a run on `cpu` becomes the main record: the
    other_cpus entries, plus the old main record when it ran on another CPU (so its CPU stays checkable)."""
    other = {c: o for c, o in (main.get("other_cpus") or {}).items() if c != cpu}
    if main.get("cpu") and main["cpu"] != cpu and "accuracy" in main:
        other[main["cpu"]] = {k: main[k] for k in ("accuracy", "params", "macs", "packages") if k in main}
    return other


def add_cpu(run_dir: Path, results_dir: Path = RESULTS_DIR) -> str:
    """Record `run_dir` in quickstart.json (and its page) as the reference run for its CPU model; returns the CPU."""
    main = read_record(results_dir)
    rec = quickstart_record(run_dir)
    if rec["cpu"] == main.get("cpu"):
        raise ValueError(f"{run_dir} ran on {rec['cpu']}, the CPU of the main record: regenerate instead")
    other = dict(main.get("other_cpus") or {})
    other[rec["cpu"]] = {k: rec[k] for k in ("accuracy", "params", "macs", "packages")}
    write_quickstart_page({**main, "other_cpus": other}, results_dir)
    return rec["cpu"]


def regenerate(out: Path, skip_digits: bool) -> None:
    from rich.console import Console

    from vtpdeploy.train.pipeline import run_pipeline
    from vtpdeploy.train.recipe import load_recipe

    console = Console(stderr=True)
    run_pipeline(load_recipe(None), out / "quickstart", console)
    rec = quickstart_record(out / "quickstart")
    other = kept_references(read_record(), rec["cpu"])
    if other:
        rec["other_cpus"] = other
    print(f"wrote {write_quickstart_page(rec)}")
    if not skip_digits:
        import digits_sparse_vs_prune

        digits_sparse_vs_prune.main(["--out", str(out / "digits_cmp"), "--arms", ",".join(README_ARMS)])
        rows = json.loads((out / "digits_cmp" / "results.json").read_text())["rows"]
        print(f"wrote {write_digits_page({'rows': rows, 'packages': rec['packages']})}")
    print(f"check that the README's quickstart table still quotes {RESULTS_DIR / 'quickstart.json'}")


def rewrite_pages(results_dir: Path = RESULTS_DIR) -> None:
    """Both pages again from their JSON data (after editing benchmarks/notes/), without running anything."""
    write_quickstart_page(read_record(results_dir), results_dir)
    digits = read_data("digits", results_dir)
    write_digits_page({k: v for k, v in digits.items() if k != "command"}, results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/readme"), help="where the runs go")
    ap.add_argument("--check", type=Path, metavar="RUN_DIR", help="only compare RUN_DIR with the recorded run")
    ap.add_argument("--pages", action="store_true", help="only rewrite the pages from their JSON data")
    ap.add_argument("--skip-digits", action="store_true", help="regenerate the quickstart table only")
    ap.add_argument("--add-cpu", type=Path, metavar="RUN_DIR",
                    help="record RUN_DIR as the reference quickstart run for this CPU model (see the module doc)")
    args = ap.parse_args(argv)
    if args.pages:
        rewrite_pages()
        print(f"readme-numbers: rewrote the quickstart and digits pages in {RESULTS_DIR}")
        return 0
    if args.add_cpu is not None:
        if not (args.add_cpu / "report.json").is_file():
            print(f"error: {args.add_cpu}: no report.json (not a finished quickstart run dir)", file=sys.stderr)
            return 2
        try:
            cpu = add_cpu(args.add_cpu)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"readme-numbers: recorded {args.add_cpu} as the reference run on {cpu}")
        return 0
    if args.check is not None:
        if not (args.check / "report.json").is_file():
            print(f"error: {args.check}: no report.json (not a finished quickstart run dir)", file=sys.stderr)
            return 2
        problems = check(args.check)
        for p in problems:
            print(f"readme-numbers: {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"readme-numbers: {args.check} reproduces the recorded quickstart run (docs/results/quickstart.json)")
        return 0
    regenerate(args.out, args.skip_digits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
