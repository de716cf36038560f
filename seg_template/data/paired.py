"""Base class for datasets stored as (image file, mask file) pairs on disk.

Subclasses find their pairs (``index_files``) and say how a mask file becomes train ids
(``read_mask``); reading, size / label validation and the dataset doctor's hooks live here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_template.data.base import SegmentationDataset
from seg_template.data.io import DatasetLayoutError, check_labels, check_same_size, format_paths, read_image


class PairedFilesDataset(SegmentationDataset):
    """A dataset of ``samples = [(image_path, mask_path), ...]``.

    ``strict=False`` keeps going when files are unpaired and records them in ``unpaired`` instead
    of raising: that is how ``scripts/check_dataset.py`` reports every problem at once.
    """

    #: the on-disk layout, printed when the root or a split is missing
    layout: str = ""

    def __init__(self, root: str | Path, split: str, transform: Callable[..., dict[str, Any]] | None = None,
                 ignore_index: int = 255, strict: bool = True) -> None:
        super().__init__(transform=transform, ignore_index=ignore_index)
        if root is None:
            raise DatasetLayoutError(f"{type(self).__name__}: data.root is not set; expected layout:\n{self.layout}")
        self.root = Path(root).expanduser()
        self.split = split
        self.strict = strict
        pairs, unpaired = self.index_files()
        self.samples: list[tuple[Path, Path]] = sorted(pairs)
        self.unpaired: list[str] = unpaired
        if unpaired and strict:
            raise DatasetLayoutError(f"{type(self).__name__} split {split!r} under {self.root}: "
                                     f"{len(unpaired)} unpaired file(s):{format_paths(unpaired)}")
        if not self.samples and strict:
            raise DatasetLayoutError(f"{type(self).__name__} split {split!r}: no image/mask pairs found under "
                                     f"{self.root}; expected layout:\n{self.layout}")

    def index_files(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        """Return ``(pairs, unpaired)``: matched (image, mask) paths and messages naming orphan files."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> np.ndarray:
        """Mask file -> train ids ``int64[H, W]`` (not yet range-checked)."""
        raise NotImplementedError

    def sample_name(self, image_path: Path) -> str:
        return image_path.stem

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self.read_mask(mask_path)
        check_same_size(image, mask, image_path, mask_path)
        check_labels(mask, self.num_classes, self.ignore_index, mask_path)
        # uint8 keeps albumentations/cv2 happy (cv2 cannot warp or pad int64 arrays)
        if 0 <= self.ignore_index <= 255 and self.num_classes <= 256:
            mask = mask.astype(np.uint8)
        else:
            mask = mask.astype(np.int32)
        return image, mask, self.sample_name(image_path)


def pair_by_key(images: dict[str, Path], masks: dict[str, Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Match two ``key -> path`` maps; return pairs and messages for the orphans on either side."""
    pairs = [(images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]
    unpaired = [f"image without mask: {images[k]}" for k in sorted(images.keys() - masks.keys())]
    unpaired += [f"mask without image: {masks[k]}" for k in sorted(masks.keys() - images.keys())]
    return pairs, unpaired


def keyed(paths: Sequence[Path], suffix: str, base: Path) -> tuple[dict[str, Path], list[str]]:
    """Map ``relative/path/without<suffix>`` -> path for files ending in ``suffix``; report duplicates."""
    out: dict[str, Path] = {}
    dupes: list[str] = []
    for p in paths:
        key = str(p.relative_to(base))[: -len(suffix)] if suffix else str(p.relative_to(base).with_suffix(""))
        if key in out:
            dupes.append(f"two files share the name {key!r}: {out[key]} and {p}")
        out[key] = p
    return out, dupes
