#!/usr/bin/env bash
# GPU measurements of issue 9, on one NVIDIA GPU with torch (CUDA), timm and onnx; no TensorRT or internet needed.
#
#   benchmarks/gpu_bench.sh [OUT_DIR]        # default /tmp/vtp_gpu_bench; ~15 min on one H100
#   MODEL=vit_small_patch16_224 DURATION_S=2 benchmarks/gpu_bench.sh /tmp/quick   # another timm ViT, shorter
#
# 1. the `gpu`-marked tests (python -m pytest -m gpu);
# 2. DeiT-B VTP-40 compact, planned with profiles `none` and `gpu-fp16` (random init, magnitude importance:
#    latency, params, MACs and memory are real, accuracy is not), against DeiT-B: `vtpdeploy bench` on torch
#    CUDA at fp16 (and fp32 for reference), batches 1 and 64: speedup with its 95 % CI, E = speedup / MAC ratio,
#    weights / activations / peak device memory (report.json -> results[].memory);
# 3. a gated AMP (fp16) training step against a plain timm step, DeiT-B b64 (target ratio <= 1.05).
# Every number lands in OUT_DIR as JSON (plus Markdown tables for the bench), next to `nvidia-smi -q` and pip freeze.
set -euo pipefail

OUT=${1:-/tmp/vtp_gpu_bench}
PY=${PYTHON:-python}
DURATION=${DURATION_S:-5}
MODEL=${MODEL:-deit_base_patch16_224}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: torch sees no CUDA GPU')"
nvidia-smi -q > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m pip freeze > "$OUT/pip-freeze.txt" 2>/dev/null || true

echo "== 1. gpu-marked tests"
"$PY" -m pytest -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_gpu.txt"

echo "== 2. $MODEL VTP-40 (profiles none, gpu-fp16) vs $MODEL on torch CUDA"
"$PY" - "$OUT" "$MODEL" <<'EOF'
import copy, json, sys
from pathlib import Path

import numpy as np
import timm
import torch

import vtpdeploy
from vtpdeploy.prune.compact import compact_validated
from vtpdeploy.prune.profiles import constraints_for

out, name = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
base = timm.create_model(name, pretrained=False).eval()
gated = vtpdeploy.add_gates(copy.deepcopy(base)).eval()
chw = (base.patch_embed.proj.in_channels, *base.patch_embed.img_size)
sample = torch.from_numpy(np.random.default_rng(1).standard_normal((2, *chw), dtype=np.float32))
summary = {name: vtpdeploy.count(base)}
for profile in ("none", "gpu-fp16"):
    plan = vtpdeploy.plan(gated, 0.4, importance="weight_l1", constraints=constraints_for(profile))
    small, diff = compact_validated(gated, plan, sample, atol=5e-4)
    vtpdeploy.save(small, out / f"vtp40_{profile}")
    summary[f"vtp40_{profile}"] = {**vtpdeploy.count(small), "realised_rate": plan.summary()["realised_rate"],
                                   "compact_vs_mask_max_diff": diff}
    print(f"vtp40_{profile}: {summary[f'vtp40_{profile}']}", flush=True)
(out / "models.json").write_text(json.dumps(summary, indent=1))
EOF

for precision in fp16 fp32; do
  "$PY" -m vtpdeploy bench "$OUT/vtp40_none" "$OUT/vtp40_gpu-fp16" \
      --baseline "$MODEL" --backend torch --device cuda --precision "$precision" \
      --batch 1,64 --warmup-s 2 --duration-s "$DURATION" --cache-dir "$OUT/cache" \
      --json "$OUT/bench_torch_cuda_$precision.json" --md "$OUT/bench_torch_cuda_$precision.md"
done

echo "== 3. gated AMP training step vs plain timm step ($MODEL, b64)"
for amp in fp16 bf16; do
  "$PY" benchmarks/gate_overhead.py --model "$MODEL" --batch 64 --device cuda --amp "$amp" \
      --variant input --warmup 5 --rounds 30 --steps-per-block 5 --json "$OUT/gate_overhead_cuda_$amp.json"
done

echo "results in $OUT"
