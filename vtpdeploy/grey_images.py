"""Datasets of grey uint8 images (digits, MNIST-format IDX files), served the way every other source is."""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class GreyImageDataset(Dataset):
    """Grey uint8 images (`images[N, H, W]`, `targets[N]`) seen through `indices`, served as RGB PIL images so that
    timm's transforms apply unchanged. Subclasses fill the four attributes."""

    images: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    transform = None

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[self.indices[i]], mode="L").convert("RGB")

    def __getitem__(self, i: int):
        img = self.image(i)
        return (self.transform(img) if self.transform else img), int(self.targets[self.indices[i]])
