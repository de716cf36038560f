"""Pascal VOC 2012 segmentation: 21 classes (background + 20), 255 on object boundaries.

Layout (``data.root`` may be the folder holding ``VOCdevkit`` or ``VOC2012`` itself)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette PNGs: the index is the class
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png       optional SBD masks (single-channel)
    VOCdevkit/VOC2012/ImageSets/Segmentation/aug.txt      optional SBD id list

With ``use_aug=True`` the ``train`` split is VOC train plus every SBD id that is in neither VOC
train nor VOC val (the usual 10,582-image "trainaug"; val ids are dropped so nothing leaks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seg_template.data.decoding import DEFAULT_MAX_IMAGE_PIXELS
from seg_template.data.io import DatasetLayoutError, broken_link, read_list_file, require_dir
from seg_template.data.paired import PairedFilesDataset
from seg_template.data.palette import default_palette

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


# the VOC colour map (its palette PNGs use it): one (R, G, B) tuple per class
VOC_PALETTE = tuple(tuple(int(v) for v in rgb) for rgb in default_palette(len(VOC_CLASSES)))

LAYOUT = """\
  VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  VOCdevkit/VOC2012/SegmentationClass/<id>.png
  VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
  (optional SBD) VOCdevkit/VOC2012/SegmentationClassAug/<id>.png + ImageSets/Segmentation/aug.txt"""


def read_id_list(path: Path, notes: list[str] | None = None) -> list[str]:
    """Ids from a VOC list file (one per line; the first token, so 'id 1' style lines work too); what the
    reading corrected (a byte-order mark) is appended to ``notes``."""
    if not path.is_file():
        raise DatasetLayoutError(f"split list not found: {path}\nexpected layout:\n{LAYOUT}")
    ids, found = read_list_file(path)
    if notes is not None:
        notes += found
    return ids


class VOCDataset(PairedFilesDataset):
    """VOC 2012 split ``train`` / ``val`` (or any list in ImageSets/Segmentation), optionally + SBD."""

    class_names = VOC_CLASSES
    palette = VOC_PALETTE
    layout = LAYOUT

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[..., dict[str, Any]] | None = None,
                 ignore_index: int = 255, use_aug: bool = False, aug_list: str = "ImageSets/Segmentation/aug.txt",
                 aug_dir: str = "SegmentationClassAug", strict: bool = True,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.use_aug = use_aug
        self.aug_list = aug_list
        self.aug_dir = aug_dir
        super().__init__(root, split, transform=transform, ignore_index=ignore_index, strict=strict,
                         max_image_pixels=max_image_pixels)

    @property
    def voc_dir(self) -> Path:
        for candidate in (self.root / "VOCdevkit" / "VOC2012", self.root / "VOC2012", self.root):
            if (candidate / "ImageSets" / "Segmentation").is_dir():
                return candidate
        return self.root / "VOCdevkit" / "VOC2012"

    def index_files(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        require_dir(self.root, LAYOUT, "VOC root")
        voc = require_dir(self.voc_dir, LAYOUT, "VOC2012 folder")
        lists = voc / "ImageSets" / "Segmentation"
        ids = read_id_list(lists / f"{self.split}.txt", self.notes)
        entries = [(i, voc / "SegmentationClass") for i in ids]
        if self.use_aug and self.split == "train":
            aug_dir = require_dir(voc / self.aug_dir, LAYOUT, "SBD mask folder (data.train_set.aug_dir)")
            excluded = set(ids) | set(read_id_list(lists / "val.txt"))
            entries += [(i, aug_dir) for i in dict.fromkeys(read_id_list(voc / self.aug_list, self.notes))
                        if i not in excluded]
        pairs, unpaired = [], []
        for sample_id, mask_dir in entries:
            image, mask = voc / "JPEGImages" / f"{sample_id}.jpg", mask_dir / f"{sample_id}.png"
            links = [problem for problem in map(broken_link, (image, mask)) if problem]
            if links:
                unpaired += links
            elif not image.is_file():
                unpaired.append(f"listed id {sample_id!r} has no image: {image}")
            elif not mask.is_file():
                unpaired.append(f"image without mask: {image} (expected {mask})")
            else:
                pairs.append((image, mask))
        return pairs, unpaired

    def read_mask(self, path: Path) -> np.ndarray:
        return self.read_label(path)  # palette index == class index; 255 marks boundaries
