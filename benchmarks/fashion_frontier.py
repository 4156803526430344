"""Fashion-MNIST accuracy x latency frontier: vtpdeploy vs prune-only, Torch-Pruning and a dense model from scratch.

    python benchmarks/fashion_frontier.py --out runs/fashion            # the full study (resumable)
    python benchmarks/fashion_frontier.py --out runs/fashion --budget-min 60   # start no arm after 60 min
    python benchmarks/fashion_frontier.py --out runs/fq --quick        # CI: the machinery end to end (minutes)

Every arm starts from one trained base (`recipes/fashion_mnist.yaml`, cached in OUT/base), is pruned to a matched MAC
share (2x / 3x / 4x fewer, within 1 %) and fine-tuned with the same budget; see benchmarks/fashion_arms.py. Finished
arms are skipped on a re-run. Then the best arm of each level (chosen on val) is quantized to INT8 (ONNX Runtime QDQ,
calibrated on train images), every model is timed in one interleaved `vtpdeploy bench` run against the unpruned
model (ORT and OpenVINO, batch 1 and 8), and the page docs/results/fashion_mnist.md (+ .json, + the figure) is
written from whatever has finished. The test set is read only here, for the final tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_arms as fa  # noqa: E402  (benchmarks/ is not a package)
import frontier_report as fr  # noqa: E402
from results_page import RESULTS_DIR, markdown_table, write_page  # noqa: E402

LEVELS = {"2x": 0.5, "3x": 1 / 3, "4x": 0.25}
NOTES = Path(__file__).resolve().parent / "notes" / "fashion_mnist.md"  # the hand-written reading of the numbers
SEEDED = ("vtp-sparse-cpu", "vtp-sparse-heads", "vtp-sparse-drop", "vtp-sparse-qk", "vtp-sparse-qk-lam1e-4",
          "vtp-sparse-qk-lam1e-4-drop", "vtp-sparse-qk-lam1e-4-kd", "prune-only-l1", "tp-uniform", "tp-bottleneck",
          "tp-bottleneck-kd")
QUICK_SETS = ("data.limit=600", "train.epochs=1", "sparsify.epochs=1", "finetune.epochs=1", "log=[]")
QUICK_METHODS = ("vtp-sparse-cpu", "prune-only-l1", "tp-uniform", "scratch")


def work_queue(methods: list[str], levels: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """Most informative first: every method at the middle level, then the other levels, then more seeds."""
    order = sorted(levels, key=lambda lv: (lv != "3x", lv))
    queue = [(m, lv, seeds[0]) for lv in order for m in methods]
    queue += [(m, lv, s) for lv in order for s in seeds[1:] for m in methods if m in SEEDED]
    return queue


def run_arms(study: fa.Study, queue: list[tuple[str, str, int]], budget_min: float | None) -> None:
    t0 = time.time()
    for method, level, seed in queue:
        if budget_min is not None and time.time() - t0 > 60 * budget_min:
            study.say(f"budget of {budget_min:g} min spent; re-run to go on")
            return
        arm_dir = study.out / "arms" / method / f"{level}-s{seed}"
        if fa.read_result(arm_dir):
            continue
        try:
            fa.run_arm(study, method, level, LEVELS[level], seed)
            (arm_dir / "error.txt").unlink(missing_ok=True)  # an earlier failure, now retried and done
        except Exception as exc:  # noqa: BLE001 - one failed arm must not lose the others; it is reported
            arm_dir.mkdir(parents=True, exist_ok=True)
            (arm_dir / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
            study.say(f"{method} {level} s{seed} FAILED: {type(exc).__name__}: {str(exc)[:300]}")


def collect(out: Path) -> list[dict]:
    """Every finished row: the unpruned base, each arm x level x seed, and the INT8 twins."""
    rows = []
    paths = [out / "arms" / "unpruned" / "result.json", *sorted((out / "arms").glob("*/*/result.json")),
             *sorted((out / "arms").glob("*/*/int8/result.json"))]
    for path in paths:
        if not path.is_file():
            continue
        row = json.loads(path.read_text())
        row["id"] = str(path.parent.relative_to(out))
        rows.append(row)
    best = {r["id"] for r in best_per_level(rows).values()}
    # INT8 twins of arms that were the best on val when quantized but no longer are (more seeds came in) stay on
    # disk and out of the tables: one INT8 row per level, of the arm the tables call the best.
    return [r for r in rows if r["precision"] != "int8" or str(Path(r["id"]).parent) in best]


def best_per_level(rows: list[dict]) -> dict[str, dict]:
    """The best pruned fp32 arm of each level by val top-1 (lowest seed on a tie): the one INT8 is made of."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["family"] in ("unpruned", "scratch") or r["precision"] != "fp32" or r.get("val_top1") is None:
            continue
        cur = best.get(r["level"])
        if cur is None or (r["val_top1"], -r["seed"]) > (cur["val_top1"], -cur["seed"]):
            best[r["level"]] = r
    return best


def quantize_best(study: fa.Study, rows: list[dict]) -> None:
    """INT8 (ORT QDQ, u8 activations: the fast x86 path) of the best fp32 arm of each level, by val top-1."""
    from vtpdeploy.deploy.export.quantize import quantize_int8
    from vtpdeploy.fileio import atomic_write_json

    calib = None
    for level, best in sorted(best_per_level(rows).items()):
        int8_dir = study.out / best["id"] / "int8"
        if fa.read_result(int8_dir):
            continue
        int8_dir.mkdir(parents=True, exist_ok=True)
        calib = fa.calibration_images(study, 256, seed=3) if calib is None else calib
        onnx = int8_dir / "model.onnx"
        settings = quantize_int8(study.out / best["onnx"], onnx, calib, activation_type="u8")
        atomic_write_json(onnx.with_suffix(".onnx.json"), {"params": best["params"], "macs": best["macs"]})
        preds, labels = _ort_predict(onnx, fa.test_set(study), study.threads)
        np.save(int8_dir / "test_pred.npy", preds)
        result = {**{k: best[k] for k in ("family", "method", "level", "seed", "macs_share", "params", "macs")},
                  "precision": "int8", "val_top1": best["val_top1"], "quantization": settings,
                  "test_top1": round(100.0 * float((preds == labels).mean()), 3),
                  "onnx": str(onnx.relative_to(study.out))}
        atomic_write_json(int8_dir / "result.json", result)
        study.say(f"int8 {best['method']} {level}: test top-1 {result['test_top1']:.2f} % (fp32 {best['test_top1']:.2f})")


def _ort_predict(onnx: Path, dataset, threads: int, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds, labels = [], []
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False):
        preds.append(sess.run(None, {name: x.numpy()})[0].argmax(-1))
        labels.append(y.numpy())
    return np.concatenate(preds).astype(np.int16), np.concatenate(labels).astype(np.int16)


def time_models(study: fa.Study, rows: list[dict], duration_s: float, backends: str) -> dict | None:
    """One interleaved bench run of every row's ONNX against the unpruned one (ORT/OpenVINO, b1 and b8)."""
    base = next((r for r in rows if r["family"] == "unpruned"), None)
    if base is None:
        return None
    paths = [str(study.out / r["onnx"]) for r in rows if r is not base]
    report = study.out / "bench.json"
    cmd = [sys.executable, "-m", "vtpdeploy", "bench", *paths, "--baseline", str(study.out / base["onnx"]),
           "--backend", backends, "--batch", "1,8", "--threads", str(study.threads), "--warmup-s", "0.5",
           "--duration-s", str(duration_s), "--json", str(report), "-q"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        study.say(f"bench failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
        return None
    study.say(f"bench of {len(paths) + 1} models on {backends} ({time.time() - t0:.0f}s)")
    return json.loads(report.read_text())


def targets(rows: list[dict], base_train_s: float | None) -> list[dict]:
    """The issue's targets, each with the numbers that decide it (met: true/false/None = not enough arms)."""
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    unpruned = next((r for r in fp32 if r["family"] == "unpruned"), None)
    out = []
    if unpruned:
        out.append({"target": "unpruned >= 88.0 % test top-1 (stretch 90 %), base training <= 45 min",
                    "met": unpruned["test_top1"] >= 88.0 and (base_train_s or 1e9) <= 45 * 60,
                    "value": f"{unpruned['test_top1']:.2f} %, base training {(base_train_s or 0) / 60:.1f} min"})
    for level in sorted({r["level"] for r in fp32} - {"1x"}, key=lambda lv: fr.LEVEL_ORDER[lv]):
        lv = [r for r in fp32 if r["level"] == level]
        seeds = sorted({r["seed"] for r in lv if r["family"] == "torch-pruning"})
        per_seed = []
        for seed in seeds:
            ours = [r for r in lv if r["seed"] == seed and r["family"] == "vtpdeploy"]
            peers = [r for r in lv if r["seed"] == seed and r["family"] == "torch-pruning"]
            if ours and peers:
                o, p = max(ours, key=lambda r: r["val_top1"]), max(peers, key=lambda r: r["val_top1"])
                ci = (o.get("vs_best_peer") or {}).get("ci95")
                per_seed.append({"seed": seed, "ours": o["method"], "peer": p["method"],
                                 "top1_gap": round(o["test_top1"] - p["test_top1"], 3), "top1_gap_ci95": ci,
                                 "b1_ratio": (round(p["ort_b1_ms"] / o["ort_b1_ms"], 3)
                                              if o.get("ort_b1_ms") and p.get("ort_b1_ms") else None)})
        if per_seed:
            out.append({"target": f"{level}: best vtpdeploy arm >= best Torch-Pruning arm + 0.5 pt, or >= 10 % faster "
                                  "at ORT b1 at matched top-1 (paired CI of the gap reaches 0 or above), every seed",
                        "met": all(beats_peer(s) for s in per_seed), "value": per_seed})
        pairs = [(a, b) for a in lv if a["method"] == "vtp-sparse-cpu"
                 for b in lv if b["method"] == "prune-only-l1" and b["seed"] == a["seed"]]
        if pairs:
            out.append({"target": f"{level}: sparse -> prune (vtp-sparse-cpu) >= prune-only (prune-only-l1), every seed",
                        "met": all(a["test_top1"] >= b["test_top1"] for a, b in pairs),
                        "value": [{"seed": a["seed"], **a.get("vs_prune_only", {}),
                                   "gap": round(a["test_top1"] - b["test_top1"], 3)} for a, b in pairs]})
        ours = [r for r in lv if r["family"] == "vtpdeploy"]
        scratch = scratch_rows(fp32).get(level)
        same_seed = [r for r in ours if scratch and r["seed"] == scratch["seed"]]
        if same_seed:  # the scratch model has one seed: compared with vtpdeploy's best arm (on val) of that seed
            best = max(same_seed, key=lambda r: r["val_top1"])
            ci = best.get("vs_scratch")
            out.append({"target": f"{level}: best vtpdeploy arm beats the dense model trained from scratch",
                        "met": best["test_top1"] > scratch["test_top1"],
                        "value": f"{best['method']} s{best['seed']} {best['test_top1']:.2f} vs scratch "
                                 f"{scratch['test_top1']:.2f}"
                                 + (f" ({ci['diff']:+.2f} pt [{ci['ci95'][0]:+.2f}, {ci['ci95'][1]:+.2f}])"
                                    if ci else "")})
        if level == "2x" and unpruned and ours:
            best = max(ours, key=lambda r: r["val_top1"])
            out.append({"target": "2x: best vtpdeploy arm within 1.0 pt of unpruned",
                        "met": unpruned["test_top1"] - best["test_top1"] <= 1.0,
                        "value": f"{best['method']} {best['test_top1']:.2f} vs {unpruned['test_top1']:.2f}"})
    return out


def beats_peer(seed_row: dict) -> bool:
    """The issue's bar against Torch-Pruning for one seed: +0.5 pt, or >= 10 % faster without a significant loss."""
    if seed_row["top1_gap"] >= 0.5:
        return True
    ci, ratio = seed_row.get("top1_gap_ci95"), seed_row.get("b1_ratio")
    return bool(ci and ratio and ratio >= 1.10 and ci[1] >= 0.0)


def add_prune_only_cis(rows: list[dict], preds: dict, labels: np.ndarray) -> None:
    for a in rows:
        if a["method"] == "vtp-sparse-cpu" and a["precision"] == "fp32":
            b = next((b for b in rows if b["method"] == "prune-only-l1" and b["precision"] == "fp32"
                      and b["level"] == a["level"] and b["seed"] == a["seed"]), None)
            if b is not None:
                a["vs_prune_only"] = fr.paired_diff_ci(preds[a["id"]], preds[b["id"]], labels)


def scratch_rows(rows: list[dict]) -> dict[str, dict]:
    """The dense model trained from scratch of each level (its lowest seed: the frontier trains one)."""
    out: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: -r["seed"]):
        if r["family"] == "scratch":
            out[r["level"]] = r
    return out


def add_scratch_cis(rows: list[dict], preds: dict, labels: np.ndarray) -> None:
    """Each fp32 vtpdeploy row's paired CI vs the dense model trained from scratch at its level."""
    scratch = scratch_rows(rows)
    for a in rows:
        if a["family"] == "vtpdeploy" and a["precision"] == "fp32" and a["level"] in scratch:
            a["vs_scratch"] = fr.paired_diff_ci(preds[a["id"]], preds[scratch[a["level"]]["id"]], labels)


def render(study: fa.Study, rows: list[dict], bench: dict | None, results_dir: Path, command: str) -> Path:
    test = fa.test_set(study)
    labels = test.targets[test.indices].astype(np.int16)
    preds = {r["id"]: np.load(study.out / r["id"] / "test_pred.npy") for r in rows}
    fr.attach_latency(rows, bench, study.out)
    fr.attach_cis(rows, preds, labels)
    add_prune_only_cis(rows, preds, labels)
    add_scratch_cis(rows, preds, labels)
    summary = fr.summarise(rows)
    manifest = json.loads((study.base / "manifest.json").read_text())
    base_train_s = manifest["stages"].get("train", {}).get("duration_s")
    goals = targets(rows, base_train_s)
    figure = fr.plot_frontier(summary, study.out / "fashion_mnist_frontier.png")
    errors = sorted(str(p.parent.relative_to(study.out)) for p in (study.out / "arms").glob("*/*/error.txt")
                    if not (p.parent / "result.json").is_file())
    sections = [
        ("**--quick: a 600-image subset and one epoch per stage, to check the machinery; the numbers mean nothing.**"
         if study.overrides else ""),
        "Fashion-MNIST (official 60,000 / 10,000 split; 5,000 train images held out as val for every choice) with "
        "`recipes/fashion_mnist.yaml`. Every arm starts from the same trained base, is pruned to a matched MAC share "
        "(2x / 3x / 4x fewer; within 1 %, Torch-Pruning within 1.5 %: its one ratio moves in MAC steps of up to 4 % "
        "on this model) and fine-tuned with the same budget (VTP arms also had 2 sparse-training epochs, the "
        "scratch model base + sparsify + fine-tune epochs); latencies from one interleaved "
        "`vtpdeploy bench` run against the unpruned model on this machine "
        f"({(bench or {}).get('environment', {}).get('cpu_model', 'CPU unknown')}, {study.threads} threads).",
        "![frontier](fashion_mnist_frontier.png)",
        NOTES.read_text() if NOTES.is_file() and not study.overrides else "",
        "## README summary", markdown_table(*fr.readme_summary(summary)),
        "## Summary (mean and range over seeds)", markdown_table(*fr.summary_table(summary)),
        "## Targets", markdown_table(["target", "met", "numbers"],
                                     [[g["target"], {True: "yes", False: "**no**", None: "–"}[g["met"]],
                                       json.dumps(g["value"]) if not isinstance(g["value"], str) else g["value"]]
                                      for g in goals]),
        "## Every arm and seed (paired-bootstrap 95 % CI over the test images)", markdown_table(*fr.rows_table(rows)),
        ("## Arms that failed\n\n" + "\n".join(f"- `{e}`" for e in errors)) if errors else "",
    ]
    data = {"rows": [{k: v for k, v in r.items() if k != "id"} for r in rows], "summary": summary, "targets": goals,
            "base_train_s": base_train_s, "environment": (bench or {}).get("environment"), "log": study.log[-200:]}
    sections = [s for s in sections if s]
    return write_page("fashion_mnist", "Fashion-MNIST: accuracy x latency frontier", sections, data, command=command,
                      figures={"fashion_mnist_frontier.png": figure}, results_dir=results_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="CI: a data subset, 1 epoch per stage, one level, 4 arms")
    ap.add_argument("--levels", default=None, help="comma list of 2x,3x,4x (default all; quick: 3x)")
    ap.add_argument("--seeds", default=None, help="comma list (default 0,1,2; quick: 0)")
    ap.add_argument("--methods", default=None, help=f"comma list of {','.join(fa.ARMS)} (default all)")
    ap.add_argument("--budget-min", type=float, default=None, help="start no new arm after this many minutes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration-s", type=float, default=None, help="bench seconds per model (default 2; quick 0.3)")
    ap.add_argument("--results-dir", type=Path, default=None, help="default docs/results (quick: OUT/results)")
    ap.add_argument("--skip-bench", action="store_true",
                    help="time nothing: render with OUT/bench.json's latencies if there is one")
    ap.add_argument("--retrain-base", action="store_true", help="train the base, not start from benchmarks/fashion_base")
    ap.add_argument("--render-only", action="store_true", help="train no arm: INT8, bench and page from what is done")
    args = ap.parse_args(argv)
    levels = (args.levels or ("3x" if args.quick else "2x,3x,4x")).split(",")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    methods = (args.methods or ",".join(QUICK_METHODS if args.quick else fa.ARMS)).split(",")
    bad = [m for m in methods if m not in fa.ARMS] + [lv for lv in levels if lv not in LEVELS]
    if bad:
        print(f"error: unknown method/level {', '.join(bad)}", file=sys.stderr)
        return 2
    if "tp-uniform" in methods or "tp-bottleneck" in methods:
        import peer_torch_pruning

        if peer_torch_pruning.missing():
            print(f"note: {peer_torch_pruning.missing()}", file=sys.stderr)
            methods = [m for m in methods if not m.startswith("tp-")]
    study = fa.Study(args.out, QUICK_SETS if args.quick else (), threads=args.threads,
                     keep_base=not (args.quick or args.retrain_base))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        fa.run_base(study)
        run_arms(study, work_queue(methods, levels, seeds), args.budget_min)
    quantize_best(study, collect(args.out))
    rows = collect(args.out)
    last_bench = args.out / "bench.json"
    bench = (json.loads(last_bench.read_text()) if last_bench.is_file() else None) if args.skip_bench else time_models(
        study, rows, args.duration_s or (0.3 if args.quick else 2.0),
        "ort,openvino" if _has_openvino() else "ort")
    command = "python benchmarks/fashion_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:])
    page = render(study, rows, bench, args.results_dir or (args.out / "results" if args.quick else RESULTS_DIR),
                  command)
    study.say(f"wrote {page}")
    return 0


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


if __name__ == "__main__":
    sys.exit(main())
