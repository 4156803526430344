"""`vtpdeploy pipeline`: train → sparsify → prune → finetune → compact (→ export), resumable, into a run dir.

The stages and what each reads and writes are `stages.STAGE_TABLE`; a stage's key hashes the recipe sections and
artifacts it depends on, so a rerun skips every stage whose inputs did not change. Under torchrun every rank
trains (DDP); everything that touches the run dir happens on rank 0, in `_Rank0`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from ..errors import RecipeError
from ..fileio import atomic_write_text, sha256_file, sha256_text
from .context import Context
from ..data import preprocessing
from .distributed import DistInfo, barrier, broadcast, check_device, init_distributed, shutdown
from .events import EventLog
from .checkpoints import seed_everything
from .recipe import Recipe, dump_recipe, section_json
from .rundir import RunDir
from .setup import model_data_config, validate_inputs
from .stages import STAGE_TABLE, STAGES, Stage
from .summary import write_report, write_report_md


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


def _stage_key(recipe: Recipe, run: RunDir, stage: Stage, upstream: str) -> str:
    art = json.dumps({s: run.artifact_hashes(s) for s in stage.inputs}, sort_keys=True)
    return _key(upstream, section_json(recipe, stage.section), art, stage.name, compute_settings(recipe))


class _Rank0:
    """Everything only rank 0 does: hold the run dir's lock, write the recipe, the manifest's stage records, the
    events and the reports. Other ranks get no-ops, and re-read the manifest rank 0 wrote at each `sync`."""

    def __init__(self, run: RunDir, info: DistInfo, events: EventLog):
        self.run, self.info, self.main = run, info, info.is_main
        self.events = events if self.main else EventLog()

    def lock(self):
        return self.run if self.main else contextlib.nullcontext()

    def sync(self) -> None:
        barrier(self.info)
        if not self.main:
            self.run.manifest = json.loads(self.run.manifest_path.read_text())

    def write_recipe(self, recipe: Recipe) -> None:
        if self.main:
            atomic_write_text(self.run.path / "recipe.yaml", dump_recipe(recipe))

    def is_done(self, name: str, key: str) -> bool:
        return broadcast(self.info, self.run.is_done(name, key) if self.main else None)

    def start(self, index: int, name: str, key: str, log, export: bool) -> float:
        """Archive the finished artifacts this stage and the later ones replace (history/<key>/), then start it."""
        self.events.emit("stage_start", stage=name, key=key)
        if not self.main:
            return 0.0
        self.run.keep_finished([s for s in STAGES[index:] if s != "export" or export], log)
        self.run.invalidate_from(list(STAGES[index:]))
        return self.run.start(name, key)

    def finish(self, stage: Stage, key: str, t0: float, metrics: dict) -> None:
        barrier(self.info)
        if self.main:
            self.run.finish(stage.name, key, t0, stage.artifacts(self.run.path), metrics)
            self.events.emit("stage_end", stage=stage.name, key=key,
                             duration_s=self.run.stage(stage.name).get("duration_s"), accuracy=metrics.get("accuracy"))
            with contextlib.suppress(FileNotFoundError):
                (self.run.path / "ckpt" / f"{stage.name}.pt").unlink()
        self.sync()

    def stopped(self, until: str) -> dict:
        """What a run stopped by `until` returns: that stage's metrics (rank 0), no report."""
        barrier(self.info)
        return {"until": until, "metrics": self.run.stage(until).get("metrics", {})} if self.main else {}

    def report(self, ctx: Context, wall_s: float) -> dict:
        if not self.main:
            return {}
        report = write_report(ctx, wall_s)
        write_report_md(ctx)
        self.events.emit("pipeline_end", run_dir=str(self.run.path), report=str(self.run.path / "report.json"),
                         accuracy=report["accuracy"], params=report["params"], macs=report["macs"])
        return report


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
    out = Path(out or recipe.output.dir)
    if until is not None and until not in STAGES:
        raise RecipeError(f"--until {until!r}: not a stage; choose one of {', '.join(STAGES)}")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    check_device(recipe.device)  # before anything is written
    info = init_distributed(recipe.device)
    try:
        if info.is_main:
            RunDir.check_usable(out)
        model = validate_inputs(recipe, info.world_size)  # all cheap checks before touching the run dir
        rank0 = _Rank0(RunDir(out, world_size=info.world_size), info, events or EventLog())
        return _run_stages(recipe, console, model, rank0, until)
    finally:
        shutdown(info)


def _run_stages(recipe: Recipe, console: Console, model, rank0: _Rank0, until: str | None = None) -> dict:
    t_start = time.perf_counter()
    with rank0.lock():
        rank0.sync()
        recipe = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": rank0.run.path})})
        rank0.write_recipe(recipe)
        ctx = Context(recipe, rank0.run, console, model_data_config(model), dist=rank0.info, events=rank0.events,
                      model=model)
        ctx.log(f"data: {recipe.data.kind}, preprocessing {preprocessing(ctx.data_config)}")
        with _progress(console, enabled=rank0.main and not rank0.events.enabled) as ctx.progress:
            upstream = _base_key(recipe)
            for i, stage in enumerate(STAGE_TABLE):
                if until is not None and i > STAGES.index(until):
                    break
                if stage.name == "export" and not recipe.export.enabled:
                    continue
                upstream = key = _stage_key(recipe, rank0.run, stage, upstream)
                if rank0.is_done(stage.name, key):
                    ctx.log(f"{stage.name}: up to date, skipped")
                    rank0.events.emit("stage_skip", stage=stage.name, key=key)
                    continue
                t0 = rank0.start(i, stage.name, key, ctx.log, recipe.export.enabled)
                seed_everything(recipe.seed)
                rank0.finish(stage, key, t0, stage.run(ctx, key))
        if until is not None and until != STAGES[-1]:
            return rank0.stopped(until)
        report = rank0.report(ctx, time.perf_counter() - t_start)
        barrier(rank0.info)
    return report
