"""MNIST-format (IDX) datasets: any folder holding images and labels IDX files, gzipped or not.

`fashion_mnist` is a named source: Debian's `dataset-fashion-mnist` package. The official train/test split is kept;
`val` is a seeded, stratified share carved out of train (every choice made while training looks at it), and `test`
is the official test set, which only final tables read.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import DataError
from .grey_images import GreyImageDataset

NAMED_SOURCES = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
INSTALL_HINT = {"fashion_mnist": "apt-get install dataset-fashion-mnist"}
_UBYTE = 0x08
# Official file stems of each split; `test` also accepts the `t10k` spelling and both separators (`-idx`, `.idx`).
_STEMS = {"train": ("train",), "test": ("t10k", "test")}


def resolve_idx_root(path: Path | None, source: str | None) -> Path:
    """The folder to read: `path` if given, else the named source's install folder."""
    if path is not None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path: {root} does not exist or is not a folder (expected MNIST-format IDX files)")
        return root
    if source is None:
        raise DataError("data: kind 'idx' needs data.path (an MNIST-format folder) or data.dataset: fashion_mnist")
    if source not in NAMED_SOURCES:
        raise DataError(f"data.dataset {source!r}: unknown IDX source; known: {', '.join(NAMED_SOURCES)} "
                        "(or set data.path to an MNIST-format folder)")
    root = NAMED_SOURCES[source]
    if not root.is_dir():
        raise DataError(f"{source}: {root} not found; install it with `{INSTALL_HINT[source]}` "
                        "or set data.path to an MNIST-format folder")
    return root


def find_idx_pair(root: Path, split: str) -> tuple[Path, Path]:
    """(images, labels) IDX files of the official `split` ('train' or 'test') in `root`."""
    def one(kind: str, dims: int) -> Path:
        hits = sorted(p for stem in _STEMS[split] for sep in ("-", ".")
                      for p in root.glob(f"{stem}-{kind}{sep}idx{dims}-ubyte*") if p.name.endswith(("-ubyte", "-ubyte.gz")))
        if not hits:
            raise DataError(f"data.path: {root} has no {_STEMS[split][0]}-{kind}-idx{dims}-ubyte[.gz] file "
                            "(MNIST-format folder expected)")
        return hits[0]

    return one("images", 3), one("labels", 1)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `dims` dimensions; a DataError if the file is not one."""
    try:
        raw = (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")).read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if len(raw) < 4 + 4 * dims or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != dims:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {dims} dimension(s) (bad header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but holds {len(body)} bytes "
                        "(truncated or corrupt)")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


@lru_cache(maxsize=4)
def load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, H, W] uint8, labels [N] int64) of an official split, checked for agreement."""
    images_path, labels_path = find_idx_pair(root, split)
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def carve_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: a seeded, stratified `fraction` of the official train split held out."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(train_idx), np.sort(val_idx)


class IdxDataset(GreyImageDataset):
    """One split of an IDX folder as RGB PIL images (grey replicated), so timm's transforms apply unchanged."""

    def __init__(self, root: Path, split: str, transform=None, val_fraction: float = 1 / 12, seed: int = 0,
                 limit: int | None = None):
        official = "test" if split == "test" else "train"
        self.images, self.targets = load_idx_split(Path(root), official)
        if split == "test":
            self.indices = np.arange(len(self.targets))
        else:
            train_idx, val_idx = carve_val(self.targets, val_fraction, seed)
            self.indices = train_idx if split == "train" else val_idx
        if limit is not None and limit < len(self.indices):
            rng = np.random.default_rng(seed)
            self.indices = np.sort(rng.choice(self.indices, size=limit, replace=False))
        self.transform = transform
        self.classes = [str(c) for c in range(int(self.targets.max()) + 1)]


def check_idx(path: Path | None, source: str | None) -> int:
    """Read both official splits (cheap: ~50 MB) and return the class count; DataError on any problem."""
    root = resolve_idx_root(path, source)
    classes = 0
    for split in ("train", "test"):
        _, labels = load_idx_split(root, split)
        classes = max(classes, int(labels.max()) + 1)
    return classes
