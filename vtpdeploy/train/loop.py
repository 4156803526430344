"""Training loops for the train / sparsify / finetune stages, with resumable epoch checkpoints.

Uses timm's AdamW and cosine-with-warmup scheduler. Each epoch reseeds from (seed, epoch), so a run
resumed from an epoch checkpoint replays the same data order as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..prune.gates import gate_parameters, l1_penalty
from .checkpoints import (
    crash_after_checkpoint_if_asked,
    load_checkpoint,
    resume_rng,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .distributed import DistInfo, gather_objects
from .recipe import OptimSection


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    l1: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "ce": self.ce, "l1": self.l1, "epoch_seconds": self.epoch_seconds}


def _param_groups(model: nn.Module, cfg: OptimSection, gate_lr: float | None, train_gates: bool) -> list[dict]:
    gate_ids = {id(p) for p in gate_parameters(model)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in gate_ids:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "dist_token", "reg_token")) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train_gates and gate_ids:
        groups.append({"params": gate_parameters(model), "weight_decay": 0.0, "lr": gate_lr or cfg.lr})
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str = "cpu") -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(x.to(device))
        correct += int((logits.argmax(-1).cpu() == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(1, total)


@dataclass
class LoopSetup:
    """How the loop runs: DDP, accumulation, AMP, clipping, distillation, checkpoint cadence."""

    dist: DistInfo = field(default_factory=DistInfo)
    accum_steps: int = 1
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    clip_grad: float | None = 5.0
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    teacher: nn.Module | None = None
    distill: str = "none"  # none | soft | hard
    distill_alpha: float = 0.5
    distill_tau: float = 1.0


def distill_setup(section, teacher: nn.Module | None) -> dict:
    """The LoopSetup fields of a recipe section's distillation (no teacher unless the section asks for one)."""
    distill = getattr(section, "distill", "none")
    return {"teacher": teacher if distill != "none" else None, "distill": distill,
            "distill_alpha": getattr(section, "distill_alpha", 0.5), "distill_tau": getattr(section, "distill_tau", 1.0)}


def _distill_loss(logits, teacher_logits, setup: LoopSetup):
    if setup.distill == "soft":
        t = setup.distill_tau
        return F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                        reduction="batchmean", log_target=True) * t * t
    return F.cross_entropy(logits, teacher_logits.argmax(-1))


def _task_loss(model, x, y, soft, cfg: OptimSection, setup: LoopSetup):
    out = model(x)
    dist_out = None
    if isinstance(out, tuple):  # distilled DeiT in distilled-training mode: (cls head, dist head)
        out, dist_out = out
    ce = torch.sum(-soft * F.log_softmax(out, -1), -1).mean() if soft is not None else \
        F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
    if setup.teacher is None or setup.distill == "none":
        return ce
    with torch.no_grad():
        teacher_logits = setup.teacher(x)
    kd = _distill_loss(dist_out if dist_out is not None else out, teacher_logits, setup)
    return (1 - setup.distill_alpha) * ce + setup.distill_alpha * kd


def fit(
    model: nn.Module,
    make_loader: Callable[[int, int], object],
    cfg: OptimSection,
    *,
    seed: int,
    stage_key: str,
    checkpoint_path: Path | None = None,
    l1_lambda: float = 0.0,
    train_gates: bool = False,
    gate_lr: float | None = None,
    device: str = "cpu",
    on_epoch: Callable[[int, dict], None] | None = None,
    progress=None,
    description: str = "train",
    mixup=None,
    log: Callable[[str], None] | None = None,
    setup: LoopSetup | None = None,
) -> History:
    """Train `model` for `cfg.epochs` epochs; loss = CE (+ distillation) + l1_lambda * Σ|â|.

    `make_loader(epoch, skip_batches)` returns that epoch's seeded loader of micro-batches, starting
    after `skip_batches`. Checkpoints (rank 0 writes) hold model, optimizer, scheduler, scaler, epoch and
    step, and every rank's RNG state (each rank resumes its own); one with the same `stage_key` is resumed
    from, a stale one is ignored. Autocast covers forward and loss; backward runs outside it.
    """
    setup = setup or LoopSetup()
    if cfg.epochs == 0:
        return History()
    say = log or (lambda msg: None)
    run = _Run.create(model, cfg, setup, len(make_loader(0, 0)), gate_lr, train_gates, device, description)
    state = load_checkpoint(checkpoint_path) if checkpoint_path else None
    if state is not None and state.get("stage_key") != stage_key:
        state = None  # a stale checkpoint of another stage configuration: start over
    start_epoch, start_micro = run.resume(state, say) if state is not None else (0, 0)
    run.prepare_modules(state)
    if checkpoint_path is not None:  # every rank takes part (RNG states are gathered); rank 0 writes
        run.checkpoint = lambda epoch, micro: run.save(checkpoint_path, stage_key, epoch, micro)
    done_steps = start_epoch * run.steps_per_epoch + start_micro // setup.accum_steps
    run.task = progress.add_task(description, total=cfg.epochs * run.steps_per_epoch,
                                 completed=done_steps) if progress else None
    run.progress = progress
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        skip = start_micro if epoch == start_epoch else 0
        _seed_epoch(seed, epoch, skip, setup.dist, state if epoch == start_epoch else None, say)
        run.train_epoch(make_loader, epoch, skip, l1_lambda, mixup)
        if on_epoch:  # before the checkpoint: a resume never skips an epoch's log row
            on_epoch(epoch, run.epoch_row())
        last = epoch == cfg.epochs - 1
        if run.checkpoint is not None and not last and (epoch + 1) % cfg.checkpoint_every == 0:
            run.checkpoint(epoch + 1, 0)
    if run.ema is not None:
        model.load_state_dict(run.ema.module.state_dict())  # the stage's result is the averaged model
    return run.history


def _seed_epoch(seed: int, epoch: int, skip: int, dist: DistInfo, resume_state: dict | None, say) -> None:
    """Seed the epoch from (seed, epoch, skip, rank); a mid-epoch resume continues this rank's saved stream."""
    seed_everything(seed * 100003 + epoch * 1009 + skip + 7919 * dist.rank)
    if resume_state is not None and skip > 0:
        rank_rng = resume_rng(resume_state, dist, say)
        if rank_rng is not None:
            set_rng_state(rank_rng)  # continue this rank's interrupted random stream


@dataclass
class _Run:
    """One `fit`: the model (and its DDP wrapper), optimizer, cosine schedule, AMP scaler, EMA and history."""

    model: nn.Module
    cfg: OptimSection
    setup: LoopSetup
    device: str
    description: str
    optimizer: Any
    scheduler: Any
    scaler: Any
    micro_per_epoch: int
    steps_per_epoch: int
    net: nn.Module | None = None
    ema: Any = None
    history: History = field(default_factory=History)
    checkpoint: Callable[[int, int], None] | None = None
    progress: Any = None
    task: Any = None

    @classmethod
    def create(cls, model, cfg: OptimSection, setup: LoopSetup, micro_batches: int, gate_lr, train_gates: bool,
               device: str, description: str) -> "_Run":
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        micro_per_epoch = max(1, micro_batches)
        steps_per_epoch = max(1, math.ceil(micro_per_epoch / setup.accum_steps))
        optimizer = create_optimizer_v2(_param_groups(model, cfg, gate_lr, train_gates), opt="adamw", lr=cfg.lr,
                                        weight_decay=cfg.weight_decay)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=cfg.epochs * steps_per_epoch, lr_min=cfg.lr * 0.01,
            warmup_t=cfg.warmup_epochs * steps_per_epoch, warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False,
        )
        scaler = torch.amp.GradScaler("cuda", enabled=_amp_on(setup, device) and setup.amp == "fp16")
        return cls(model, cfg, setup, device, description, optimizer, scheduler, scaler, micro_per_epoch,
                   steps_per_epoch)

    def resume(self, state: dict, say) -> tuple[int, int]:
        """Restore model, optimizer, scheduler, scaler and history; (epoch, micro-batch) to start from."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty when saved without fp16 AMP: a fresh scaler starts instead
            self.scaler.load_state_dict(state["scaler"])
        elif self.scaler.is_enabled():
            say(f"{self.description}: checkpoint has no GradScaler state (saved without fp16 AMP); starting a fresh one")
        epoch, micro = int(state["epoch"]), int(state.get("micro_step", 0))
        if micro >= self.micro_per_epoch:
            epoch, micro = epoch + 1, 0
        self.history = History(**state["history"])
        say(f"{self.description}: resuming from epoch checkpoint {epoch}/{self.cfg.epochs}"
            + (f", micro-batch {micro}" if micro else ""))
        return epoch, micro

    def prepare_modules(self, state: dict | None) -> None:
        """The EMA (when `cfg.ema_decay`), the DDP wrapper, and the teacher in eval mode."""
        if getattr(self.cfg, "ema_decay", None):
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=self.cfg.ema_decay)
            if state is not None and "ema" in state:
                self.ema.module.load_state_dict(state["ema"])
        self.net = self.model
        if self.setup.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            cuda = str(self.device).startswith("cuda")
            self.net = DDP(self.model, device_ids=[self.setup.dist.local_rank] if cuda else None)
        if self.setup.teacher is not None:
            self.setup.teacher.eval()

    def save(self, path: Path, stage_key: str, epoch: int, micro: int) -> None:
        setup = self.setup
        per_rank = gather_objects(setup.dist, rng_state())
        if not setup.dist.is_main:
            return
        save_checkpoint(path, {
            "stage_key": stage_key, "epoch": epoch, "micro_step": micro, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "history": self.history.as_dict(), "rng": per_rank[0],
            "rng_per_rank": per_rank, "world_size": setup.dist.world_size,
            **({"ema": self.ema.module.state_dict()} if self.ema is not None else {}),
        })
        crash_after_checkpoint_if_asked(self.description)

    def train_epoch(self, make_loader, epoch: int, skip: int, l1_lambda: float, mixup) -> None:
        """One epoch from micro-batch `skip`; appends its mean losses and wall time to the history."""
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "l1": 0.0}
        n, micro = 0, skip
        self.optimizer.zero_grad(set_to_none=True)
        for x, y in make_loader(epoch, skip):
            loss, ce, l1 = self._forward_backward(x, y, micro, l1_lambda, mixup)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{self.description}: loss is {loss} at epoch {epoch}")
            sums["loss"] += loss
            sums["ce"] += ce
            sums["l1"] += l1
            n += 1
            micro += 1
            if self._boundary(micro - 1):
                self._step(epoch, micro)
        for key in ("loss", "ce", "l1"):
            getattr(self.history, key).append(sums[key] / max(1, n))
        self.history.epoch_seconds.append(round(time.perf_counter() - t0, 3))

    def _boundary(self, micro: int) -> bool:
        """Whether micro-batch `micro` ends an accumulation step (or the epoch)."""
        return (micro + 1) % self.setup.accum_steps == 0 or micro + 1 == self.micro_per_epoch

    def _forward_backward(self, x, y, micro: int, l1_lambda: float, mixup) -> tuple[float, float, float]:
        """Loss of one micro-batch, backpropagated (gradients sync across ranks only at step boundaries)."""
        setup = self.setup
        x, y = x.to(self.device), y.to(self.device)
        soft = None
        if mixup is not None and len(y) % 2 == 0:
            x, soft = mixup(x, y)
        sync = contextlib.nullcontext() if self._boundary(micro) or not setup.dist.enabled else self.net.no_sync()
        l1_value = 0.0
        with sync:
            amp_dtype = torch.bfloat16 if setup.amp == "bf16" else torch.float16
            with torch.autocast("cuda", dtype=amp_dtype, enabled=_amp_on(setup, self.device)):  # forward and loss
                ce = _task_loss(self.net, x, y, soft, self.cfg, setup)
                loss = ce
                if l1_lambda > 0:
                    l1 = l1_penalty(self.model)
                    loss = ce + l1_lambda * l1
                    l1_value = l1.item()
            self.scaler.scale(loss / setup.accum_steps).backward()
        return loss.item(), ce.item(), l1_value

    def _step(self, epoch: int, micro: int) -> None:
        """Optimizer step (clipped, scaled), schedule, EMA, progress and the mid-epoch checkpoint."""
        setup = self.setup
        if setup.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), setup.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        step = epoch * self.steps_per_epoch + math.ceil(micro / setup.accum_steps)
        self.scheduler.step_update(step)
        if self.ema is not None:
            self.ema.update(self.model, step=step)
        if self.progress is not None:
            self.progress.advance(self.task)
        every = setup.checkpoint_every_steps
        if self.checkpoint is not None and every and step % every == 0 and micro < self.micro_per_epoch:
            self.checkpoint(epoch, micro)

    def epoch_row(self) -> dict:
        h = self.history
        return {"loss": h.loss[-1], "ce": h.ce[-1], "l1": h.l1[-1], "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_seconds": h.epoch_seconds[-1]}


def _amp_on(setup: LoopSetup, device: str) -> bool:
    return setup.amp != "none" and str(device).startswith("cuda")
