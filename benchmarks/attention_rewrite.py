#!/usr/bin/env python
"""Fused attention (com.microsoft.Attention) vs the exporter's plain attention, DeiT-B and VTP-40, interleaved.

    python benchmarks/attention_rewrite.py --out /tmp/attn               # DeiT-B random init + VTP-40 (cpu profile)
    python benchmarks/attention_rewrite.py --out /tmp/attn --onnx-dir D  # reuse D/deit_base.onnx, D/vtp40.onnx
    python benchmarks/attention_rewrite.py --out /tmp/q --quick          # tiny ViT smoke run

Builds the unpruned model and a VTP-40 compact model as benchmarks/deit_base.py does (weight_l1 importance,
`cpu` profile, rate 0.4), exports both (dynamic batch, opset 17), rewrites both with
`vtpdeploy.deploy.export.attention` (validated on ORT, max |diff| <= 1e-4), then benchmarks the four models
in ONE interleaved run per backend and batch (`--repeats` times). Fused-vs-plain speedups are the median of
per-round ratios of block means (each round runs every model back to back), so machine load that drifts
between rounds cancels. Writes DIR/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_vit import QUICK_KW, image_sample, random_models  # noqa: E402  (benchmarks/ is not a package)

MODELS = ("deit_base", "vtp40")


def _say(msg: str) -> None:
    print(msg, flush=True)


def build_onnx(out: Path, name: str, kwargs: dict, threads: int | None) -> dict[str, Path]:
    """DIR/deit_base.onnx (unpruned) and DIR/vtp40.onnx (VTP-40, cpu profile, weight_l1), dynamic batch."""
    import vtpdeploy
    from vtpdeploy.deploy.export import export_onnx
    from vtpdeploy.prune.compact import compact_validated
    from vtpdeploy.prune.profiles import constraints_for

    base, gated = random_models(name, kwargs)
    sample = image_sample(base)
    plan = vtpdeploy.plan(gated, 0.4, importance="weight_l1", constraints=constraints_for("cpu"))
    small, _ = compact_validated(gated, plan, sample, atol=5e-4)
    paths = {}
    for label, model in (("deit_base", base), ("vtp40", small)):
        paths[label] = out / f"{label}.onnx"
        export_onnx(model, paths[label], dynamic_batch=True, sample=sample, atol=1e-3, threads=threads,
                    openvino=False)
        Path(str(paths[label]) + ".json").write_text(json.dumps(vtpdeploy.count(model)))
        _say(f"exported {paths[label]}")
    return paths


def paired_speedup(plain: dict, fused: dict) -> dict:
    """Median and spread of per-round plain/fused block-mean ratios (> 1: fused is faster)."""
    a, b = np.asarray(plain["block_means_ms"]), np.asarray(fused["block_means_ms"])
    n = min(len(a), len(b))
    r = a[:n] / b[:n]
    return {"speedup": round(float(np.median(r)), 4), "min": round(float(r.min()), 4),
            "max": round(float(r.max()), 4), "rounds": int(n),
            "mean_ratio": round(plain["latency_ms"]["mean"] / fused["latency_ms"]["mean"], 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny ViT, short timings (smoke test)")
    ap.add_argument("--onnx-dir", type=Path, default=None, help="reuse deit_base.onnx and vtp40.onnx from here")
    ap.add_argument("--batches", default=None, help="default 1,8 (quick: 1,2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration-s", type=float, default=None, help="timed seconds per model per group")
    ap.add_argument("--warmup-s", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-openvino", action="store_true")
    args = ap.parse_args(argv)

    from vtpdeploy.deploy.bench import run_bench
    from vtpdeploy.deploy.export.attention import rewrite_attention_file

    t_start = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    name = "vit_tiny_patch16_224" if quick else "deit_base_patch16_224"
    batches = [int(b) for b in (args.batches or ("1,2" if quick else "1,8")).split(",")]
    duration = args.duration_s or (0.3 if quick else 6.0)
    warmup = args.warmup_s if args.warmup_s is not None else (0.1 if quick else 1.0)
    backends = ["ort"]
    if not args.no_openvino and importlib.util.find_spec("openvino") is not None:
        backends.append("openvino")

    if args.onnx_dir is not None:
        plain = {m: args.onnx_dir / f"{m}.onnx" for m in MODELS}
    else:
        plain = build_onnx(out, name, QUICK_KW if quick else {}, args.threads)
    fused, rewrites = {}, {}
    for m in MODELS:
        fused[m] = out / f"{m}.fused.onnx"
        t0 = time.time()
        rewrites[m] = rewrite_attention_file(plain[m], fused[m], atol=1e-4, n=2, threads=args.threads)
        _say(f"rewrote {plain[m].name}: {rewrites[m]['rewritten']}/{rewrites[m]['found']} attention blocks fused, "
             f"ORT max |diff| {rewrites[m]['max_abs_diff']:.1e} ({time.time() - t0:.1f}s)")

    rows, reports = [], []
    for rep in range(args.repeats):
        for be in backends:
            report = run_bench([str(fused["deit_base"]), str(plain["vtp40"]), str(fused["vtp40"])], backend=be,
                               batches=batches, baseline=str(plain["deit_base"]), warmup_s=warmup,
                               duration_s=duration, threads=args.threads, progress=_say)
            reports.append(report)
            for b in batches:
                res = {r["artifact"]: r for r in report["results"] if r["batch"] == b}
                lat = {(m, kind): res[str(p[m])] for kind, p in (("plain", plain), ("fused", fused)) for m in MODELS}
                for m in MODELS:
                    rows.append({"repeat": rep + 1, "backend": be, "batch": b, "model": m,
                                 "plain_ms": lat[(m, "plain")]["latency_ms"]["mean"],
                                 "fused_ms": lat[(m, "fused")]["latency_ms"]["mean"],
                                 **paired_speedup(lat[(m, "plain")], lat[(m, "fused")])})
                for kind in ("plain", "fused"):  # on the vtp40 row: the pruning speedup with each attention
                    rows[-1]["vtp40_vs_deit_base_" + kind] = paired_speedup(
                        lat[("deit_base", kind)], lat[("vtp40", kind)])["speedup"]

    results = {
        "schema": "vtpdeploy-attention-rewrite-bench/1",
        "model": name,
        "quick": quick,
        "threads": args.threads,
        "batches": batches,
        "duration_s": duration,
        "repeats": args.repeats,
        "rewrites": rewrites,
        "rows": rows,
        "environment": reports[0].get("environment") if reports else None,
        "wall_s": round(time.time() - t_start, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    _print(results)
    return results


def _print(res: dict) -> None:
    print()
    print(f"== {res['model']} (random init): fused com.microsoft.Attention vs plain, {res['threads']} threads, "
          "interleaved ==")
    print(f"{'rep':>3} {'backend':<9} {'b':>2} {'model':<10} {'plain ms':>9} {'fused ms':>9} {'speedup':>8} "
          f"{'[min,max] per round':>20} {'rounds':>6}")
    for r in res["rows"]:
        spread = f"[{r['min']:.3f},{r['max']:.3f}]"
        print(f"{r['repeat']:>3} {r['backend']:<9} {r['batch']:>2} {r['model']:<10} {r['plain_ms']:>9.2f} "
              f"{r['fused_ms']:>9.2f} {r['speedup']:>7.3f}x {spread:>20} {r['rounds']:>6}")
    print()
    print("VTP-40 vs DeiT-B (median per-round ratio), plain graphs vs both fused:")
    for r in res["rows"]:
        if r["model"] == "vtp40":
            print(f"  rep {r['repeat']} {r['backend']:<9} b{r['batch']}: plain {r['vtp40_vs_deit_base_plain']:.3f}x  "
                  f"fused {r['vtp40_vs_deit_base_fused']:.3f}x")


if __name__ == "__main__":
    main()
