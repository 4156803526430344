#!/usr/bin/env python
"""What removed attention sublayers are worth at equal MACs: DeiT-B on CPU, interleaved against unpruned DeiT-B.

    python benchmarks/sublayer_removal.py --out runs/sublayers --doc docs/hardware.md   # ~6 min on 2 cores
    python benchmarks/sublayer_removal.py --out /tmp/q --quick                           # tiny ViT smoke run

Every arm has uniform widths, whole heads and full qkv/fc1 inputs, and the MACs of VTP-40 % (`cpu` profile,
weight_l1 importance, as benchmarks/deit_base.py builds it) within ±1 %: arm `K:H` removes the attention of the
last K blocks (`drop_sublayers`), keeps H heads in the others, and gets the MLP hidden width (a multiple of 32)
that lands on those MACs. `0:H` is the plain whole-head model. Each arm is a plan, compacted and checked against
its hard-mask model (`compact_validated`), exported like every model here, and benchmarked in one interleaved run
with unpruned DeiT-B (ORT, and OpenVINO when installed; b1, b8). The arms' own ratios against the `0:H` arm are
paired over the same rounds. Weights are random: this measures latency only; which attentions a trained model
can lose is an accuracy question it does not answer. Writes DIR/results.json and prints the table; `--doc`
rewrites the readme-numbers:sublayer-removal block of that Markdown file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deit_base import _label_of, _paired_ratios  # noqa: E402  (benchmarks/ is not a package)
from random_vit import QUICK_KW, image_sample, random_models  # noqa: E402

QUICK_DEEPER_KW = {**QUICK_KW, "depth": 3}  # room to remove attentions
BLOCK = "sublayer-removal"


def _say(msg: str) -> None:
    print(msg, flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny ViT, short timings (smoke test)")
    ap.add_argument("--arms", default=None,
                    help="K:H,... removed attentions (the last K blocks) : heads kept in the others "
                         "(default 0:6,3:7,6:10; quick 0:2,1:3)")
    ap.add_argument("--batches", default=None, help="default 1,8 (quick: 1)")
    ap.add_argument("--duration-s", type=float, default=None, help="timed seconds per model per group")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--doc", type=Path, default=None,
                    help=f"rewrite the readme-numbers:{BLOCK} block of this Markdown file with the table")
    args = ap.parse_args(argv)
    try:
        args.arm_list = [tuple(int(v) for v in a.split(":")) for a in
                         (args.arms or ("0:2,1:3" if args.quick else "0:6,3:7,6:10")).split(",")]
        if any(len(a) != 2 for a in args.arm_list):
            raise ValueError
    except ValueError:
        ap.error(f"--arms {args.arms!r}: expected K:H pairs such as 0:6,6:10")
    if args.doc and f"<!-- readme-numbers:{BLOCK}:start -->" not in (
            args.doc.read_text() if args.doc.is_file() else ""):
        ap.error(f"--doc {args.doc}: no readme-numbers:{BLOCK} block to rewrite")
    return args


def arm_plan(gated, removed: int, heads: int, hidden: int):
    """Whole heads 0..heads-1 in every block but the last `removed` (attention removed), hidden dims 0..hidden-1."""
    from vtpdeploy.prune.profiles import constraints_for
    from vtpdeploy.prune.schema import GatePlan, PrunePlan
    from vtpdeploy.prune.sites import read_dims

    dims = read_dims(gated)
    d, hd, depth = dims.embed_dim, dims.head_dim, dims.depth
    if not 0 <= removed < depth or not 1 <= heads <= dims.num_heads:
        raise SystemExit(f"error: arm {removed}:{heads}: needs 0 <= K < {depth} blocks and 1 <= H <= {dims.num_heads}")
    c = constraints_for("cpu-nogather").model_copy(update={"granularity": "head", "drop_sublayers": True})
    gates = []
    for b in range(depth):
        v = [] if b >= depth - removed else list(range(heads * hd))
        gates += [GatePlan(block=b, kind="qkv_in", size=d, kept=list(range(d))),
                  GatePlan(block=b, kind="attn_v", size=d, kept=v),
                  GatePlan(block=b, kind="mlp_in", size=d, kept=list(range(d))),
                  GatePlan(block=b, kind="mlp_hidden", size=dims.mlp_hidden, kept=list(range(hidden)))]
    p = PrunePlan(rate=0.0, scope="global", importance="weight_l1", num_heads=dims.num_heads, head_dim=hd,
                  constraints=c, gates=gates)
    p.rate = round(p.realised_rate, 4)
    return p


def _hidden_at(gated, removed: int, heads: int, target_macs: int) -> int:
    """The hidden width (a multiple of 32, MACs are linear in it) whose arm lands closest to `target_macs`."""
    import vtpdeploy
    from vtpdeploy.prune.sites import read_dims

    full = read_dims(gated).mlp_hidden
    lo, hi = (vtpdeploy.count(vtpdeploy.compact(gated, arm_plan(gated, removed, heads, w)))["macs"] for w in (64, full))
    exact = 64 + (target_macs - lo) * (full - 64) / (hi - lo)
    if not 64 <= exact <= full:
        raise SystemExit(f"error: arm {removed}:{heads} cannot reach {target_macs / 1e9:.3f} G MACs "
                         f"({lo / 1e9:.3f}..{hi / 1e9:.3f} G over hidden widths 64..{full})")
    return int(min(full, max(64, 32 * round(exact / 32))))


def build(args: argparse.Namespace) -> tuple[dict, dict[str, Path], Path]:
    """(arm records, ONNX path per arm, unpruned ONNX path)."""
    import vtpdeploy
    from vtpdeploy.deploy.export import export_onnx
    from vtpdeploy.prune.compact import compact_validated
    from vtpdeploy.prune.profiles import check_model, check_plan, constraints_for

    name, kwargs = ("vit_tiny_patch16_224", QUICK_DEEPER_KW) if args.quick else ("deit_base_patch16_224", {})
    base, gated = random_models(name, kwargs)
    sample = image_sample(base)
    vtp40 = vtpdeploy.plan(gated, 0.4, importance="weight_l1", constraints=constraints_for("cpu"))
    target = vtpdeploy.count(vtpdeploy.compact(gated, vtp40))["macs"]
    _say(f"target: VTP-40 % (cpu, weight_l1) MACs {target / 1e9:.3f} G")
    models = {"deit_base": (base, None)}
    for removed, heads in args.arm_list:
        p = arm_plan(gated, removed, heads, _hidden_at(gated, removed, heads, target))
        small, diff = compact_validated(gated, p, sample, atol=1e-4 if args.quick else 5e-4)
        bad = check_plan(p) + check_model(small, p.constraints)
        if bad:
            raise SystemExit(f"error: arm {removed}:{heads} breaks its profile: {bad[0]}")
        models[f"heads{heads}" + (f"_noattn{removed}" if removed else "")] = (small, {"removed_attentions": removed, "heads": heads,
                                                     "hidden": len(p.gate(0, "mlp_hidden").kept),
                                                     "compact_vs_mask_max_diff": diff})
    records, paths = {}, {}
    for label, (model, info) in models.items():
        paths[label] = args.out / f"{label}.onnx"
        export_onnx(model, paths[label], dynamic_batch=True, sample=sample, atol=1e-3, threads=args.threads)
        counts = vtpdeploy.count(model)
        Path(str(paths[label]) + ".json").write_text(json.dumps({"params": counts["params"], "macs": counts["macs"]}))
        if info is not None:
            records[label] = {**info, **counts, "macs_vs_target_pct": round(100 * (counts["macs"] / target - 1), 2)}
            _say(f"{label}: hidden {info['hidden']}, {counts['macs'] / 1e9:.3f} G MACs "
                 f"({records[label]['macs_vs_target_pct']:+.2f} %), compact vs mask {info['compact_vs_mask_max_diff']:.1e}")
    return records, {k: v for k, v in paths.items() if k != "deit_base"}, paths["deit_base"]


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    from vtpdeploy.deploy.bench import run_bench
    from vtpdeploy.fileio import atomic_write_text

    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    arms, paths, baseline = build(args)
    backends = ["ort"] + (["openvino"] if not args.no_openvino and importlib.util.find_spec("openvino") else [])
    rep = run_bench([str(p) for p in paths.values()], backend=",".join(backends),
                    batches=[int(b) for b in (args.batches or ("1" if args.quick else "1,8")).split(",")],
                    baseline=str(baseline), warmup_s=0.1 if args.quick else 1.0,
                    duration_s=args.duration_s or (0.3 if args.quick else 6.0), threads=args.threads, block_iters=2,
                    progress=_say)
    first = next(iter(paths))
    results = {
        "schema": "vtpdeploy-sublayer-removal/1",
        "quick": args.quick,
        "arms": arms,
        "vs_deit_base": [{"model": _label_of(c["candidate"]), **{k: c[k] for k in (
            "backend", "batch", "speedup", "speedup_ci", "mac_ratio", "efficiency", "efficiency_ci")}}
            for c in rep["comparison"]],
        f"vs_{first}": [row for label in list(paths)[1:] for row in _paired_ratios(rep, label, [first], "fp32")],
        "environment": rep.get("environment"),
        "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1, default=str))
    table = render(results, first, " ".join(["python benchmarks/sublayer_removal.py", *(argv or sys.argv[1:])]))
    print(table)
    if args.doc:
        from readme_numbers import replace_block

        atomic_write_text(args.doc, replace_block(args.doc.read_text(), BLOCK, table))
    return results


def render(results: dict, first: str, command: str) -> str:
    """The Markdown table: per arm, speedup and E vs unpruned DeiT-B, and the ratio against the first arm."""
    cols = sorted({(r["backend"], r["batch"]) for r in results["vs_deit_base"]},
                  key=lambda c: (c[0] != "ort", c[1]))
    name = {"ort": "ORT", "openvino": "OpenVINO"}
    vs = {(r["model"], r["backend"], r["batch"]): r for r in results["vs_deit_base"]}
    paired = {(r["model"], r["backend"], r["batch"]): r for r in results[f"vs_{first}"]}
    lines = [f"Produced by `{command}` ({results['wall_s'] / 60:.0f} min); speedup vs unpruned DeiT-B in the same "
             f"interleaved run [95 % CI], E = speedup / MAC ratio; after the `;`: the arm against `{first}` (time of `{first}` / time of the arm, "
             "paired over the same rounds).", "",
             "| arm | removed attentions | heads | hidden | MACs | " + " | ".join(
                 f"{name[b]} b{n}" for b, n in cols) + " |", "|---|---|---|---|---|" + "---|" * len(cols)]
    for label, a in results["arms"].items():
        cells = []
        for b, n in cols:
            r, p = vs[(label, b, n)], paired.get((label, b, n))
            cell = f"{r['speedup']:.2f} [{r['speedup_ci'][0]:.2f}, {r['speedup_ci'][1]:.2f}] E {r['efficiency']:.2f}"
            if p is not None:
                cell += f"; {p['ratio']:.3f}× [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]"
            cells.append(cell)
        lines.append(f"| `{label}` | {a['removed_attentions']} | {a['heads']} | {a['hidden']} | "
                     f"{a['macs'] / 1e9:.2f} G | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
