"""Shared test helpers: the one tiny-ViT config, a tiny recipe, run dirs, the CLI runners and bad-input tools.

Everything is random-init (never `pretrained=True`) and small: the machine is CPU-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

# The one tiny ViT of the suite: 4x4 patches of 8 px + cls = 17 tokens, 3 heads of 16 dims, MLP hidden 192.
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}

# A tiny end-to-end recipe: smaller still (16 px digits, width 32), so a whole pipeline takes seconds.
TINY_RECIPE = {
    "seed": 0,
    "threads": 1,
    "model": {"name": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                         "num_classes": 10}},
    "data": {"kind": "digits", "batch_size": 128, "interpolation": "bilinear", "crop_pct": 1.0},  # digits: no crop
    "train": {"epochs": 2, "lr": 3e-3},
    "sparsify": {"epochs": 2, "lam": 1e-3, "lr": 1e-3},
    "prune": {"rate": 0.4},
    "finetune": {"epochs": 2, "lr": 1e-3},
}

# Environment of every CLI subprocess: one thread (2 shared cores), no warnings, wide rich tables.
CLI_ENV = {"PYTHONWARNINGS": "ignore", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def make_vit(name: str = "vit_tiny_patch16_224", **kwargs):
    """A random-init timm model in eval mode; for the default name, TINY_VIT (+ overrides)."""
    import timm

    if name == "vit_tiny_patch16_224":
        kwargs = {**TINY_VIT, **kwargs}
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def tiny_vit(**overrides):
    """TINY_VIT with seeded weights: two calls give the same model."""
    import torch

    torch.manual_seed(0)
    return make_vit(**overrides)


def make_run_dir(root: Path, name: str = "run", ratio: float = 0.4, with_counts: bool = True) -> Path:
    """A fake finished run dir: manifest.json, report.json (params/macs), model.* (compact), unpruned.*."""
    import vtpdeploy

    run = Path(root) / name
    run.mkdir(parents=True, exist_ok=True)
    unpruned = tiny_vit()
    vtpdeploy.save(unpruned, run / "unpruned")
    gated = tiny_vit()
    vtpdeploy.add_gates(gated)
    compact = vtpdeploy.compact(gated, vtpdeploy.plan(gated, ratio))
    vtpdeploy.save(compact, run / "model")
    (run / "manifest.json").write_text("{}")
    report = {}
    if with_counts:
        cu, cc = vtpdeploy.count(unpruned), vtpdeploy.count(compact)
        report = {"params": {"unpruned": cu["params"], "compact": cc["params"]},
                  "macs": {"unpruned": cu["macs"], "compact": cc["macs"]}}
    (run / "report.json").write_text(json.dumps(report))
    return run


def write_recipe(path: Path, overrides: dict | None = None) -> Path:
    """TINY_RECIPE with dotted-key overrides (`{"prune.rate": 0.5}`), written as YAML to `path`."""
    recipe = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    for dotted, value in (overrides or {}).items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli(*args, timeout: float = 600, cwd: Path | None = None, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """`python -m vtpdeploy ARGS` in a fresh interpreter (real exit codes, real stderr)."""
    return subprocess.run([sys.executable, "-m", "vtpdeploy", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **CLI_ENV, **(env or {})})


def run_cli_inprocess(*args) -> subprocess.CompletedProcess:
    """`vtpdeploy ARGS` in this process (fast: no interpreter start, torch already imported)."""
    from vtpdeploy.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["vtpdeploy", *map(str, args)], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """Exit `code`, exactly one stderr line 'error: ...' holding every needle, no traceback; returns it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (to prove nothing was touched)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


class MaliciousPickle:
    """Unpickling this creates the file `marker`: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def ort_logits(path: Path, x, batch: int):
    """Logits of an ONNX file on ONNX Runtime CPU, run directly (not through vtpdeploy), `batch` rows at a time."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


class FakeMeasure:
    """A deterministic 'device' for latency tables: latency proportional to each part's MACs, counting calls. A
    whole model costs `whole_factor` x its part sum + `whole_offset` ms (the glue that parts timed alone miss).
    With `spreads`, each call returns (ms, spread %): `spreads[i]` from the i-th stem on (the last one after)."""

    def __init__(self, scale: float = 1.0, whole_factor: float = 1.0, whole_offset: float = 0.0,
                 spreads: tuple[float, ...] = ()):
        self.calls = 0
        self.scale = scale
        self.whole_factor = whole_factor
        self.whole_offset = whole_offset
        self.spreads, self.stems = tuple(spreads), 0

    def __call__(self, part, widths, dims):
        self.calls += 1
        ms = self.ms(part, widths, dims)
        if not self.spreads:
            return ms
        spread = self.spreads[min(self.stems, len(self.spreads) - 1)]
        self.stems += part == "stem"
        return ms, spread

    def ms(self, part, widths, dims) -> float:
        if part == "model":
            parts = self.ms("stem", (), dims) + sum(
                self.ms("attn", (w.qkv_in, sum(w.v_dims) / dims["num_heads"]), dims)
                + self.ms("mlp", (w.mlp_in, w.mlp_hidden), dims) for w in widths)
            return self.whole_factor * parts + self.whole_offset
        n, d, heads, hd = dims["tokens"], dims["embed_dim"], dims["num_heads"], dims["head_dim"]
        if part == "attn":
            w_in, v = widths
            macs = n * w_in * (2 * heads * hd + heads * v) + n * n * heads * (hd + v) + n * heads * v * d
        elif part == "mlp":
            w_in, h = widths
            macs = n * w_in * h + n * h * d
        else:
            macs = n * d * 200
        return self.scale * (0.01 + macs / 1e6)
