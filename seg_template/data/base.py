"""The dataset contract every segmentation dataset in the template honours.

``__getitem__`` returns ``{"image": float32[3, H, W], "mask": int64[H, W], "name": str}``.
Subclasses only say how to *read* sample ``index`` (``load``); the albumentations
transform and the conversion to tensors happen here, once, for all datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seg_template.data.samplers import SeededIndex, seed_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """``float32[3, H, W]`` from a transformed ``[H, W, 3]`` image; uint8 (no Normalize in the pipeline) is
    scaled to [0, 1], as the network saw in training. Used by the datasets and by predict."""
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class SegmentationDataset(Dataset):
    """Base class: class names, palette and ignore index live on the dataset.

    Subclasses set ``class_names`` (and optionally ``palette``, one RGB triple per class, and
    ``submission_ids``, the benchmark's official id of each class for ``predict.py submission_ids=true``)
    and implement ``__len__`` and ``load``.
    """

    class_names: Sequence[str] = ()
    palette: Sequence[Sequence[int]] | None = None
    submission_ids: Sequence[int] | None = None

    def __init__(self, transform: Callable[..., dict[str, Any]] | None = None, ignore_index: int = 255) -> None:
        self.transform = transform
        self.ignore_index = ignore_index

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read sample ``index``: ``(image uint8[H, W, 3] RGB, mask integer[H, W], name)``.

        The mask holds train ids in ``[0, num_classes)`` or ``ignore_index``.
        """
        raise NotImplementedError

    def __getitem__(self, index: int | SeededIndex) -> dict[str, Any]:
        """Sample ``index``; a ``SeededIndex`` (from ``SeededTrainSampler``) first re-seeds the transform so
        that the augmentation depends only on (seed, epoch, index)."""
        if isinstance(index, SeededIndex):
            seed_transform(self.transform, index)
            index = index.index
        image, mask, name = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": image_tensor(image),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "name": name,
        }
