"""Calibration sets: N preprocessed images drawn (seeded) from a train split, saved as .npy.

Layout of CALIB_DIR:
    calib.npy      float32 [N, C, H, W], already through the model's eval transform
    labels.npy     int64 [N] (-1 where the source has no labels)
    manifest.json  source, split, seed, indices, transform, shape, sha256 of both .npy files

The same source, split, seed and N give byte-identical files. Images come from the train split,
never from val (val is what INT8 accuracy is measured on).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...console import one_line
from ...errors import DataError, VtpError
from ...fileio import atomic_path, atomic_write_json, sha256_file

CALIB_FILE, LABELS_FILE, MANIFEST_FILE = "calib.npy", "labels.npy", "manifest.json"
FORMAT = "vtpdeploy-calib"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def draw_indices(size: int, n: int, seed: int) -> np.ndarray:
    """min(n, size) distinct indices in [0, size), seeded, sorted."""
    if size <= 0:
        raise DataError("calibration source holds no images")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(size, size=min(n, size), replace=False))


def build_calibration_set(dataset, out_dir: str | Path, *, n: int = 500, seed: int = 0,
                          source: dict[str, Any] | None = None, data_config: dict[str, Any] | None = None,
                          ) -> dict[str, Any]:
    """Draw `n` items of `dataset` (already transformed; `(tensor, label)` pairs) into `out_dir`."""
    if n < 1:
        raise DataError(f"--n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    idx = draw_indices(len(dataset), n, seed)
    xs, ys = [], []
    for i in idx:
        img, label = dataset[int(i)]
        arr = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
        xs.append(np.asarray(arr, dtype=np.float32))
        ys.append(int(label) if label is not None else -1)
    x = np.ascontiguousarray(np.stack(xs).astype(np.float32))
    y = np.asarray(ys, dtype=np.int64)
    if x.ndim != 4:
        raise DataError(f"calibration images have shape {x.shape[1:]}, expected C,H,W")
    _save_npy(out_dir / CALIB_FILE, x)
    _save_npy(out_dir / LABELS_FILE, y)
    transform = None
    if data_config is not None:
        transform = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()
                     if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
    manifest = {
        "format": FORMAT,
        "version": 1,
        "source": source or {},
        "seed": seed,
        "n": int(len(idx)),
        "requested_n": int(n),
        "indices": [int(i) for i in idx],
        "transform": transform,
        "shape": list(x.shape),
        "dtype": "float32",
        "files": {
            CALIB_FILE: sha256_file(out_dir / CALIB_FILE),
            LABELS_FILE: sha256_file(out_dir / LABELS_FILE),
        },
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def load_calibration(calib_dir: str | Path, input_size: tuple[int, int, int] | None = None,
                     verify: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(images, labels or None, manifest) of a calibration folder; DataError if missing, empty or misfit."""
    calib_dir = Path(calib_dir)
    if not calib_dir.is_dir():
        raise DataError(f"{calib_dir}: calibration folder not found")
    path = calib_dir / CALIB_FILE
    if not path.is_file():
        raise DataError(f"{calib_dir}: no {CALIB_FILE} (build one with `vtpdeploy calib SOURCE --out {calib_dir}`)")
    manifest: dict[str, Any] = {}
    if (calib_dir / MANIFEST_FILE).is_file():
        try:
            manifest = json.loads((calib_dir / MANIFEST_FILE).read_text())
        except ValueError:
            raise DataError(f"{calib_dir / MANIFEST_FILE}: not valid JSON") from None
        want = manifest.get("files", {}).get(CALIB_FILE)
        if verify and want and sha256_file(path) != want:
            raise DataError(f"{path}: sha256 does not match {MANIFEST_FILE} (file changed or corrupt)")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: unreadable .npy ({one_line(exc, 120)})") from None
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"{path}: expected a non-empty [N,C,H,W] array, got shape {list(x.shape)}")
    if input_size is not None and tuple(x.shape[1:]) != tuple(input_size):
        raise DataError(f"{path}: images are {list(x.shape[1:])}, the model expects {list(input_size)}")
    labels = None
    if (calib_dir / LABELS_FILE).is_file():
        try:
            labels = np.load(calib_dir / LABELS_FILE, allow_pickle=False)
        except Exception:
            labels = None
    return np.ascontiguousarray(x, dtype=np.float32), labels, manifest


class _FolderImages:
    """A flat or class-structured folder of images; labels are class-folder indices (or -1)."""

    def __init__(self, folder: Path, transform):
        from ...data import IMAGE_SUFFIXES

        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        self.items = []
        for f in files:
            rel = f.relative_to(folder).parts
            label = classes.index(rel[0]) if len(rel) > 1 and rel[0] in classes else -1
            self.items.append((f, label))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        f, label = self.items[i]
        try:
            with Image.open(f) as im:
                img = im.convert("RGB")
        except Exception:
            raise DataError(f"{f}: unreadable image") from None
        return self.transform(img), label


def calib_from_source(source: str | Path, out_dir: str | Path, *, n: int = 500, seed: int = 0,
                      split: str = "train", model: str | None = None,
                      input_size: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Build a calibration set from a run dir (its recipe's data section, its model's transform) or an
    image folder (`folder/<split>/<class>/img`, `folder/<class>/img` or flat; transform from `model` — a
    saved model path or timm name — or `input_size` with ImageNet defaults)."""
    from ...data import build_dataset, data_config_for, make_transform, run_data_section
    from ..sources import is_run_dir, saved_base

    if split == "val":
        raise DataError("calibration images must come from the train split, not val (val measures accuracy): "
                        "use --split train")
    src = Path(source)
    if is_run_dir(src):
        from ...prune.saving import read_spec

        if saved_base(src / "model") is None:
            raise VtpError(f"{src}: run dir has no finished model.safetensors/model.json")
        data = run_data_section(src)
        spec = read_spec(src / "model")
        cfg = data_config_for(spec.data_config, data)
        num_classes = int(spec.kwargs.get("num_classes") or 10)
        ds = build_dataset(data, split, make_transform(cfg), num_classes=num_classes,
                           input_size=tuple(cfg["input_size"]))
        info = {"kind": data.kind, "run_dir": str(src), "split": split,
                "path": str(data.path) if data.path else None}
        return build_calibration_set(ds, out_dir, n=n, seed=seed, source=info, data_config=cfg)
    if not src.exists():
        raise DataError(f"{src}: no such run dir or image folder")
    if not src.is_dir():
        raise DataError(f"{src}: not a run dir or an image folder")
    folder = src / split if (src / split).is_dir() else src
    cfg = _folder_data_config(model, input_size)
    ds = _FolderImages(folder, make_transform(cfg))
    if len(ds) == 0:
        raise DataError(f"{folder}: holds no images")
    info = {"kind": "imagefolder", "path": str(src), "split": split if folder != src else None}
    return build_calibration_set(ds, out_dir, n=n, seed=seed, source=info, data_config=cfg)


def _folder_data_config(model: str | None, input_size: tuple[int, int, int] | None) -> dict[str, Any]:
    from timm.data import resolve_data_config

    from ..sources import saved_base

    if model:
        base = saved_base(model)
        if base is not None:
            from ...prune.saving import read_spec

            cfg = dict(read_spec(base).data_config)
        else:
            from ...prune.arch import create_timm, describe

            cfg = dict(describe(create_timm(model)).data_config)
        if input_size:
            cfg["input_size"] = tuple(input_size)
        return cfg
    if input_size:
        return dict(resolve_data_config({"input_size": tuple(input_size)}))
    raise VtpError("an image folder needs --model (saved model or timm name) or --input-size C,H,W for its transform")
