"""Albumentations pipelines built from config: training (random scale, crop, flip, colour jitter, normalise)
and evaluation (normalise only).

Masks are resized with nearest neighbour and padded with ``ignore_index``, never 0: padding with 0 would
teach the model that the border is class 0 (background in VOC, road in Cityscapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

from seg_template.data.base import IMAGENET_MEAN, IMAGENET_STD
from seg_template.errors import ConfigError
from seg_template.options import require


def _crop_hw(crop_size: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    if len(crop_size) != 2 or min(int(v) for v in crop_size) < 1:
        raise ConfigError(f"data.train_transform.crop_size must be [H, W] of positive ints, got {crop_size!r}")
    return int(crop_size[0]), int(crop_size[1])


def train_transform(crop_size: Sequence[int] | int, scale_range: Sequence[float] = (0.5, 2.0), hflip: bool = True,
                    color_jitter: float = 0.0, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255) -> A.Compose:
    """Random scale (relative to the image's own size) -> pad to ``crop_size`` -> random crop -> flip -> jitter
    -> normalise. Called as ``t(image=uint8[H, W, 3], mask=int[H, W])``; returns float32 image, mask.

    ``scale_range``: ``[min, max]`` scale factors (``[1, 1]`` disables scaling). ``color_jitter``: strength
    of brightness / contrast / saturation jitter (hue gets a fifth of it), 0 disables it.
    """
    require("data.ignore_index", ignore_index)
    require("data.train_transform.color_jitter", color_jitter)
    crop_h, crop_w = _crop_hw(crop_size)
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ConfigError(f"data.train_transform.scale_range must be [min, max] with 0 < min <= max, "
                          f"got {scale_range!r}")
    steps: list[A.BasicTransform] = []
    if (lo, hi) != (1.0, 1.0):
        # RandomScale draws the factor as 1 + uniform(scale_limit)
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    steps += [
        A.PadIfNeeded(min_height=crop_h, min_width=crop_w, position="center", border_mode=cv2.BORDER_CONSTANT,
                      fill=0, fill_mask=ignore_index),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        j = float(color_jitter)
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 5), p=0.8))
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std)))
    return A.Compose(steps)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Normalise only: evaluation sees whole images at full resolution (the model's stride permitting)."""
    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std))])
