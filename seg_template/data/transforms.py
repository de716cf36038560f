"""Albumentations pipelines built from config: training (random scale, crop, flip, colour jitter, normalise)
and evaluation (normalise only).

Masks are resized with nearest neighbour and padded with ``ignore_index``, never 0: padding with 0 would
teach the model that the border is class 0 (background in VOC, road in Cityscapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from seg_template.data.base import IMAGENET_MEAN, IMAGENET_STD
from seg_template.errors import ConfigError
from seg_template.option_rules import show
from seg_template.options import require


def _crop_hw(crop_size: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    if len(crop_size) != 2 or min(int(v) for v in crop_size) < 1:
        raise ConfigError(f"data.train_transform.crop_size must be [H, W] of positive ints, got {crop_size!r}")
    return int(crop_size[0]), int(crop_size[1])


def _scale_range(scale_range: Sequence[float], crop_h: int, crop_w: int) -> tuple[float, float]:
    """``(min, max)`` of ``data.train_transform.scale_range``: two numbers > 0 (seg_template/option_rules.py),
    min <= max, and a min that leaves an image of the crop's size at least 1 pixel (OpenCV refuses to resize
    to 0 pixels: a traceback in the middle of the first epoch)."""
    key = "data.train_transform.scale_range"
    require(key, list(scale_range))
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if lo > hi:
        raise ConfigError(f"{key}={show(list(scale_range))}: expected [min, max] with min <= max")
    short = min(crop_h, crop_w)
    if lo * short < 1:
        raise ConfigError(f"{key}={show(list(scale_range))}: a {crop_h}x{crop_w} image (the crop's size) scaled "
                          f"by {lo:g} keeps no pixel; expected a min scale >= 1/{short} = {1 / short:.3g} (the "
                          f"usual range is [0.5, 2.0])")
    return lo, hi


class AtLeastOnePixelScale(A.RandomScale):
    """``A.RandomScale`` that never shrinks a side below 1 pixel, where OpenCV would fail: only an image far
    smaller than the crop reaches that at the low end of an accepted ``scale_range`` (it then keeps 1 pixel)."""

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        return super().apply(img, _at_least_one_pixel(img.shape, scale), **params)

    def apply_to_mask(self, mask: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        return super().apply_to_mask(mask, _at_least_one_pixel(mask.shape, scale), **params)


def _at_least_one_pixel(shape: tuple[int, ...], scale: float) -> float:
    short = min(shape[:2])
    # 1.5 / short: int(short * scale) is 1 whatever the rounding of the division
    return scale if int(short * scale) >= 1 else 1.5 / short


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
    lo, hi = _scale_range(scale_range, crop_h, crop_w)
    steps: list[A.BasicTransform] = []
    if (lo, hi) != (1.0, 1.0):
        # RandomScale draws the factor as 1 + uniform(scale_limit)
        steps.append(AtLeastOnePixelScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
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
