"""Latency tables: measured latency of one ViT block's attention part and MLP part per width.

A table is measured once per (device, backend, package version, batch, tokens, model dims, threads,
grid) on the target with the chosen runner and cached as JSON under a cache dir (default
`~/.cache/vtpdeploy/latency`, or `$VTPDEPLOY_LATENCY_CACHE`, or `cache_dir=`); a second call with the
same key loads it without measuring.

Parts (each a residual branch, as in the compact model):
- `attn`: x + CompactAttention(LN(x)) at qkv_in width `w_in` and per-head V width `v` (Q/K full);
- `mlp`:  x + CompactMlp(LN(x)) at mlp_in width `w_in` and hidden width `h`;
- `stem`: patch embedding + tokens + final norm + head (width independent).
Grids are coarse (`points` per axis); lookups interpolate bilinearly.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...console import package_versions
from ...errors import VtpError
from ...prune.latency_plan import Grid, LatencyTable
from ...prune.sites import read_dims
from ..export.onnx_export import export_onnx
from .environment import cpu_model
from . import loop

MeasureFn = Callable[[str, tuple[int, ...], dict], float]
WARMUP_S = 0.05  # time-based warm-up per table entry (the bench loop's; a table has ~50 entries)


def default_cache_dir() -> Path:
    env = os.environ.get("VTPDEPLOY_LATENCY_CACHE")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".cache" / "vtpdeploy" / "latency"


# -- keys ---------------------------------------------------------------------------------
def device_name(device: str = "cpu") -> str:
    if str(device).startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception:
            return "cuda"
    return cpu_model() or "unknown-cpu"


def backend_version(backend: str) -> str:
    pkg = {"torch": "torch", "ort": "onnxruntime", "openvino": "openvino", "trt": "tensorrt"}.get(backend, backend)
    names = (pkg, "onnxruntime-gpu") if backend == "ort" else (pkg,)
    found = [f"{name}=={v}" for name, v in package_versions(names).items() if v]
    return found[0] if found else f"{pkg}==?"


def model_dims(model) -> dict:
    """Shape facts a table depends on, from a (gated or plain) timm ViT."""
    d = read_dims(model)
    return {"embed_dim": d.embed_dim, "num_heads": d.num_heads, "head_dim": d.head_dim, "mlp_hidden": d.mlp_hidden,
            "depth": d.depth, "tokens": d.tokens, "img_size": d.img_size, "in_chans": d.in_chans,
            "num_classes": d.num_classes}


def table_key(dims: dict, backend: str, batch: int, device: str = "cpu", threads: int | None = None,
              points: int = 5, device_label: str | None = None) -> dict:
    return {
        "device": device_label or device_name(device),
        "device_kind": "cuda" if str(device).startswith("cuda") else str(device),
        "backend": backend,
        "backend_version": backend_version(backend),
        "batch": int(batch),
        "tokens": dims["tokens"],
        "embed_dim": dims["embed_dim"],
        "num_heads": dims["num_heads"],
        "head_dim": dims["head_dim"],
        "mlp_hidden": dims["mlp_hidden"],
        "threads": threads,
        "points": points,
    }


def cache_path(key: dict, cache_dir: str | Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"{key['backend']}-b{key['batch']}-{digest}.json"


# -- grids --------------------------------------------------------------------------------
def _axis(lo: int, hi: int, points: int, multiple: int) -> list[int]:
    lo = max(1, min(lo, hi))
    vals = {int(round(v / multiple)) * multiple for v in np.linspace(lo, hi, max(2, points))}
    vals = {min(hi, max(multiple if multiple <= hi else 1, v)) for v in vals} | {hi}
    return sorted(vals)


def default_grid(dims: dict, points: int = 5) -> dict[str, tuple[list[int], list[int]]]:
    d, hd, h = dims["embed_dim"], dims["head_dim"], dims["mlp_hidden"]
    m = 16 if d >= 64 else 1
    return {
        "attn": (_axis(max(m, d // 8), d, points, m), _axis(min(8, hd), hd, points, 8 if hd >= 16 else 1)),
        "mlp": (_axis(max(m, d // 8), d, points, m), _axis(max(m, h // 16), h, points, 32 if h >= 128 else 1)),
    }


# -- measuring ----------------------------------------------------------------------------
def part_module(part: str, widths: tuple[int, ...], dims: dict, model=None):
    """A random-init torch module for one table entry (eval mode)."""
    import copy

    import torch
    from torch import nn

    from ...prune.compact import CompactAttention, CompactMlp

    d, heads, hd = dims["embed_dim"], dims["num_heads"], dims["head_dim"]
    torch.manual_seed(0)

    class _Residual(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.inner = inner

        def forward(self, x):
            return x + self.inner(self.norm(x))

    if part == "attn":
        w_in, v = widths
        return _Residual(CompactAttention(d, w_in, heads, hd, [v] * heads, bias=True)).eval()
    if part == "mlp":
        w_in, h = widths
        return _Residual(CompactMlp(d, w_in, h, nn.GELU())).eval()
    if part == "stem":  # the model without its blocks: patch embed, tokens, final norm, head
        if model is None:
            raise VtpError("measuring the stem needs the model")
        blocks = model.blocks
        try:
            model.blocks = nn.Sequential()
            stem = copy.deepcopy(model)
        finally:
            model.blocks = blocks
        return stem.eval()
    raise VtpError(f"unknown latency part {part!r}")


def _input(part: str, dims: dict, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if part == "stem":
        return rng.standard_normal((batch, dims["in_chans"], *dims["img_size"]), dtype=np.float32)
    return rng.standard_normal((batch, dims["tokens"], dims["embed_dim"]), dtype=np.float32)


def runner_measure(backend: str, batch: int, device: str = "cpu", threads: int | None = None,
                   iters: int = 20, warmup: int = 3, model=None, warmup_s: float = WARMUP_S) -> MeasureFn:
    """The default measure function: build the part, load it in a vtpdeploy runner, median ms.

    Non-torch backends run the part exported by the one exporter (`export_onnx`, checker only: the
    graph is only timed); timing is the bench loop's (`warmup_s` and at least `warmup` calls first).
    """

    def measure_part(part: str, widths: tuple[int, ...], dims: dict) -> float:
        module = part_module(part, widths, dims, model)
        x = _input(part, dims, batch)
        if backend == "torch":
            return _median_ms(backend, module, x, device, threads, iters, warmup, warmup_s)
        with tempfile.TemporaryDirectory(prefix="vtp-lat-") as tmp:
            artifact = Path(tmp) / "part.onnx"
            export_onnx(module, artifact, batch=batch, sample=x, validate=False)
            return _median_ms(backend, artifact, x, device, threads, iters, warmup, warmup_s)

    return measure_part


def _median_ms(backend: str, artifact, x: np.ndarray, device: str, threads: int | None, iters: int,
               warmup_iters: int, warmup_s: float) -> float:
    """Median per-call latency of `artifact` on `x`, from the bench timing loop (one slot)."""
    from ..runners import make_runner

    with make_runner(backend, artifact, device=device, threads=threads) as runner:
        slot = loop.Slot("latency-table", runner, x)
        loop.warmup([slot], warmup_s, min_iters=warmup_iters)
        loop.measure([slot], duration_s=None, iters=iters, block_iters=iters)
    return float(np.median(slot.latencies_ms))


def measure_table(
    model,
    backend: str = "torch",
    *,
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    points: int = 5,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    measure_fn: MeasureFn | None = None,
    device_label: str | None = None,
    iters: int = 20,
    progress: Callable[[str], None] | None = None,
) -> LatencyTable:
    """The latency table of `model`'s shape on this device/backend: from the cache, else measured.

    `measure_fn(part, widths, dims) -> ms` replaces the runner-based measurement (tests, custom
    harnesses); `device_label` overrides the detected CPU/GPU name in the cache key.
    """
    dims = model_dims(model)
    key = table_key(dims, backend, batch, device, threads, points, device_label)
    path = cache_path(key, cache_dir)
    if path.is_file() and not refresh:
        try:
            table = LatencyTable.load(path)
            if table.key == key:
                return table
        except VtpError:
            pass  # unreadable cache entry: re-measure and overwrite
    fn = measure_fn or runner_measure(backend, batch, device, threads, iters=iters, model=model)
    say = progress or (lambda msg: None)
    grid = default_grid(dims, points)
    n = 0

    def grid_ms(part: str) -> Grid:
        nonlocal n
        a, b = grid[part]
        ms = []
        for x in a:
            row = []
            for y in b:
                row.append(float(fn(part, (x, y), dims)))
                n += 1
            ms.append(row)
            say(f"latency table {part}: {x} done")
        return Grid(a=a, b=b, ms=ms)

    attn, mlp = grid_ms("attn"), grid_ms("mlp")
    stem = float(fn("stem", (), dims))
    n += 1
    table = LatencyTable(key=key, depth=dims["depth"], num_heads=dims["num_heads"], head_dim=dims["head_dim"],
                         attn=attn, mlp=mlp, stem_ms=stem, measurements=n,
                         created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    table.save(path)
    return table


def measure_model_ms(model, backend: str = "torch", batch: int = 1, device: str = "cpu",
                     threads: int | None = None, iters: int = 20, onnx_path: str | Path | None = None,
                     warmup_s: float = WARMUP_S) -> float:
    """Median latency of a whole model (torch module, or `onnx_path` for ort/openvino)."""
    dims = model_dims(model)
    x = _input("stem", dims, batch)
    artifact = model.eval() if backend == "torch" else onnx_path
    if artifact is None:
        raise VtpError(f"measure_model_ms: backend {backend!r} needs onnx_path")
    return _median_ms(backend, artifact, x, device, threads, iters, 3, warmup_s)
