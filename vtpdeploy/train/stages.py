"""The pipeline's stages, each `run(ctx, key) -> metrics`, and STAGE_TABLE: what each reads and writes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..latency import make_plan
from ..prune.compact import compact_validated
from ..prune.counting import count
from ..prune.gates import add_gates, iter_gates, set_gates_trainable
from ..prune.plan import PrunePlan, apply_mask
from ..prune.saving import load
from .context import Context
from .epoch_log import EpochLogger, epoch_hook
from .events import EventLog
from .loop import fit
from .report import save_gate_scores


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


def _stage_train(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    history = None
    model = ctx.model.to(ctx.dist.device)
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
    add_gates(model, qk_dims=r.sparsify.qk_dims)
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
    run: Callable[[Context, str], dict]
    artifacts: Callable[[Path], dict[str, Path]]  # name -> file, once the stage has run


def _model_artifacts(stem: str, run_dir: Path) -> dict[str, Path]:
    return {"weights": run_dir / f"{stem}.safetensors", "arch": run_dir / f"{stem}.json"}


def _model_files(stem: str) -> Callable[[Path], dict[str, Path]]:
    return functools.partial(_model_artifacts, stem)


def _plan_files(run_dir: Path) -> dict[str, Path]:
    return {"plan": run_dir / "plan.json"}


def _export_files(run_dir: Path) -> dict[str, Path]:
    return {p.stem.replace(".", "_"): p for p in sorted((run_dir / "export").glob("*"))
            if p.is_file() and not p.name.startswith(".")}


STAGE_TABLE = (
    Stage("train", "train", (), _stage_train, _model_files("unpruned")),
    Stage("sparsify", "sparsify", ("train",), _stage_sparsify, _model_files("stages/sparse")),
    Stage("prune", "prune", ("sparsify",), _stage_prune, _plan_files),
    Stage("finetune", "finetune", ("sparsify", "prune"), _stage_finetune, _model_files("stages/finetuned")),
    Stage("compact", "prune", ("finetune", "prune"), _stage_compact, _model_files("model")),
    Stage("export", "export", ("compact",), _stage_export, _export_files),
)
STAGES = tuple(stage.name for stage in STAGE_TABLE)
