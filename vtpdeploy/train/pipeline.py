"""`vtpdeploy pipeline`: train → sparsify → prune → finetune → compact, resumable, into a run dir."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from ..data import (
    ResumableSampler,
    build_dataset,
    data_config_for,
    make_loader,
    make_transform,
    num_classes_of,
    validate_data,
)
from ..console import one_line
from ..errors import CheckpointError, RecipeError
from ..fileio import atomic_write_json, atomic_write_text, sha256_file, sha256_text
from ..latency import make_plan
from ..prune.arch import create_timm
from ..prune.compact import compact_validated
from ..prune.counting import count
from ..prune.gates import add_gates, check_supported, iter_gates, set_gates_trainable
from ..prune.plan import PrunePlan, apply_mask
from ..prune.saving import load, load_weights, save
from .distributed import DistInfo, barrier, broadcast, init_distributed, shutdown
from .epoch_log import EpochLogger, epoch_hook, require_tensorboard
from .events import EventLog
from .loop import LoopSetup, evaluate, fit, seed_everything
from .recipe import Recipe, dump_recipe, section_json
from .report import environment, save_gate_scores, write_run_report
from .rundir import RunDir



@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    console: Console
    data_config: dict
    progress: object | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    events: EventLog = field(default_factory=EventLog)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def micro_batch(self) -> tuple[int, int]:
        """(per-rank micro-batch, accumulation steps) for the recipe's global batch."""
        return micro_batching(self.recipe, self.dist.world_size)

    def loader(self, split: str, epoch: int = 0, skip_batches: int = 0):
        cfg = self.recipe.data
        train = split == "train"
        ds = build_dataset(cfg, split, make_transform(self.data_config, train=train, section=cfg),
                           num_classes=self.num_classes, input_size=tuple(self.data_config["input_size"]))
        if not train:
            return make_loader(ds, cfg, shuffle=False)
        micro, _ = self.micro_batch()
        sampler = ResumableSampler(ds, self.dist.world_size, self.dist.rank, seed=self.recipe.seed, epoch=epoch,
                                   skip=skip_batches * micro)
        return make_loader(ds, cfg, shuffle=False, sampler=sampler, batch_size=micro)

    def setup(self, section, teacher: nn.Module | None = None) -> LoopSetup:
        distill = getattr(section, "distill", "none")
        return LoopSetup(dist=self.dist, accum_steps=self.micro_batch()[1], amp=self.recipe.amp,
                         clip_grad=section.clip_grad, checkpoint_every_steps=section.checkpoint_every_steps,
                         teacher=teacher if distill != "none" else None, distill=distill,
                         distill_alpha=getattr(section, "distill_alpha", 0.5),
                         distill_tau=getattr(section, "distill_tau", 1.0))

    def save(self, model: nn.Module, path: Path) -> None:
        if self.is_main:
            save(model, path)

    def log(self, msg: str) -> None:
        if self.is_main and self.events.enabled:
            self.events.emit("log", message=msg)
        elif self.is_main:
            self.console.log(msg)

    @property
    def num_classes(self) -> int:
        return int(self.recipe.model.kwargs.get("num_classes", 1000))

    def mixup(self, label_smoothing: float):
        from ..data import make_mixup

        return make_mixup(self.recipe.data, self.num_classes, label_smoothing)

    def evaluate(self, model: nn.Module) -> float:
        return round(evaluate(model, self.loader("val"), self.dist.device), 3)


# -- model creation and validation (cheap, before any writes) ------------------------------------
def create_model(recipe: Recipe) -> nn.Module:
    """The recipe's timm model, with the recipe's preprocessing recorded in its data config."""
    m = recipe.model
    seed_everything(recipe.seed)  # reproducible init, identical on every rank
    model = create_timm(m.name, m.kwargs, pretrained=m.pretrained)
    check_supported(model)
    cfg = data_config_for(_model_data_config(model), recipe.data)
    model.pretrained_cfg = {**(model.pretrained_cfg or {}), **{k: cfg[k] for k in ("interpolation", "crop_pct", "mean", "std")}}
    if m.checkpoint is not None:
        load_weights(model, m.checkpoint)
    return model


def _model_data_config(model: nn.Module) -> dict:
    from ..prune.arch import describe

    return describe(model).data_config


def micro_batching(recipe: Recipe, world_size: int) -> tuple[int, int]:
    """Split the global batch into per-rank micro-batches and accumulation steps (exactly)."""
    global_bs = recipe.data.batch_size
    micro = recipe.data.micro_batch_size or global_bs // world_size
    if micro < 1 or global_bs % (micro * world_size):
        raise RecipeError(f"data.batch_size {global_bs} is not a multiple of micro_batch_size {micro} x "
                          f"world size {world_size}")
    return micro, global_bs // (micro * world_size)


def validate_inputs(recipe: Recipe, world_size: int = 1) -> nn.Module:
    """Everything that can be checked before expensive work; returns the created model."""
    validate_data(recipe.data)
    micro_batching(recipe, world_size)
    if "tensorboard" in recipe.log:
        require_tensorboard()
    if recipe.model.checkpoint is not None and not Path(recipe.model.checkpoint).is_file():
        raise CheckpointError(f"model.checkpoint: {recipe.model.checkpoint} not found")
    model = create_model(recipe)
    classes = num_classes_of(recipe.data)
    if classes is not None and model.num_classes != classes:
        raise RecipeError(f"model.kwargs.num_classes is {model.num_classes} but data has {classes} classes")
    return model


# -- keys -----------------------------------------------------------------------------------------
def _key(*parts: str) -> str:
    return sha256_text("\n".join(parts))[:16]


def compute_settings(recipe: Recipe) -> str:
    """Device type and the AMP mode training really uses (AMP is CUDA only): part of every stage key, so a
    checkpoint written on CPU is never resumed as a CUDA fp16 run (and vice versa)."""
    device = recipe.device.split(":")[0]
    return f"device={device} amp={recipe.amp if device == 'cuda' else 'none'}"


def _base_key(recipe: Recipe) -> str:
    ckpt = recipe.model.checkpoint
    ckpt_hash = sha256_file(ckpt) if ckpt is not None else ""
    return _key(section_json(recipe, "model"), section_json(recipe, "data"), str(recipe.seed), ckpt_hash)


# -- stages ---------------------------------------------------------------------------------------
def _fit(ctx: Context, model: nn.Module, section, key: str, name: str, seed_offset: int, **kw):
    r = ctx.recipe
    logger = EpochLogger(ctx.path, name, r.log) if ctx.is_main and r.log else None  # rank 0 writes logs
    events = ctx.events if ctx.is_main else EventLog()
    on_epoch = epoch_hook(name, section.epochs, model, lambda: ctx.evaluate(model), logger, events)
    try:
        return fit(model, lambda e, skip: ctx.loader("train", e, skip), section, seed=r.seed + seed_offset,
                   stage_key=key, checkpoint_path=ctx.path / "ckpt" / f"{name}.pt", device=ctx.dist.device,
                   progress=ctx.progress, description=name, log=ctx.log, mixup=ctx.mixup(section.label_smoothing),
                   on_epoch=on_epoch, **kw)
    finally:
        if logger is not None:
            logger.close()


def _stage_train(ctx: Context, model: nn.Module, key: str) -> dict:
    r = ctx.recipe
    history = None
    model = model.to(ctx.dist.device)
    if r.model.checkpoint is None and not r.model.pretrained and r.train.epochs > 0:
        history = _fit(ctx, model, r.train, key, "train", 0, setup=ctx.setup(r.train))
    ctx.save(model, ctx.path / "unpruned")
    acc = ctx.evaluate(model)
    ctx.log(f"train: val top-1 {acc:.2f} %")
    return {"accuracy": acc, "curve": history.as_dict() if history else None,
            "source": "checkpoint" if r.model.checkpoint else ("pretrained" if r.model.pretrained else "trained")}


def _stage_sparsify(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    model = load(ctx.path / "unpruned", ctx.dist.device).train()
    add_gates(model)
    history = None
    if r.sparsify.enabled and r.sparsify.epochs > 0:
        history = _fit(ctx, model, r.sparsify, key, "sparsify", 1, l1_lambda=r.sparsify.lam, train_gates=True,
                       gate_lr=r.sparsify.gate_lr, setup=ctx.setup(r.sparsify))
    ctx.save(model, ctx.path / "stages" / "sparse")
    gates = torch.cat([g.module.gate.detach().abs().flatten().cpu() for g in iter_gates(model)])
    acc = ctx.evaluate(model)
    ctx.log(f"sparsify: val top-1 {acc:.2f} %, mean |gate| {float(gates.mean()):.3f}")
    return {"accuracy": acc, "enabled": r.sparsify.enabled, "curve": history.as_dict() if history else None,
            "gate_abs": {"mean": float(gates.mean()), "min": float(gates.min()), "max": float(gates.max()),
                         "below_0.1": float((gates < 0.1).float().mean())}}


def _stage_prune(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    model = load(ctx.path / "stages" / "sparse", ctx.dist.device)
    p, latency = make_plan(model, r.prune, r.threads, ctx.log)
    if ctx.is_main:
        p.save(ctx.path / "plan.json")
        save_gate_scores(model, p, ctx.path / "gate_scores.json")  # for the report's histograms (before masking)
    acc = ctx.evaluate(apply_mask(model, p))
    ctx.log(f"prune: profile {p.constraints.profile}, realised rate {p.realised_rate:.3f}, "
            f"hard-mask val top-1 {acc:.2f} %")
    return {"accuracy": acc, "realised_rate": p.realised_rate, "thresholds": p.thresholds, "latency": latency}


def _stage_finetune(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    model = load(ctx.path / "stages" / "sparse", ctx.dist.device).train()
    p = PrunePlan.load(ctx.path / "plan.json")
    apply_mask(model, p)
    set_gates_trainable(model, False)  # pruned gates stay exactly 0; kept ones fold into weights later
    history = None
    if r.finetune.epochs > 0:
        teacher = load(ctx.path / "unpruned", ctx.dist.device) if r.finetune.distill != "none" else None
        if r.finetune.distill == "hard" and hasattr(model, "set_distilled_training"):
            model.set_distilled_training(True)
        history = _fit(ctx, model, r.finetune, key, "finetune", 2, setup=ctx.setup(r.finetune, teacher))
        if hasattr(model, "set_distilled_training"):
            model.set_distilled_training(False)
    ctx.save(model, ctx.path / "stages" / "finetuned")
    acc = ctx.evaluate(model)
    ctx.log(f"finetune: val top-1 {acc:.2f} %")
    return {"accuracy": acc, "curve": history.as_dict() if history else None, "distill": r.finetune.distill}


def _stage_compact(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    gated = load(ctx.path / "stages" / "finetuned", ctx.dist.device)
    p = PrunePlan.load(ctx.path / "plan.json")
    sample = next(iter(ctx.loader("val")))[0][:16].to(ctx.dist.device)
    small, diff = compact_validated(gated, p, sample, atol=r.prune.atol)
    ctx.save(small, ctx.path / "model")
    acc = ctx.evaluate(small)
    unpruned = load(ctx.path / "unpruned", ctx.dist.device)
    img = tuple(ctx.data_config["input_size"][1:])
    counts = {"unpruned": count(unpruned, img), "compact": count(small, img)}
    ctx.log(f"compact: max |Δlogit| vs hard mask {diff:.2e}, val top-1 {acc:.2f} %")
    return {"accuracy": acc, "max_abs_diff": diff, "atol": r.prune.atol, "counts": counts}


def _stage_export(ctx: Context, key: str) -> dict:
    """The `export` section: the same code as `vtpdeploy calib` + `vtpdeploy export` on this run dir."""
    from ..deploy.export import run_export
    from ..deploy.export.calib import calib_from_source
    from ..deploy.sources import load_source

    if not ctx.is_main:
        return {}
    cfg = ctx.recipe.export
    calib_dir = None
    if cfg.int8:
        calib_dir = ctx.path / "calib"
        calib_from_source(ctx.path, calib_dir, n=cfg.calib_n, seed=cfg.calib_seed)
    result = run_export(load_source(ctx.path), ctx.path / "export", cfg, calib_dir, threads=ctx.recipe.threads,
                        log=ctx.log)
    ctx.log(f"export: wrote {', '.join(sorted(p.name for p in _export_files(ctx.path).values()))}")
    return {"export": result}


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the recipe section and earlier stages its key depends on, and what it writes."""

    name: str
    section: str  # recipe section (default: the stage's own name)
    inputs: tuple[str, ...]  # earlier stages whose artifacts it reads
    run: Callable[[Context, str, nn.Module], dict]
    artifacts: Callable[[Path], dict[str, Path]]  # name -> file, once the stage has run


def _model_files(stem: str) -> Callable[[Path], dict[str, Path]]:
    return lambda run_dir: {"weights": run_dir / f"{stem}.safetensors", "arch": run_dir / f"{stem}.json"}


def _export_files(run_dir: Path) -> dict[str, Path]:
    return {p.stem.replace(".", "_"): p for p in sorted((run_dir / "export").glob("*"))
            if p.is_file() and not p.name.startswith(".")}


STAGE_TABLE = (
    Stage("train", "train", (), lambda ctx, key, model: _stage_train(ctx, model, key), _model_files("unpruned")),
    Stage("sparsify", "sparsify", ("train",), lambda ctx, key, _: _stage_sparsify(ctx, key),
          _model_files("stages/sparse")),
    Stage("prune", "prune", ("sparsify",), lambda ctx, key, _: _stage_prune(ctx, key),
          lambda run_dir: {"plan": run_dir / "plan.json"}),
    Stage("finetune", "finetune", ("sparsify", "prune"), lambda ctx, key, _: _stage_finetune(ctx, key),
          _model_files("stages/finetuned")),
    Stage("compact", "prune", ("finetune", "prune"), lambda ctx, key, _: _stage_compact(ctx, key),
          _model_files("model")),
    Stage("export", "export", ("compact",), lambda ctx, key, _: _stage_export(ctx, key), _export_files),
)
STAGES = tuple(stage.name for stage in STAGE_TABLE)


def _write_report(ctx: Context, wall_s: float) -> dict:
    stages = ctx.run.manifest["stages"]
    m = {name: stages.get(name, {}).get("metrics", {}) for name in STAGES}
    p = PrunePlan.load(ctx.path / "plan.json")
    counts = m["compact"]["counts"]
    report = {
        "format": "vtpdeploy-report",
        "version": 1,
        "model": ctx.recipe.model.name,
        "data": ctx.recipe.data.kind,
        "params": {k: v["params"] for k, v in counts.items()},
        "macs": {k: v["macs"] for k, v in counts.items()},
        "reduction": {
            "params": round(1 - counts["compact"]["params"] / counts["unpruned"]["params"], 4),
            "macs": round(1 - counts["compact"]["macs"] / counts["unpruned"]["macs"], 4),
        },
        "accuracy": {
            "unpruned": m["train"]["accuracy"],
            "sparsified": m["sparsify"]["accuracy"],
            "pruned": m["prune"]["accuracy"],
            "finetuned": m["compact"]["accuracy"],
        },
        "compaction": {"max_abs_diff": m["compact"]["max_abs_diff"], "atol": m["compact"]["atol"]},
        "plan": p.summary(),
        "curves": {"train": m["train"].get("curve"), "sparsify": m["sparsify"].get("curve"),
                   "finetune": m["finetune"].get("curve")},
        "latency_plan": m["prune"].get("latency"),
        "stage_seconds": {n: stages[n].get("duration_s") for n in STAGES if n in stages},
        "wall_seconds": round(wall_s, 2),
        "environment": environment(ctx.run.manifest.get("packages")),
    }
    if ctx.recipe.export.enabled and m["export"]:
        report["export"] = m["export"].get("export")
    atomic_write_json(ctx.path / "report.json", report)
    return report


def _write_report_md(ctx: Context) -> None:
    """report.md + figures; a failure here never fails the finished run (`vtpdeploy report RUN` retries)."""
    try:
        path = write_run_report(ctx.path)
    except Exception as exc:  # noqa: BLE001 - every result is already on disk
        ctx.log(f"report: report.md not written ({type(exc).__name__}: {one_line(exc, 160)}); "
                f"retry with `vtpdeploy report {ctx.path}`")
    else:
        ctx.log(f"report: wrote {path}")


def _progress(console: Console, enabled: bool = True):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not (enabled and console.is_terminal), transient=False)


def run_pipeline(recipe: Recipe, out: Path | None = None, console: Console | None = None,
                 events: EventLog | None = None, until: str | None = None) -> dict:
    """Run every stage not already done with the same inputs; returns the report.

    `until`: stop after this stage (e.g. 'train' to train and cache a base model); the result is then
    {'until': stage, 'metrics': that stage's metrics} and no report is written.

    Under torchrun every rank trains (DDP); only rank 0 writes to the run dir. `events`: JSON progress
    lines (`--log-format json`) instead of the rich console.
    """
    console = console or Console(stderr=True)
    events = events or EventLog()
    out = Path(out or recipe.output.dir)
    if until is not None and until not in STAGES:
        raise RecipeError(f"--until {until!r}: not a stage; choose one of {', '.join(STAGES)}")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    info = init_distributed(recipe.device)
    try:
        if info.is_main:
            RunDir.check_usable(out)
        model = validate_inputs(recipe, info.world_size)  # all cheap checks before touching the run dir
        return _run_stages(recipe, out, console, info, model, events if info.is_main else EventLog(), until)
    finally:
        shutdown(info)


def _run_stages(recipe: Recipe, out: Path, console: Console, info: DistInfo, model: nn.Module,
                events: EventLog, until: str | None = None) -> dict:
    t_start = time.perf_counter()
    run = RunDir(out, world_size=info.world_size)
    with run if info.is_main else contextlib.nullcontext():  # rank 0 holds the lock
        barrier(info)
        if not info.is_main:
            run.manifest = json.loads(run.manifest_path.read_text())
        recipe = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": out})})
        if info.is_main:
            atomic_write_text(out / "recipe.yaml", dump_recipe(recipe))
        ctx = Context(recipe, run, console, _model_data_config(model), dist=info, events=events)
        with _progress(console, enabled=info.is_main and not events.enabled) as progress:
            ctx.progress = progress
            upstream = _base_key(recipe)
            for i, stage in enumerate(STAGE_TABLE):
                name = stage.name
                if until is not None and i > STAGES.index(until):
                    break
                if name == "export" and not recipe.export.enabled:
                    continue
                art = json.dumps({s: run.artifact_hashes(s) for s in stage.inputs}, sort_keys=True)
                key = _key(upstream, section_json(recipe, stage.section), art, name, compute_settings(recipe))
                upstream = key
                if broadcast(info, run.is_done(name, key) if info.is_main else None):
                    ctx.log(f"{name}: up to date, skipped")
                    events.emit("stage_skip", stage=name, key=key)
                    continue
                events.emit("stage_start", stage=name, key=key)
                t0 = 0.0
                if info.is_main:
                    run.invalidate_from(list(STAGES[i:]))
                    t0 = run.start(name, key)
                seed_everything(recipe.seed)
                metrics = stage.run(ctx, key, model)
                artifacts = stage.artifacts(out) if info.is_main else {}
                barrier(info)
                if info.is_main:
                    run.finish(name, key, t0, artifacts, metrics)
                    events.emit("stage_end", stage=name, key=key, duration_s=run.stage(name).get("duration_s"),
                                accuracy=metrics.get("accuracy"))
                    with contextlib.suppress(FileNotFoundError):
                        (out / "ckpt" / f"{name}.pt").unlink()
                barrier(info)
                if not info.is_main:
                    run.manifest = json.loads(run.manifest_path.read_text())
        if until is not None and until != STAGES[-1]:
            barrier(info)
            return {"until": until, "metrics": run.stage(until).get("metrics", {})} if info.is_main else {}
        report = _write_report(ctx, time.perf_counter() - t_start) if info.is_main else {}
        if info.is_main:
            _write_report_md(ctx)
            events.emit("pipeline_end", run_dir=str(out), report=str(out / "report.json"),
                        accuracy=report["accuracy"], params=report["params"], macs=report["macs"])
        barrier(info)
    return report


