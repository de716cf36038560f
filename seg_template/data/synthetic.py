"""SyntheticShapes: a procedural segmentation dataset that needs no files (the default ``data=synthetic``).

Each image holds a few filled shapes on a noisy, textured background crossed by distractor strokes. The
class of an object is its *shape* (circle, rectangle, triangle, ring, cross); its colour is drawn at
random per instance, so a model cannot shortcut through colour. ``cross`` is rare (drawn less often and
smaller: about 2% of the labelled pixels), so class weights and OHEM have something to do. As in
Pascal VOC, a band of ``ignore_index`` runs along every object boundary.

A sample depends only on ``(seed, split, index)``: the same call gives the same pixels in every process,
worker and run, so no files and no shared state are needed under DDP or multi-worker loading.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from seg_template.data.base import SegmentationDataset
from seg_template.errors import ConfigError
from seg_template.options import require

CLASS_NAMES = ("background", "circle", "rectangle", "triangle", "ring", "cross")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
#: relative frequency with which each foreground class is drawn; cross is the rare class
CLASS_FREQUENCY = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.5}
#: size multiplier per class: the cross is drawn smaller, rings larger so that the hole stays visible
CLASS_SCALE = {1: 1.0, 2: 0.95, 3: 1.15, 4: 1.15, 5: 0.9}
RARE_CLASS = 5


def _rotated(points: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
    """Rotate ``points[K, 2]`` (x, y) by ``angle`` radians around ``center``; int32 for cv2.fillPoly."""
    c, s = np.cos(angle), np.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    return np.round(rot + np.asarray(center)).astype(np.int32)


def draw_shape(canvas: np.ndarray, cls: int, center: tuple[float, float], radius: float, angle: float,
               aspect: float) -> None:
    """Fill the footprint of class ``cls`` with 1 in ``canvas`` (uint8[H, W]), in place.

    ``radius`` is half the object's extent in pixels; ``aspect`` squashes rectangles.
    """
    cx, cy = center
    ic = (int(round(cx)), int(round(cy)))
    if cls == 1:  # circle
        cv2.circle(canvas, ic, int(round(radius)), 1, thickness=-1, lineType=cv2.LINE_8)
    elif cls == 2:  # rectangle, rotated
        h = radius * aspect
        pts = np.array([[-radius, -h], [radius, -h], [radius, h], [-radius, h]])
        cv2.fillPoly(canvas, [_rotated(pts, angle, center)], 1)
    elif cls == 3:  # equilateral triangle, rotated
        t = angle + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * radius * 1.1
        cv2.fillPoly(canvas, [np.round(pts + np.asarray(center)).astype(np.int32)], 1)
    elif cls == 4:  # ring: the hole is background, which is what tells it from a circle
        cv2.circle(canvas, ic, int(round(radius)), 1, thickness=-1, lineType=cv2.LINE_8)
        cv2.circle(canvas, ic, max(1, int(round(radius * 0.5))), 0, thickness=-1, lineType=cv2.LINE_8)
    elif cls == 5:  # cross (plus sign), rotated; arms a third of the extent wide
        w = radius / 3
        for pts in (np.array([[-radius, -w], [radius, -w], [radius, w], [-radius, w]]),
                    np.array([[-w, -radius], [w, -radius], [w, radius], [-w, radius]])):
            cv2.fillPoly(canvas, [_rotated(pts, angle, center)], 1)
    else:
        raise ValueError(f"no shape for class {cls}; foreground classes are 1..{len(CLASS_NAMES) - 1}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour field plus distractor strokes: float32[H, W, 3] in [0, 255]."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    # strokes carry colour and edges but no object label: colour and edges alone are not evidence
    for _ in range(int(rng.integers(1, 4))):
        p1 = tuple(int(v) for v in rng.integers(0, (w, h)))
        p2 = tuple(int(v) for v in rng.integers(0, (w, h)))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, p1, p2, colour, thickness=int(rng.integers(1, 4)))
    return img


class SyntheticShapes(SegmentationDataset):
    """Procedural shapes; ``len(self) == length``; sample ``i`` is a pure function of (seed, split, i).

    Args:
        split: any name (``train``, ``val``, ``test``); different splits give disjoint random streams.
        length: number of samples in the split.
        image_size: ``[H, W]`` (or one int for square images) of the generated images.
        objects: ``[min, max]`` objects per image (inclusive).
        radius: ``[min, max]`` object half-extent as a fraction of ``min(H, W)``.
        boundary_width: pixels of ``ignore_index`` on each side of an object boundary (0: no band).
        noise: standard deviation of the per-pixel Gaussian noise, in grey levels.
        seed: global seed; change it to get another dataset of the same statistics.
        cache: keep generated ``(image, mask)`` in memory so later epochs skip the drawing
            (each loader worker keeps its own cache).
    """

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, split: str = "train", length: int = 1000, image_size: int | Sequence[int] = 96,
                 objects: Sequence[int] = (2, 4), radius: Sequence[float] = (0.15, 0.3),
                 boundary_width: int = 1, noise: float = 12.0, seed: int = 0, cache: bool = True,
                 transform: Callable[..., dict[str, Any]] | None = None, ignore_index: int = 255) -> None:
        super().__init__(transform=transform, ignore_index=ignore_index)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 16:
            raise ConfigError(f"SyntheticShapes image_size (data.train_set.image_size) must be [H, W] with both "
                              f">= 16, got {image_size!r}")
        require(f"data.{split}_set.length", length)
        lo, hi = int(objects[0]), int(objects[1])
        if not 1 <= lo <= hi:
            raise ConfigError(f"SyntheticShapes objects must be [min, max] with 1 <= min <= max, got {objects!r}")
        if not 0 < radius[0] <= radius[1] <= 0.5:
            raise ConfigError(f"SyntheticShapes radius must be [min, max] fractions in (0, 0.5], got {radius!r}")
        if not 0 <= ignore_index <= 255 or ignore_index < len(CLASS_NAMES):
            raise ConfigError(f"data.ignore_index={ignore_index} must be in [{len(CLASS_NAMES)}, 255] (masks are uint8)")
        self.split, self.length, self.size = split, int(length), size
        self.objects, self.radius = (lo, hi), (float(radius[0]), float(radius[1]))
        self.boundary_width, self.noise, self.seed = int(boundary_width), float(noise), int(seed)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        # a stable number per split name (hash() of a str changes between processes)
        self._split_key = zlib.crc32(split.encode())
        classes = np.array(sorted(CLASS_FREQUENCY))
        self._classes = classes
        self._class_p = np.array([CLASS_FREQUENCY[c] for c in classes]) / sum(CLASS_FREQUENCY.values())

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not 0 <= index < self.length:
            raise IndexError(f"SyntheticShapes split {self.split!r} has {self.length} samples, asked for {index}")
        name = f"{self.split}_{index:06d}"
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
        else:
            image, mask = self.generate(index)
            if self._cache is not None:
                self._cache[index] = (image, mask)
        # copies: transforms must never modify the cached arrays
        return image.copy(), mask.copy(), name

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw sample ``index``: ``(image uint8[H, W, 3] RGB, mask uint8[H, W])``."""
        rng = np.random.default_rng([self.seed, self._split_key, index])
        h, w = self.size
        image = _background(rng, h, w)
        mask = np.zeros((h, w), np.uint8)
        footprint = np.zeros((h, w), np.uint8)
        base = min(h, w)
        for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
            cls = int(rng.choice(self._classes, p=self._class_p))
            radius = rng.uniform(*self.radius) * base * CLASS_SCALE[cls]
            # a few tries to find a spot that barely overlaps earlier objects: occluded shapes are ambiguous
            for _attempt in range(6):
                margin = radius * 0.6
                center = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
                footprint[:] = 0
                draw_shape(footprint, cls, center, radius, rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 1.0))
                inside = footprint.astype(bool)
                area = inside.sum()
                if area and (mask[inside] > 0).sum() <= 0.05 * area:
                    break
            else:
                continue
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            # shading across the object: real objects are not flat patches of one colour
            ramp = np.linspace(-0.25, 0.25, w, dtype=np.float32) * rng.uniform(-1, 1)
            shade = np.broadcast_to(1 + ramp[None, :], (h, w))[inside]
            image[inside] = np.clip(colour[None, :] * shade[:, None], 0, 255)
            mask[inside] = cls
        image += rng.normal(0.0, self.noise, size=image.shape).astype(np.float32)
        if self.boundary_width > 0:
            # pixels whose neighbourhood holds more than one label lie on a boundary: label them ignore
            k = np.ones((2 * self.boundary_width + 1,) * 2, np.uint8)
            band = cv2.dilate(mask, k) != cv2.erode(mask, k)
            mask[band] = self.ignore_index
        return np.clip(image, 0, 255).astype(np.uint8), mask
