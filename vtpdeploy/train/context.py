"""What every pipeline stage reads: the recipe, the run dir, the data loaders, the distributed info and the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from torch import nn

from ..data import ResumableSampler, build_dataset, make_loader, make_transform
from ..prune.saving import save
from .distributed import DistInfo
from .events import EventLog
from .loop import LoopSetup, distill_setup, evaluate
from .recipe import Recipe
from .rundir import RunDir
from .setup import micro_batching


@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    console: Console
    data_config: dict
    progress: object | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    events: EventLog = field(default_factory=EventLog)
    model: nn.Module | None = None  # the recipe's model, created and checked before any stage (the train stage's input)

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
        return LoopSetup(dist=self.dist, accum_steps=self.micro_batch()[1], amp=self.recipe.amp,
                         clip_grad=section.clip_grad, checkpoint_every_steps=section.checkpoint_every_steps,
                         **distill_setup(section, teacher))

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
