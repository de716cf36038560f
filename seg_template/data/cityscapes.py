"""Cityscapes (fine annotations): 19 evaluation classes, 255 ignore.

Layout (the official download)::

    <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

``*_gtFine_labelTrainIds.png`` (made by ``scripts/prepare_cityscapes.py``) is preferred; when a
frame only has ``*_gtFine_labelIds.png`` its 34 label ids are mapped to train ids with the official
table below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seg_template.data.decoding import DEFAULT_MAX_IMAGE_PIXELS
from seg_template.data.io import require_dir
from seg_template.data.paired import PairedFilesDataset, keyed, pair_by_key
from seg_template.errors import ConfigError, DataError

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# label id -> train id for the ids that are evaluated; every other id (0-6 void, 9 parking, 10 rail track,
# 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan, 30 trailer, -1 license plate) is ignored.
# The official table: cityscapesscripts/helpers/labels.py (tests compare against it when it is installed).
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# HRNet's published Cityscapes class weights live in configs/data/class_weights/cityscapes_hrnet.yaml
# (select with `data/class_weights=cityscapes_hrnet loss=wce`).

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"

LAYOUT = """\
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
      (or *_gtFine_labelIds.png; make labelTrainIds from the polygon JSONs with
       scripts/prepare_cityscapes.py <root>)"""


def label_id_lut(ignore_index: int = 255) -> np.ndarray:
    """``int64[256]`` lookup table: label id -> train id (``ignore_index`` for non-evaluated ids)."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


class CityscapesDataset(PairedFilesDataset):
    """Cityscapes fine split ``train`` / ``val`` / ``test``; sample names are ``<city>_<seq>_<frame>``.

    ``label_type``: ``"auto"`` (labelTrainIds where present, else labelIds), ``"trainIds"`` or ``"labelIds"``.
    """

    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    layout = LAYOUT
    #: the benchmark's labelIds: the inverse of the official labelId -> trainId table
    submission_ids = tuple(sorted(LABEL_ID_TO_TRAIN_ID, key=LABEL_ID_TO_TRAIN_ID.__getitem__))

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[..., dict[str, Any]] | None = None,
                 ignore_index: int = 255, label_type: str = "auto", strict: bool = True,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        if label_type not in ("auto", "trainIds", "labelIds"):
            raise ConfigError(f"data.train_set.label_type must be 'auto', 'trainIds' or 'labelIds', got {label_type!r}")
        self.label_type = label_type
        self._lut = label_id_lut(ignore_index)
        super().__init__(root, split, transform=transform, ignore_index=ignore_index, strict=strict,
                         max_image_pixels=max_image_pixels)

    def index_files(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        require_dir(self.root, LAYOUT, "Cityscapes root")
        image_dir = require_dir(self.root / "leftImg8bit" / self.split, LAYOUT, f"Cityscapes {self.split!r} images")
        gt_dir = require_dir(self.root / "gtFine" / self.split, LAYOUT, f"Cityscapes {self.split!r} annotations")
        images, unpaired = keyed(sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")), IMAGE_SUFFIX, image_dir)
        train_ids, _ = keyed(sorted(gt_dir.glob(f"*/*{TRAIN_ID_SUFFIX}")), TRAIN_ID_SUFFIX, gt_dir)
        label_ids, _ = keyed(sorted(gt_dir.glob(f"*/*{LABEL_ID_SUFFIX}")), LABEL_ID_SUFFIX, gt_dir)
        if self.label_type == "trainIds":
            masks = train_ids
        elif self.label_type == "labelIds":
            masks = label_ids
        else:
            masks = {**label_ids, **train_ids}  # train ids win where both exist
        pairs, orphans = pair_by_key(images, masks)
        return pairs, unpaired + orphans

    def read_mask(self, path: Path) -> np.ndarray:
        mask = self.read_label(path)
        if path.name.endswith(LABEL_ID_SUFFIX):
            if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
                raise DataError(f"mask file {path}: label ids must be 0..255, got {mask.min()}..{mask.max()}")
            mask = self._lut[mask]
        return mask

    def sample_name(self, image_path: Path) -> str:
        return image_path.name[: -len(IMAGE_SUFFIX)]
