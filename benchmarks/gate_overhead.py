#!/usr/bin/env python
"""Training overhead of VTP gates: gated step (fwd + bwd + AdamW, + λ·L1 penalty) vs a plain timm step.

    python benchmarks/gate_overhead.py                       # deit_small, batch 32, CPU
    python benchmarks/gate_overhead.py --model deit_tiny_patch16_224 --batch 16 --rounds 6
    python benchmarks/gate_overhead.py --variant weight      # F.linear(x, W * gate, b) instead of linear(x * gate)
    python benchmarks/gate_overhead.py --model deit_base_patch16_224 --batch 64 --device cuda --amp fp16 --variant input

Both models start from the same random-init weights; steps are interleaved (ABBA...) in rounds so a noisy,
shared machine's drift cancels. On CUDA each timed block ends with torch.cuda.synchronize(); with --amp the
forward and loss run under torch.autocast and backward outside it (as vtpdeploy's training loop does), with a
GradScaler for fp16; the ratio is mean(gated) / mean(plain) with a paired bootstrap 95 % CI
over rounds. Target: ≤ 1.05.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def _weight_gate_forward(self, x):  # candidate: scale the (out x in) weight instead of the (tokens x in) input
    lin = self.linear
    return F.linear(x, lin.weight * self.gate, lin.bias)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (each: 1 plain + 1 gated step, ABBA)")
    ap.add_argument("--steps-per-block", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variant", choices=("input", "weight", "both"), default="both",
                    help="input: gates.py as is (linear(x*gate)); weight: F.linear(x, W*gate, b)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none", help="mixed precision (CUDA only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import timm

    import vtpdeploy
    from vtpdeploy.deploy.bench.stats import bootstrap_speedup
    from vtpdeploy.prune.gates import GatedLinear

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA GPU")
    if args.amp != "none" and not cuda:
        sys.exit("error: --amp needs --device cuda")
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    kw = {"img_size": args.img_size} if args.img_size else {}
    torch.manual_seed(0)
    plain = timm.create_model(args.model, pretrained=False, **kw).train()
    gated = vtpdeploy.add_gates(copy.deepcopy(plain)).train()
    plain, gated = plain.to(args.device), gated.to(args.device)
    img = plain.patch_embed.img_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *img, generator=g).to(args.device)
    y = torch.randint(0, plain.num_classes, (args.batch,), generator=g).to(args.device)
    lam = 1e-4

    def make_step(model, penalty: bool):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
        scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16")

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=args.amp != "none"):
                loss = F.cross_entropy(model(x), y)
                if penalty:
                    loss = loss + lam * vtpdeploy.l1_penalty(model)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return step

    variants = ["input", "weight"] if args.variant == "both" else [args.variant]
    steps = {"plain": make_step(plain, False)}
    original_forward = GatedLinear.forward
    results = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps_per_block):
            fn()
        sync()
        return (time.perf_counter() - t0) * 1e3 / args.steps_per_block

    gated_step = make_step(gated, True)
    for variant in variants:
        GatedLinear.forward = original_forward if variant == "input" else _weight_gate_forward
        try:
            for _ in range(args.warmup):
                steps["plain"]()
                gated_step()
            a, b = [], []
            for r in range(args.rounds):
                if r % 2 == 0:
                    a.append(timed(steps["plain"]))
                    b.append(timed(gated_step))
                else:
                    b.append(timed(gated_step))
                    a.append(timed(steps["plain"]))
        finally:
            GatedLinear.forward = original_forward
        # bootstrap_speedup(base, cand) = mean(base)/mean(cand): ratio gated/plain = speedup(gated -> plain)
        ratio, lo, hi = bootstrap_speedup(b, a, seed=0, n_boot=2000, paired=True)
        results[variant] = {"ratio": round(ratio, 4), "ci95": [round(lo, 4), round(hi, 4)],
                            "plain_ms": round(float(np.mean(a)), 2), "gated_ms": round(float(np.mean(b)), 2),
                            "rounds": args.rounds, "target_le_1_05": ratio <= 1.05}
        print(f"{args.model} b{args.batch} {args.device} amp={args.amp} [{variant}-gate]: plain {np.mean(a):.1f} ms, gated {np.mean(b):.1f} ms, "
              f"ratio {ratio:.3f} (95% CI {lo:.3f}..{hi:.3f}) {'PASS' if ratio <= 1.05 else 'MISS'} (target <= 1.05)",
              flush=True)
    out = {"model": args.model, "batch": args.batch, "device": args.device, "amp": args.amp,
           "gpu": torch.cuda.get_device_name(torch.device(args.device)) if cuda else None,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "l1_lambda": lam,
           "optimizer": "AdamW", "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
