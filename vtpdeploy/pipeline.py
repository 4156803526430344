"""`vtpdeploy pipeline`: train → sparsify → prune → finetune → compact, resumable, into a run dir."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from .arch import create_timm
from .compact import compact_validated
from .counting import count
from .data import build_dataset, data_config_for, make_loader, make_transform, num_classes_of, validate_data
from .errors import CheckpointError, RecipeError, UnsupportedModelError, VtpError
from .fileio import atomic_write_json, atomic_write_text, sha256_file, sha256_text
from .gates import add_gates, check_supported, iter_gates, set_gates_trainable
from .plan import PrunePlan, apply_mask, plan
from .recipe import Recipe, dump_recipe, section_json
from .rundir import RunDir
from .saving import load, load_weights, read_state_dict, save
from .training import evaluate, fit

STAGES = ("train", "sparsify", "prune", "finetune", "compact")


@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    console: Console
    data_config: dict
    progress: object | None = None

    @property
    def path(self) -> Path:
        return self.run.path

    def loader(self, split: str, epoch: int = 0):
        cfg = self.recipe.data
        train = split == "train"
        ds = build_dataset(cfg, split, make_transform(self.data_config, train=train, section=cfg),
                           num_classes=self.num_classes, input_size=tuple(self.data_config["input_size"]))
        return make_loader(ds, cfg, shuffle=train, seed=self.recipe.seed * 1000 + epoch, drop_last=False)

    @property
    def num_classes(self) -> int:
        return int(self.recipe.model.kwargs.get("num_classes", 1000))

    def mixup(self, label_smoothing: float):
        from .data import make_mixup

        return make_mixup(self.recipe.data, self.num_classes, label_smoothing)

    def evaluate(self, model: nn.Module) -> float:
        return round(evaluate(model, self.loader("val"), self.recipe.device), 3)


# -- model creation and validation (cheap, before any writes) ------------------------------------
def create_model(recipe: Recipe) -> nn.Module:
    """The recipe's timm model, with the recipe's preprocessing recorded in its data config."""
    m = recipe.model
    model = create_timm(m.name, m.kwargs, pretrained=m.pretrained)
    check_supported(model)
    cfg = data_config_for(_model_data_config(model), recipe.data)
    model.pretrained_cfg = {**(model.pretrained_cfg or {}), **{k: cfg[k] for k in ("interpolation", "crop_pct", "mean", "std")}}
    if m.checkpoint is not None:
        load_weights(model, m.checkpoint)
    return model


def _model_data_config(model: nn.Module) -> dict:
    from .arch import describe

    return describe(model).data_config


def validate_inputs(recipe: Recipe) -> nn.Module:
    """Everything that can be checked before expensive work; returns the created model."""
    validate_data(recipe.data)
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


def _base_key(recipe: Recipe) -> str:
    ckpt = recipe.model.checkpoint
    ckpt_hash = sha256_file(ckpt) if ckpt is not None else ""
    return _key(section_json(recipe, "model"), section_json(recipe, "data"), str(recipe.seed), ckpt_hash)


# -- stages ---------------------------------------------------------------------------------------
def _stage_train(ctx: Context, model: nn.Module, key: str) -> dict:
    r = ctx.recipe
    history = None
    if r.model.checkpoint is None and not r.model.pretrained and r.train.epochs > 0:
        history = fit(model, lambda e: ctx.loader("train", e), r.train, seed=r.seed, stage_key=key,
                      checkpoint_path=ctx.path / "ckpt" / "train.pt", device=r.device,
                      progress=ctx.progress, description="train", log=ctx.console.log, mixup=ctx.mixup(r.train.label_smoothing))
    save(model, ctx.path / "unpruned")
    acc = ctx.evaluate(model)
    ctx.console.log(f"train: val top-1 {acc:.2f} %")
    return {"accuracy": acc, "curve": history.as_dict() if history else None,
            "source": "checkpoint" if r.model.checkpoint else ("pretrained" if r.model.pretrained else "trained")}


def _stage_sparsify(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    model = load(ctx.path / "unpruned", r.device).train()
    add_gates(model)
    history = None
    if r.sparsify.enabled and r.sparsify.epochs > 0:
        history = fit(model, lambda e: ctx.loader("train", e), r.sparsify, seed=r.seed + 1, stage_key=key,
                      checkpoint_path=ctx.path / "ckpt" / "sparsify.pt", l1_lambda=r.sparsify.lam,
                      train_gates=True, gate_lr=r.sparsify.gate_lr, device=r.device,
                      progress=ctx.progress, description="sparsify", log=ctx.console.log,
                      mixup=ctx.mixup(r.sparsify.label_smoothing))
    save(model, ctx.path / "stages" / "sparse")
    gates = torch.cat([g.module.gate.detach().abs().flatten() for g in iter_gates(model)])
    acc = ctx.evaluate(model)
    ctx.console.log(f"sparsify: val top-1 {acc:.2f} %, mean |gate| {float(gates.mean()):.3f}")
    return {"accuracy": acc, "enabled": r.sparsify.enabled, "curve": history.as_dict() if history else None,
            "gate_abs": {"mean": float(gates.mean()), "min": float(gates.min()), "max": float(gates.max()),
                         "below_0.1": float((gates < 0.1).float().mean())}}


def _stage_prune(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    model = load(ctx.path / "stages" / "sparse", r.device)
    p = plan(model, r.prune.rate, scope=r.prune.scope, importance=r.prune.importance)
    p.save(ctx.path / "plan.json")
    acc = ctx.evaluate(apply_mask(model, p))
    ctx.console.log(f"prune: realised rate {p.realised_rate:.3f}, hard-mask val top-1 {acc:.2f} %")
    return {"accuracy": acc, "realised_rate": p.realised_rate, "thresholds": p.thresholds}


def _stage_finetune(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    model = load(ctx.path / "stages" / "sparse", r.device).train()
    p = PrunePlan.load(ctx.path / "plan.json")
    apply_mask(model, p)
    set_gates_trainable(model, False)  # pruned gates stay exactly 0; kept ones fold into weights later
    history = None
    if r.finetune.epochs > 0:
        history = fit(model, lambda e: ctx.loader("train", e), r.finetune, seed=r.seed + 2, stage_key=key,
                      checkpoint_path=ctx.path / "ckpt" / "finetune.pt", device=r.device,
                      progress=ctx.progress, description="finetune", log=ctx.console.log,
                      mixup=ctx.mixup(r.finetune.label_smoothing))
    save(model, ctx.path / "stages" / "finetuned")
    acc = ctx.evaluate(model)
    ctx.console.log(f"finetune: val top-1 {acc:.2f} %")
    return {"accuracy": acc, "curve": history.as_dict() if history else None}


def _stage_compact(ctx: Context, key: str) -> dict:
    r = ctx.recipe
    gated = load(ctx.path / "stages" / "finetuned", r.device)
    p = PrunePlan.load(ctx.path / "plan.json")
    sample = next(iter(ctx.loader("val")))[0][:16].to(r.device)
    small, diff = compact_validated(gated, p, sample, atol=r.prune.atol)
    save(small, ctx.path / "model")
    acc = ctx.evaluate(small)
    unpruned = load(ctx.path / "unpruned", r.device)
    img = tuple(ctx.data_config["input_size"][1:])
    counts = {"unpruned": count(unpruned, img), "compact": count(small, img)}
    ctx.console.log(f"compact: max |Δlogit| vs hard mask {diff:.2e}, val top-1 {acc:.2f} %")
    return {"accuracy": acc, "max_abs_diff": diff, "atol": r.prune.atol, "counts": counts}


def _write_report(ctx: Context, wall_s: float) -> dict:
    stages = ctx.run.manifest["stages"]
    m = {name: stages[name].get("metrics", {}) for name in STAGES}
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
        "stage_seconds": {n: stages[n].get("duration_s") for n in STAGES},
        "wall_seconds": round(wall_s, 2),
    }
    atomic_write_json(ctx.path / "report.json", report)
    return report


def _progress(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not console.is_terminal, transient=False)


def run_pipeline(recipe: Recipe, out: Path | None = None, console: Console | None = None) -> dict:
    """Run every stage not already done with the same inputs; returns the report."""
    console = console or Console(stderr=True)
    out = Path(out or recipe.output.dir)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    RunDir.check_usable(out)
    model = validate_inputs(recipe)  # all cheap checks before touching the run dir
    t_start = time.perf_counter()
    with RunDir(out) as run:
        recipe = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": out})})
        atomic_write_text(out / "recipe.yaml", dump_recipe(recipe))
        ctx = Context(recipe, run, console, _model_data_config(model))
        with _progress(console) as progress:
            ctx.progress = progress
            keys: dict[str, str] = {}
            upstream = _base_key(recipe)
            sections = {"train": "train", "sparsify": "sparsify", "prune": "prune", "finetune": "finetune",
                        "compact": "prune"}
            for i, name in enumerate(STAGES):
                prev = STAGES[i - 1] if i else None
                art = json.dumps(run.artifact_hashes(prev), sort_keys=True) if prev else ""
                keys[name] = _key(upstream, section_json(recipe, sections[name]), art, name)
                upstream = keys[name]
                if run.is_done(name, keys[name]):
                    console.log(f"{name}: up to date, skipped")
                    continue
                run.invalidate_from(list(STAGES[i:]))
                torch.manual_seed(recipe.seed)
                t0 = run.start(name, keys[name])
                metrics, artifacts = _run_stage(ctx, name, keys[name], model)
                run.finish(name, keys[name], t0, artifacts, metrics)
                ckpt = out / "ckpt" / f"{name}.pt"
                with contextlib.suppress(FileNotFoundError):
                    ckpt.unlink()
        report = _write_report(ctx, time.perf_counter() - t_start)
    return report


def _run_stage(ctx: Context, name: str, key: str, model: nn.Module) -> tuple[dict, dict[str, Path]]:
    p = ctx.path
    if name == "train":
        return _stage_train(ctx, model, key), {"weights": p / "unpruned.safetensors", "arch": p / "unpruned.json"}
    if name == "sparsify":
        return _stage_sparsify(ctx, key), {"weights": p / "stages/sparse.safetensors", "arch": p / "stages/sparse.json"}
    if name == "prune":
        return _stage_prune(ctx, key), {"plan": p / "plan.json"}
    if name == "finetune":
        return _stage_finetune(ctx, key), {"weights": p / "stages/finetuned.safetensors",
                                           "arch": p / "stages/finetuned.json"}
    return _stage_compact(ctx, key), {"weights": p / "model.safetensors", "arch": p / "model.json"}
