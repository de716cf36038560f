"""Albumentations pipelines built from config: training (random scale, crop, flip, colour jitter, normalise)
and evaluation (an optional resize, normalise).

Sizes of reference (``short_side`` / ``long_side``, in both pipelines): the published recipes bring each image
to a set size before scaling it, rather than scaling it relative to itself. With ``long_side=L`` the image's
long side becomes L (HRNet's ``BASE_SIZE``: ``long = BASE_SIZE * s``); with ``short_side=S`` its short side
becomes S; with both, the smaller of the two factors wins (MMSegmentation's ``keep_ratio`` resize to
``scale=(L, S)``: the short side becomes S unless that makes the long side exceed L). Evaluation resizes the
image only: the mask keeps its size, so scores are computed at the label's own resolution (the logits are
upsampled to it, as HRNet's and MMSegmentation's test code do).

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
from seg_template.option_rules import REFERENCE_SIDE, show
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


def reference_factor(height: int, width: int, short_side: int | None = None, long_side: int | None = None) -> float:
    """The factor that brings an ``height x width`` image to its size of reference (module docstring): the
    smaller of ``short_side / short`` and ``long_side / long`` among those set; 1 when neither is."""
    factors = [float(size) / side for size, side in ((short_side, min(height, width)), (long_side, max(height, width)))
               if size is not None]
    return min(factors) if factors else 1.0


def _scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """``(h, w)`` rounded to the nearest pixel (HRNet's ``int(x + 0.5)``), at least 1 each."""
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class ScaleOfReference(A.RandomScale):
    """Random scale relative to a size of reference (``short_side`` / ``long_side``: module docstring), drawn
    uniformly from ``[lo, hi]`` or, with ``step``, from ``lo, lo + step, ..., hi`` (HRNet's ``0.5 +
    randint(0, SCALE_FACTOR) / 10``). Sides are rounded to the nearest pixel, never below 1."""

    def __init__(self, lo: float, hi: float, short_side: int | None = None, long_side: int | None = None,
                 step: float | None = None) -> None:
        super().__init__(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                         mask_interpolation=cv2.INTER_NEAREST, p=1.0)
        self.lo, self.hi, self.step = lo, hi, step
        self.short_side, self.long_side = short_side, long_side

    def get_params(self) -> dict[str, float]:
        if self.step is None:
            return {"scale": self.py_random.uniform(self.lo, self.hi)}
        count = int((self.hi - self.lo) / self.step + 1e-6)  # steps above lo that stay <= hi
        return {"scale": self.lo + self.py_random.randint(0, count) * self.step}

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        return {"scale": params["scale"] * reference_factor(height, width, self.short_side, self.long_side)}

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        height, width = _scaled_size(img.shape[0], img.shape[1], scale)
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        height, width = _scaled_size(mask.shape[0], mask.shape[1], scale)
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def train_transform(crop_size: Sequence[int] | int, scale_range: Sequence[float] = (0.5, 2.0), hflip: bool = True,
                    color_jitter: float = 0.0, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255, short_side: int | None = None,
                    long_side: int | None = None, scale_step: float | None = None) -> A.Compose:
    """Random scale -> pad to ``crop_size`` -> random crop -> flip -> jitter -> normalise. Called as
    ``t(image=uint8[H, W, 3], mask=int[H, W])``; returns float32 image, mask.

    ``scale_range``: ``[min, max]`` scale factors (``[1, 1]`` and no size of reference disable scaling),
    relative to the image's own size, or to ``short_side`` / ``long_side`` when set (module docstring);
    ``scale_step``: draw the factor in steps of this size (null: uniformly). ``color_jitter``: strength of
    brightness / contrast / saturation jitter (hue gets a fifth of it), 0 disables it.
    """
    require("data.ignore_index", ignore_index)
    require("data.train_transform.color_jitter", color_jitter)
    for key, value in (("short_side", short_side), ("long_side", long_side), ("scale_step", scale_step)):
        require(f"data.train_transform.{key}", value)
    crop_h, crop_w = _crop_hw(crop_size)
    lo, hi = _scale_range(scale_range, crop_h, crop_w)
    steps: list[A.BasicTransform] = []
    if scale_step is not None and lo < hi and abs((hi - lo) / scale_step - round((hi - lo) / scale_step)) > 1e-6:
        raise ConfigError(f"data.train_transform.scale_step={scale_step:g} does not divide scale_range "
                          f"[{lo:g}, {hi:g}] into whole steps, so {hi:g} would never be drawn; pick a step that "
                          f"does (HRNet: 0.1) or scale_step=null to draw uniformly")
    for key, side in (("short_side", short_side), ("long_side", long_side)):
        if side is not None and side * hi > REFERENCE_SIDE:
            raise ConfigError(f"data.train_transform.{key}={side} with scale_range max {hi:g} resizes images to "
                              f"{side * hi:.0f} px a side (at most {REFERENCE_SIDE}: each would take "
                              f"{3 * (side * hi) ** 2 / 2**20:.0f} MB before the crop); lower one of them")
    if short_side is not None or long_side is not None or scale_step is not None:
        steps.append(ScaleOfReference(lo, hi, short_side, long_side, scale_step))
    elif (lo, hi) != (1.0, 1.0):
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


class ResizeImageTo(A.ImageOnlyTransform):
    """Resize the image (bilinear) to its size of reference (``short_side`` / ``long_side``: module docstring),
    leaving the mask at its size."""

    def __init__(self, short_side: int | None = None, long_side: int | None = None) -> None:
        super().__init__(p=1.0)
        self.short_side, self.long_side = short_side, long_side

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        height, width = img.shape[:2]
        new_h, new_w = _scaled_size(height, width, reference_factor(height, width, self.short_side, self.long_side))
        if (new_h, new_w) == (height, width):
            return img
        return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   short_side: int | None = None, long_side: int | None = None) -> A.Compose:
    """Normalise, after resizing the image to ``short_side`` / ``long_side`` when set (module docstring; the
    mask keeps its size). Without them evaluation sees whole images at full resolution."""
    for key, value in (("short_side", short_side), ("long_side", long_side)):
        require(f"data.val_transform.{key}", value)
    steps: list[A.BasicTransform] = []
    if short_side is not None or long_side is not None:
        steps.append(ResizeImageTo(short_side, long_side))
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std)))
    return A.Compose(steps)
