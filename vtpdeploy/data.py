"""Datasets for the pipeline: scikit-learn digits, MNIST-format IDX files, an imagefolder, or synthetic tensors.

Images go through timm's transforms (`timm.data.create_transform`) resolved from the model's data
config, so training, validation and calibration all see the model's own preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset

from .console import one_line
from .grey_images import GreyImageDataset
from .errors import DataError, VtpError
from .fileio import read_yaml

Split = Literal["train", "val", "test"]
class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["digits", "idx", "imagefolder", "timm", "synthetic"] = Field(
        "digits", description="digits (bundled), idx (MNIST-format files), imagefolder (path/train/<class>/*, "
        "path/val/<class>/*), timm, synthetic (latency only)")
    path: Path | None = Field(None, description="imagefolder root holding train/ and val/; idx: a folder of "
                                                "MNIST-format IDX files; timm: dataset root")
    dataset: str | None = Field(None, description="timm: a create_dataset name, e.g. 'hfds/imagenet-1k', "
                                                   "'wds/imagenet-1k', 'torch/cifar10'; idx: a named source "
                                                   "('fashion_mnist') used when path is not set")
    train_split: str = Field("train", description="timm: split name of the training set")
    val_split: str = Field("validation", description="timm: split name of the validation set")
    batch_size: int = Field(64, gt=0, description="global batch (all ranks, all accumulation steps)")
    micro_batch_size: int | None = Field(None, gt=0, description="per-rank forward batch; default batch/world")
    val_fraction: float = Field(0.25, gt=0, lt=1, description="digits, idx: share of train held out for val")
    split_seed: int = Field(0, description="digits/idx/synthetic: seed of the split")
    limit: int | None = Field(None, gt=0, description="idx: use a seeded subset of at most this many images per "
                                                      "split (quick checks, never for reported numbers)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    pin_memory: bool = Field(False, description="DataLoader pinned memory (CUDA)")
    synthetic_size: int = Field(256, gt=0, description="synthetic: images per split")
    interpolation: str | None = Field(None, description="resize interpolation, e.g. bicubic; null: the model's "
                                                         "own (timm pretrained config)")
    crop_pct: float | None = Field(None, gt=0, le=1, description="eval center-crop share; null: the model's own")
    mean: tuple[float, float, float] | None = Field(None, description="normalization mean; null: the model's own")
    std: tuple[float, float, float] | None = Field(None, description="normalization std; null: the model's own")
    augment: bool = Field(True, description="random-resized-crop style training augmentation")
    scale: tuple[float, float] = Field((0.6, 1.0), description="random-resized-crop area range")
    hflip: float = Field(0.0, ge=0, le=1, description="horizontal flip probability (0 for digits)")
    auto_augment: str | None = Field(None, description="timm policy, e.g. DeiT's 'rand-m9-mstd0.5-inc1'")
    reprob: float = Field(0.0, ge=0, le=1, description="random erasing probability (DeiT: 0.25)")
    mixup: float = Field(0.0, ge=0, description="mixup alpha (DeiT: 0.8); 0 disables")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (DeiT: 1.0); 0 disables")



def quickstart_data() -> DataSection:
    """The embedded quickstart's data: 8x8 digits upsampled without cropping (bilinear, crop 1.0)."""
    return DataSection(interpolation="bilinear", crop_pct=1.0)


def preprocessing(data_config: dict[str, Any]) -> dict[str, Any]:
    """The resolved preprocessing a run records (JSON-ready)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items() if k in PREPROCESSING_KEYS}


def run_data_section(run_dir: str | Path) -> DataSection:
    """The `data` section of a run dir's resolved recipe.yaml."""
    path = Path(run_dir) / "recipe.yaml"
    try:
        return DataSection.model_validate(read_yaml(path).get("data") or {})
    except VtpError:
        raise
    except Exception as exc:
        raise VtpError(f"{path}: not a valid recipe data section ({str(exc).splitlines()[0]})") from None


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


PREPROCESSING_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def data_config_for(model_data_config: dict[str, Any], section: DataSection) -> dict[str, Any]:
    """The model's timm data config with the recipe's preprocessing overrides applied (a null key keeps the
    model's own value, so a fine-tuned DeiT is evaluated on the images it was trained on)."""
    cfg = dict(model_data_config)
    for key in ("interpolation", "crop_pct", "mean", "std"):
        value = getattr(section, key)
        if value is not None:
            cfg[key] = list(value) if isinstance(value, tuple) else value
    cfg["input_size"] = tuple(cfg["input_size"])
    for key in ("mean", "std"):
        cfg[key] = tuple(cfg[key])
    return cfg


def make_transform(data_config: dict[str, Any], train: bool = False, section: DataSection | None = None):
    """timm's eval transform, or its training transform with the recipe's augmentation switches."""
    from timm.data import create_transform

    cfg = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct") if k in data_config}
    if train and section is not None and section.augment:
        return create_transform(**cfg, is_training=True, scale=tuple(section.scale), ratio=(0.9, 1.1),
                                hflip=section.hflip, color_jitter=None, auto_augment=section.auto_augment,
                                re_prob=section.reprob)
    return create_transform(**cfg, is_training=False)


def make_mixup(section: DataSection, num_classes: int, label_smoothing: float = 0.0):
    """timm Mixup/CutMix when the recipe enables either, else None."""
    if section.mixup <= 0 and section.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=section.mixup, cutmix_alpha=section.cutmix, label_smoothing=label_smoothing,
                 num_classes=num_classes)


class DigitsDataset(GreyImageDataset):
    """scikit-learn's bundled 8x8 digits (1797 images) as RGB PIL images, with a fixed seeded split."""

    def __init__(self, split: Split, transform=None, val_fraction: float = 0.25, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        idx = np.arange(len(digits.target))
        train_idx, val_idx = train_test_split(
            idx, test_size=val_fraction, random_state=seed, stratify=digits.target
        )
        self.indices = np.sort(train_idx if split == "train" else val_idx)
        self.images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        self.targets = digits.target.astype(np.int64)
        self.transform = transform
        self.classes = [str(c) for c in range(10)]



class SyntheticDataset(Dataset):
    """Seeded random tensors and labels: for latency-only runs, never for accuracy."""

    def __init__(self, size: int, input_size: tuple[int, int, int], num_classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn((size, *input_size), generator=g)
        self.y = torch.randint(0, max(1, num_classes), (size,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def check_imagefolder(path: Path | None, split: Split) -> Path:
    """The split folder, or a DataError naming what is missing or empty."""
    if path is None:
        raise DataError("data.path: required for kind 'imagefolder'")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: {root} does not exist or is not a folder")
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"data.path: {root} has no {split}/ folder (expected {split}/<class>/<image>)")
    classes = [d for d in folder.iterdir() if d.is_dir()]
    if not classes:
        raise DataError(f"data.path: {folder} has no class folders")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for d in classes for f in d.rglob("*") if f.is_file()):
        raise DataError(f"data.path: {folder} holds no images")
    return folder


def build_dataset(section: DataSection, split: Split, transform=None, *, num_classes: int = 10,
                  input_size: tuple[int, int, int] = (3, 224, 224)) -> Dataset:
    """The `split` of the recipe's data section, with `transform` applied to every image."""
    if section.kind == "digits":
        return DigitsDataset(split, transform, section.val_fraction, section.split_seed)
    if section.kind == "idx":
        from .idx_data import IdxDataset, resolve_idx_root

        root = resolve_idx_root(section.path, section.dataset)
        return IdxDataset(root, split, transform, section.val_fraction, section.split_seed, section.limit)
    if section.kind == "synthetic":
        seed = section.split_seed + (0 if split == "train" else 1)
        return SyntheticDataset(section.synthetic_size, tuple(input_size), num_classes, seed)
    from timm.data import create_dataset

    if section.kind == "timm":
        return create_timm_dataset(section, split, transform)
    folder = check_imagefolder(section.path, split)
    return create_dataset("", root=str(folder), split=split, transform=transform)


def create_timm_dataset(section: DataSection, split: Split, transform=None) -> Dataset:
    """Any timm dataset source (`hfds/`, `wds/`, `tfds/`, `torch/`) through timm's create_dataset."""
    from timm.data import create_dataset

    if not section.dataset:
        raise DataError("data.dataset: required for kind 'timm' (e.g. 'wds/imagenet-1k')")
    name = section.train_split if split == "train" else section.val_split
    try:
        return create_dataset(section.dataset, root=str(section.path) if section.path else None, split=name,
                              is_training=split == "train", transform=transform, download=False)
    except Exception as exc:
        raise DataError(f"data.dataset {section.dataset!r} split {name!r}: cannot open ({one_line(exc)})") from None


def validate_data(section: DataSection) -> None:
    """Cheap checks before any expensive work."""
    if section.kind == "timm" and not section.dataset:
        raise DataError("data.dataset: required for kind 'timm' (e.g. 'wds/imagenet-1k')")
    if section.kind == "imagefolder":
        check_imagefolder(section.path, "train")
        check_imagefolder(section.path, "val")
    if section.kind == "idx":
        from .idx_data import check_idx

        check_idx(section.path, section.dataset)


def num_classes_of(section: DataSection) -> int | None:
    if section.kind == "digits":
        return 10
    if section.kind == "idx":
        from .idx_data import check_idx

        return check_idx(section.path, section.dataset)
    if section.kind == "imagefolder":
        return len([d for d in check_imagefolder(section.path, "train").iterdir() if d.is_dir()])
    return None


def make_loader(dataset: Dataset, section: DataSection, shuffle: bool, seed: int = 0, drop_last: bool = False,
                sampler=None, batch_size: int | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size or section.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=section.workers,
        pin_memory=section.pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (also used with one process, so 1- and N-process runs see the same global
    order) that can start mid-epoch after `skip` samples of this rank's share."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, epoch: int, skip: int = 0,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)
