"""Training loops for the train / sparsify / finetune stages, with resumable epoch checkpoints.

Uses timm's AdamW and cosine-with-warmup scheduler. Each epoch reseeds from (seed, epoch), so a run
resumed from an epoch checkpoint replays the same data order as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_path
from .gates import gate_parameters, l1_penalty
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


def _save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable resume checkpoint ({str(exc).splitlines()[0][:120]}); delete it to restart the stage") from None


def fit(
    model: nn.Module,
    make_loader: Callable[[int], object],
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
) -> History:
    """Train `model` for `cfg.epochs` epochs; loss = CE + l1_lambda * Σ|â| (when l1_lambda > 0).

    `make_loader(epoch)` returns that epoch's (seeded) training loader. A checkpoint with the same
    `stage_key` at `checkpoint_path` is resumed from; a stale one is ignored.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    history = History()
    if cfg.epochs == 0:
        return history
    steps_per_epoch = max(1, len(make_loader(0)))
    optimizer = create_optimizer_v2(_param_groups(model, cfg, gate_lr, train_gates), opt="adamw", lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_steps, lr_min=cfg.lr * 0.01, warmup_t=cfg.warmup_epochs * steps_per_epoch,
        warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False,
    )
    start_epoch = 0
    state = _load_checkpoint(checkpoint_path) if checkpoint_path else None
    if state is not None and state.get("stage_key") == stage_key:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = History(**state["history"])
        if log:
            log(f"{description}: resuming from epoch checkpoint {start_epoch}/{cfg.epochs}")

    task = progress.add_task(description, total=total_steps, completed=start_epoch * steps_per_epoch) if progress else None
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(seed * 100003 + epoch)
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "l1": 0.0}
        n = 0
        for step, (x, y) in enumerate(make_loader(epoch)):
            x, y = x.to(device), y.to(device)
            if mixup is not None and len(y) % 2 == 0:
                x, soft = mixup(x, y)
                ce = torch.sum(-soft * F.log_softmax(model(x), dim=-1), dim=-1).mean()
            else:
                ce = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            loss = ce
            if l1_lambda > 0:
                l1 = l1_penalty(model)
                loss = ce + l1_lambda * l1
                sums["l1"] += l1.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{description}: loss is {float(loss)} at epoch {epoch}")
            sums["loss"] += loss.item()
            sums["ce"] += ce.item()
            n += 1
            if progress is not None:
                progress.advance(task)
        history.loss.append(sums["loss"] / max(1, n))
        history.ce.append(sums["ce"] / max(1, n))
        history.l1.append(sums["l1"] / max(1, n))
        history.epoch_seconds.append(round(time.perf_counter() - t0, 3))
        last = epoch == cfg.epochs - 1
        if checkpoint_path and not last and (epoch + 1) % cfg.checkpoint_every == 0:
            _save_checkpoint(checkpoint_path, {
                "stage_key": stage_key, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": history.as_dict(),
            })
        if on_epoch:
            on_epoch(epoch, {"loss": history.loss[-1], "ce": history.ce[-1], "l1": history.l1[-1]})
    return history
