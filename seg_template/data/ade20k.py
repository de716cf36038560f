"""ADE20K (SceneParsing / ADEChallengeData2016): 150 classes.

Layout (``data.root`` may be the folder holding ``ADEChallengeData2016`` or that folder itself)::

    ADEChallengeData2016/images/{training,validation}/ADE_train_00000001.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_train_00000001.png

Annotations store 0 for "other" and k for class k-1; ``reduce_zero_label`` maps 0 -> ignore and k -> k-1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seg_template.data.decoding import DEFAULT_MAX_IMAGE_PIXELS
from seg_template.data.io import list_images, require_dir
from seg_template.data.paired import PairedFilesDataset, keyed, pair_by_key
from seg_template.errors import ConfigError

# Class names and palette as in the SceneParsing benchmark's objectInfo150 (names) and MMSegmentation's
# ADE20KDataset (palette), so predictions look like everybody else's.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)

_PALETTE_FLAT = (
    120, 120, 120, 180, 120, 120, 6, 230, 230, 80, 50, 50, 4, 200, 3, 120, 120, 80, 140, 140, 140, 204, 5, 255,
    230, 230, 230, 4, 250, 7, 224, 5, 255, 235, 255, 7, 150, 5, 61, 120, 120, 70, 8, 255, 51, 255, 6, 82,
    143, 255, 140, 204, 255, 4, 255, 51, 7, 204, 70, 3, 0, 102, 200, 61, 230, 250, 255, 6, 51, 11, 102, 255,
    255, 7, 71, 255, 9, 224, 9, 7, 230, 220, 220, 220, 255, 9, 92, 112, 9, 255, 8, 255, 214, 7, 255, 224,
    255, 184, 6, 10, 255, 71, 255, 41, 10, 7, 255, 255, 224, 255, 8, 102, 8, 255, 255, 61, 6, 255, 194, 7,
    255, 122, 8, 0, 255, 20, 255, 8, 41, 255, 5, 153, 6, 51, 255, 235, 12, 255, 160, 150, 20, 0, 163, 255,
    140, 140, 140, 250, 10, 15, 20, 255, 0, 31, 255, 0, 255, 31, 0, 255, 224, 0, 153, 255, 0, 0, 0, 255,
    255, 71, 0, 0, 235, 255, 0, 173, 255, 31, 0, 255, 11, 200, 200, 255, 82, 0, 0, 255, 245, 0, 61, 255,
    0, 255, 112, 0, 255, 133, 255, 0, 0, 255, 163, 0, 255, 102, 0, 194, 255, 0, 0, 143, 255, 51, 255, 0,
    0, 82, 255, 0, 255, 41, 0, 255, 173, 10, 0, 255, 173, 255, 0, 0, 255, 153, 255, 92, 0, 255, 0, 255,
    255, 0, 245, 255, 0, 102, 255, 173, 0, 255, 0, 20, 255, 184, 184, 0, 31, 255, 0, 255, 61, 0, 71, 255,
    255, 0, 204, 0, 255, 194, 0, 255, 82, 0, 10, 255, 0, 112, 255, 51, 0, 255, 0, 194, 255, 0, 122, 255,
    0, 255, 163, 255, 153, 0, 0, 255, 10, 255, 112, 0, 143, 255, 0, 82, 0, 255, 163, 255, 0, 255, 235, 0,
    8, 184, 170, 133, 0, 255, 0, 255, 92, 184, 0, 255, 255, 0, 31, 0, 184, 255, 0, 214, 255, 255, 0, 112,
    92, 255, 0, 0, 224, 255, 112, 224, 255, 70, 184, 160, 163, 0, 255, 153, 0, 255, 71, 255, 0, 255, 0, 163,
    255, 204, 0, 255, 0, 143, 0, 255, 235, 133, 255, 0, 255, 0, 235, 245, 0, 255, 255, 0, 122, 255, 245, 0,
    10, 190, 212, 214, 255, 0, 0, 204, 255, 20, 0, 255, 255, 255, 0, 0, 153, 255, 0, 41, 255, 0, 255, 204,
    41, 0, 255, 41, 255, 0, 173, 0, 255, 0, 245, 255, 71, 0, 255, 122, 0, 255, 0, 255, 184, 0, 92, 255,
    184, 255, 0, 0, 133, 255, 255, 214, 0, 25, 194, 194, 102, 255, 0, 92, 0, 255,
)
ADE20K_PALETTE = tuple(tuple(_PALETTE_FLAT[i: i + 3]) for i in range(0, len(_PALETTE_FLAT), 3))

SPLIT_DIRS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

LAYOUT = """\
  ADEChallengeData2016/images/{training,validation}/<name>.jpg
  ADEChallengeData2016/annotations/{training,validation}/<name>.png"""


class ADE20KDataset(PairedFilesDataset):
    """ADE20K split ``train``/``val`` (aliases of ``training``/``validation``)."""

    class_names = ADE20K_CLASSES
    palette = ADE20K_PALETTE
    layout = LAYOUT
    submission_ids = tuple(range(1, len(ADE20K_CLASSES) + 1))  # the challenge's 1..150 (0 is "other")

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[..., dict[str, Any]] | None = None,
                 ignore_index: int = 255, reduce_zero_label: bool = True, strict: bool = True,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        if split not in SPLIT_DIRS:
            raise ConfigError(f"ADE20K split (data.*_set.split) must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
        self.reduce_zero_label = reduce_zero_label
        super().__init__(root, split, transform=transform, ignore_index=ignore_index, strict=strict,
                         max_image_pixels=max_image_pixels)

    def index_files(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        require_dir(self.root, LAYOUT, "ADE20K root")
        base = self.root / "ADEChallengeData2016"
        base = base if base.is_dir() else self.root
        split = SPLIT_DIRS[self.split]
        image_dir = require_dir(base / "images" / split, LAYOUT, f"ADE20K {split!r} images")
        mask_dir = require_dir(base / "annotations" / split, LAYOUT, f"ADE20K {split!r} annotations")
        images, dupes = keyed(list_images(image_dir, dangling=True), "", image_dir)
        masks, mask_dupes = keyed(sorted(mask_dir.glob("*.png")), ".png", mask_dir)
        pairs, unpaired = pair_by_key(images, masks)
        return pairs, dupes + mask_dupes + unpaired

    def read_mask(self, path: Path) -> np.ndarray:
        mask = self.read_label(path)
        if self.reduce_zero_label:
            # 0 ("other") is not a class: it becomes ignore, and every class id moves down by one
            mask = np.where(mask == 0, self.ignore_index, mask - 1)
        return mask
