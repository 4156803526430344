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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_path
from ..prune.gates import gate_parameters, l1_penalty
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


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's `random` (timm's crop augmentation draws from the latter)."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def rng_state() -> dict:
    """torch, CUDA, numpy and Python RNG states, as tensors and plain types (weights_only-loadable)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2])},
             "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype("uint32"), state["numpy"]["pos"], 0, 0.0))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU of the saving run; a resume with fewer GPUs restores those that exist
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def resume_rng(state: dict, dist: DistInfo, log: Callable[[str], None] | None = None) -> dict | None:
    """This rank's RNG state from a checkpoint, or None (with a warning) when the world size changed.

    Checkpoints hold every rank's state (`rng_per_rank`); older ones only rank 0's (`rng`), which is
    right for a single process only.
    """
    per_rank = state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == dist.world_size:
        return per_rank[dist.rank]
    if per_rank is None and dist.world_size == 1:
        return state.get("rng")
    saved = len(per_rank) if per_rank is not None else "unknown"
    if log:
        log(f"warning: checkpoint RNG states are from world size {saved}, this run has {dist.world_size}: "
            f"the resumed epoch's augmentation draws differ from an uninterrupted run")
    return None


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


def _save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


_CHECKPOINTS_WRITTEN: dict[str, int] = {}


def _crash_after_checkpoint_if_asked(stage: str) -> None:
    """Test hook: VTPDEPLOY_CRASH_AFTER_CHECKPOINT=<stage>:<n> SIGKILLs this process right after the n-th
    checkpoint of `stage` is written, so kill -9 resume tests need no polling and no sleeps."""
    import os
    import signal

    spec = os.environ.get("VTPDEPLOY_CRASH_AFTER_CHECKPOINT")
    if not spec:
        return
    _CHECKPOINTS_WRITTEN[stage] = _CHECKPOINTS_WRITTEN.get(stage, 0) + 1
    if spec == f"{stage}:{_CHECKPOINTS_WRITTEN[stage]}":
        os.kill(os.getpid(), signal.SIGKILL)


def _load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable resume checkpoint ({str(exc).splitlines()[0][:120]}); delete it to restart the stage") from None


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
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    setup = setup or LoopSetup()
    history = History()
    if cfg.epochs == 0:
        return history
    micro_per_epoch = max(1, len(make_loader(0, 0)))
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / setup.accum_steps))
    optimizer = create_optimizer_v2(_param_groups(model, cfg, gate_lr, train_gates), opt="adamw", lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_steps, lr_min=cfg.lr * 0.01, warmup_t=cfg.warmup_epochs * steps_per_epoch,
        warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False,
    )
    use_amp = setup.amp != "none" and str(device).startswith("cuda")
    amp_dtype = torch.bfloat16 if setup.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and setup.amp == "fp16")
    start_epoch, start_micro = 0, 0
    resume_state = None
    state = _load_checkpoint(checkpoint_path) if checkpoint_path else None
    if state is not None and state.get("stage_key") == stage_key:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty when saved without fp16 AMP: a fresh scaler starts instead
            scaler.load_state_dict(state["scaler"])
        elif scaler.is_enabled() and log:
            log(f"{description}: checkpoint has no GradScaler state (saved without fp16 AMP); starting a fresh one")
        start_epoch, start_micro = int(state["epoch"]), int(state.get("micro_step", 0))
        resume_state = state
        if start_micro >= micro_per_epoch:
            start_epoch, start_micro = start_epoch + 1, 0
        history = History(**state["history"])
        if log:
            log(f"{description}: resuming from epoch checkpoint {start_epoch}/{cfg.epochs}"
                + (f", micro-batch {start_micro}" if start_micro else ""))

    ema = None
    if getattr(cfg, "ema_decay", None):
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
        if state is not None and state.get("stage_key") == stage_key and "ema" in state:
            ema.module.load_state_dict(state["ema"])
    net = model
    if setup.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[setup.dist.local_rank] if str(device).startswith("cuda") else None)
    if setup.teacher is not None:
        setup.teacher.eval()
    do_save = checkpoint_path is not None  # every rank takes part (RNG states are gathered); rank 0 writes

    def save_state(epoch: int, micro: int) -> None:
        per_rank = gather_objects(setup.dist, rng_state())
        if not setup.dist.is_main:
            return
        _save_checkpoint(checkpoint_path, {
            "stage_key": stage_key, "epoch": epoch, "micro_step": micro, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "history": history.as_dict(), "rng": per_rank[0],
            "rng_per_rank": per_rank, "world_size": setup.dist.world_size,
            **({"ema": ema.module.state_dict()} if ema is not None else {}),
        })
        _crash_after_checkpoint_if_asked(description)

    done_steps = start_epoch * steps_per_epoch + start_micro // setup.accum_steps
    task = progress.add_task(description, total=total_steps, completed=done_steps) if progress else None
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        skip = start_micro if epoch == start_epoch else 0
        seed_everything(seed * 100003 + epoch * 1009 + skip + 7919 * setup.dist.rank)
        if resume_state is not None and epoch == start_epoch and skip > 0:
            rank_rng = resume_rng(resume_state, setup.dist, log)
            if rank_rng is not None:
                set_rng_state(rank_rng)  # continue this rank's interrupted random stream
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "l1": 0.0}
        n = 0
        micro = skip
        optimizer.zero_grad(set_to_none=True)
        for x, y in make_loader(epoch, skip):
            x, y = x.to(device), y.to(device)
            soft = None
            if mixup is not None and len(y) % 2 == 0:
                x, soft = mixup(x, y)
            boundary = (micro + 1) % setup.accum_steps == 0 or micro + 1 == micro_per_epoch
            sync = contextlib.nullcontext() if boundary or not setup.dist.enabled else net.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):  # forward and loss only
                    ce = _task_loss(net, x, y, soft, cfg, setup)
                    loss = ce
                    if l1_lambda > 0:
                        l1 = l1_penalty(model)
                        loss = ce + l1_lambda * l1
                        sums["l1"] += l1.item()
                scaler.scale(loss / setup.accum_steps).backward()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{description}: loss is {loss.item()} at epoch {epoch}")
            sums["loss"] += loss.item()
            sums["ce"] += ce.item()
            n += 1
            micro += 1
            if boundary:
                if setup.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step = epoch * steps_per_epoch + math.ceil(micro / setup.accum_steps)
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(model, step=step)
                if progress is not None:
                    progress.advance(task)
                every = setup.checkpoint_every_steps
                if do_save and every and step % every == 0 and micro < micro_per_epoch:
                    save_state(epoch, micro)
        history.loss.append(sums["loss"] / max(1, n))
        history.ce.append(sums["ce"] / max(1, n))
        history.l1.append(sums["l1"] / max(1, n))
        history.epoch_seconds.append(round(time.perf_counter() - t0, 3))
        if on_epoch:  # before the checkpoint: a resume never skips an epoch's log row
            on_epoch(epoch, {"loss": history.loss[-1], "ce": history.ce[-1], "l1": history.l1[-1],
                             "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": history.epoch_seconds[-1]})
        last = epoch == cfg.epochs - 1
        if do_save and not last and (epoch + 1) % cfg.checkpoint_every == 0:
            save_state(epoch + 1, 0)
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())  # the stage's result is the averaged model
    return history
