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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...console import package_versions
from ...errors import VtpError
from ...prune.latency_plan import Calibration, Grid, LatencyTable
from ...prune.sites import read_dims
from ..export.onnx_export import export_onnx
from .environment import cpu_model
from . import loop

MeasureFn = Callable[[str, tuple[int, ...], dict], float]
WARMUP_S = 0.05  # time-based warm-up per table entry (the bench loop's; a table has ~50 entries)
BLOCK_ITERS = 5  # calls per entry per round: the first call after another session pays for its idle threads
CALIBRATION_KEEPS = (1.0, 0.7, 0.4)  # whole models (fraction of every gate kept) that calibrate the part sum


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
def part_module(part: str, widths: tuple[int, ...], dims: dict, model=None, slice_input: bool = False):
    """A random-init torch module for one table entry (eval mode). `slice_input`: a pruned input width is a
    slice of the residual stream (profiles with `shared_input_order`), not a gather."""
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
        return _Residual(CompactAttention(d, w_in, heads, hd, [v] * heads, bias=True, slice_input=slice_input)).eval()
    if part == "mlp":
        w_in, h = widths
        return _Residual(CompactMlp(d, w_in, h, nn.GELU(), slice_input=slice_input)).eval()
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


def sample_input(part: str, dims: dict, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if part == "stem":
        return rng.standard_normal((batch, dims["in_chans"], *dims["img_size"]), dtype=np.float32)
    return rng.standard_normal((batch, dims["tokens"], dims["embed_dim"]), dtype=np.float32)


def timed_artifact(backend: str, module, x: np.ndarray, path: Path):
    """What the runner loads: the module itself for torch, else its ONNX from the one exporter (checker
    only: the graph is only timed)."""
    if backend == "torch":
        return module
    export_onnx(module, path, batch=x.shape[0], sample=x, validate=False)
    return path


def _median_ms(backend: str, artifact, x: np.ndarray, device: str, threads: int | None, iters: int,
               warmup_iters: int, warmup_s: float) -> float:
    """Median per-call latency of `artifact` on `x`, from the bench timing loop (one slot)."""
    from ..runners import make_runner

    with make_runner(backend, artifact, device=device, threads=threads) as runner:
        slot = loop.Slot("latency-table", runner, x)
        loop.warmup([slot], warmup_s, min_iters=warmup_iters)
        loop.measure([slot], duration_s=None, iters=iters, block_iters=iters)
    return float(np.median(slot.latencies_ms))


def runner_measure(backend: str, batch: int, device: str = "cpu", threads: int | None = None,
                   iters: int = 20, warmup: int = 3, model=None, warmup_s: float = WARMUP_S,
                   slice_input: bool = False) -> MeasureFn:
    """One part at a time through a vtpdeploy runner, median ms (for a custom harness; `measure_table`
    itself measures all entries interleaved)."""

    def measure_part(part: str, widths: tuple[int, ...], dims: dict) -> float:
        module = part_module(part, widths, dims, model, slice_input)
        x = sample_input(part, dims, batch)
        with tempfile.TemporaryDirectory(prefix="vtp-lat-") as tmp:
            artifact = timed_artifact(backend, module, x, Path(tmp) / "part.onnx")
            return _median_ms(backend, artifact, x, device, threads, iters, warmup, warmup_s)

    return measure_part


def measure_interleaved(entries: list[tuple[str, object, np.ndarray]], backend: str, *, device: str = "cpu",
                        threads: int | None = None, rounds: int = 15, block_iters: int = BLOCK_ITERS,
                        warmup_s: float = WARMUP_S) -> list[tuple[float, float]]:
    """(median ms, spread %) per (label, artifact, input): every entry loaded at once and timed in the
    bench loop's interleaved rounds (`block_iters` calls per entry per round), so load changes hit all
    entries alike. Spread = IQR of an entry's calls / their median.

    ONNX Runtime sessions run without thread spinning here: with ~50 sessions alive, the spinning
    threads of the ones just run made the next one ~3x slower on 2 cores; a session timed alone is as
    fast without spinning (DeiT-S part and whole model, measured)."""
    from contextlib import ExitStack

    from ..runners import make_runner

    options = {"spin": "off"} if backend == "ort" else {}
    with ExitStack() as stack:
        slots = [loop.Slot(label, stack.enter_context(make_runner(backend, art, device=device, threads=threads,
                                                                  **options)), x)
                 for label, art, x in entries]
        loop.warmup(slots, warmup_s, min_iters=3)
        loop.measure(slots, duration_s=None, iters=rounds * block_iters, block_iters=block_iters)
    out = []
    for slot in slots:
        q25, q50, q75 = np.percentile(slot.latencies_ms, [25, 50, 75])
        out.append((float(q50), float(100.0 * (q75 - q25) / q50)))
    return out


def calibration_models(model, keeps: Sequence[float], constraints):
    """(keep, compact model, its BlockWidths) for each whole model the table is calibrated on."""
    import copy

    from ...prune.compact import compact, widths_from_plan
    from ...prune.gates import add_gates, iter_gates
    from ...prune.latency_plan import ladder_plan

    gated = model if next(iter_gates(model), None) is not None else add_gates(copy.deepcopy(model))
    out = []
    for keep in keeps:
        p = ladder_plan(gated, keep, constraints, importance="weight_l1")
        out.append((keep, compact(gated, p).eval(), widths_from_plan(p)))
    return out


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
    iters: int = 15,
    constraints=None,
    calibrate: Sequence[float] = CALIBRATION_KEEPS,
    progress: Callable[[str], None] | None = None,
) -> LatencyTable:
    """The latency table of `model`'s shape on this device/backend: from the cache, else measured.

    Every grid entry, the stem and the calibration models (whole compact models keeping each fraction in
    `calibrate` of every gate under `constraints`) are measured interleaved for `iters` rounds with the
    runner and `threads` the final model gets; the table stores medians, their spread and the fitted
    `Calibration`. `measure_fn(part, widths, dims) -> ms` replaces the runner (tests, custom harnesses;
    part "model" gets a tuple of BlockWidths); `device_label` overrides the detected device name.
    """
    dims = model_dims(model)
    key = table_key(dims, backend, batch, device, threads, points, device_label)
    key.update(rounds=int(iters), calibration_keeps=[float(k) for k in calibrate],
               profile=getattr(constraints, "profile", "none"))
    slice_input = bool(getattr(constraints, "shared_input_order", False))
    if slice_input:  # tables measured with input gathers (before shared input order) must not be reused
        key["input_slices"] = True
    path = cache_path(key, cache_dir)
    if path.is_file() and not refresh:
        try:
            table = LatencyTable.load(path)
            if table.key == key:
                return table
        except VtpError:
            pass  # unreadable cache entry: re-measure and overwrite
    say = progress or (lambda msg: None)
    grid = default_grid(dims, points)
    parts: list[tuple[str, tuple[int, ...]]] = [("attn", (x, y)) for x in grid["attn"][0] for y in grid["attn"][1]]
    parts += [("mlp", (x, y)) for x in grid["mlp"][0] for y in grid["mlp"][1]] + [("stem", ())]
    calib = calibration_models(model, calibrate, constraints)
    spreads: list[float] = []
    if measure_fn is not None:
        values = [float(measure_fn(part, w, dims)) for part, w in parts]
        whole = [float(measure_fn("model", tuple(widths), dims)) for _, _, widths in calib]
        whole_spread: list[float | None] = [None] * len(calib)
    else:
        say(f"latency table: {len(parts)} parts + {len(calib)} whole models on {backend}, {iters} interleaved rounds")
        with tempfile.TemporaryDirectory(prefix="vtp-lat-") as tmp:
            entries = []
            for i, (part, w) in enumerate(parts):
                x = sample_input(part, dims, batch)
                module = part_module(part, w, dims, model, slice_input)
                entries.append((f"{part}{w}", timed_artifact(backend, module, x, Path(tmp) / f"p{i}.onnx"), x))
            x = sample_input("stem", dims, batch)
            for keep, small, _ in calib:
                entries.append((f"model@{keep}", timed_artifact(backend, small, x, Path(tmp) / f"m{keep}.onnx"), x))
            measured = measure_interleaved(entries, backend, device=device, threads=threads, rounds=iters)
        values = [m for m, _ in measured[:len(parts)]]
        whole = [m for m, _ in measured[len(parts):]]
        whole_spread = [round(sp, 2) for _, sp in measured[len(parts):]]
        spreads = [sp for _, sp in measured]
    it = iter(values)

    def grid_of(part: str) -> Grid:
        a, b = grid[part]
        return Grid(a=a, b=b, ms=[[next(it) for _ in b] for _ in a])

    attn, mlp = grid_of("attn"), grid_of("mlp")
    stem = next(it)
    table = LatencyTable(key=key, depth=dims["depth"], num_heads=dims["num_heads"], head_dim=dims["head_dim"],
                         attn=attn, mlp=mlp, stem_ms=stem, measurements=len(parts) + len(calib), rounds=int(iters),
                         spread_pct=round(float(np.median(spreads)), 2) if spreads else None,
                         created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if calib:
        points_ = [{"keep": keep, "part_sum_ms": table.part_sum_widths(widths), "measured_ms": ms,
                    "spread_pct": sp} for (keep, _, widths), ms, sp in zip(calib, whole, whole_spread)]
        table.calibration = Calibration.fit(points_)
        say(f"latency table: calibration scale {table.calibration.scale:.3f}, offset "
            f"{table.calibration.offset_ms:.2f} ms, max residual {table.calibration.max_residual_pct}%")
    table.save(path)
    return table
