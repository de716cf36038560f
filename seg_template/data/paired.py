"""Base class for datasets stored as (image file, mask file) pairs on disk.

Subclasses find their pairs (``index_files``) and say how a mask file becomes train ids
(``read_mask``, through ``read_label``); reading (the one reader in ``io.py``), size / label validation and
the dataset doctor's hooks live here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_template.data.base import SegmentationDataset
from seg_template.data.decoding import DEFAULT_MAX_IMAGE_PIXELS, pixel_limit
from seg_template.data.io import (
    IMAGE_EXTENSIONS,
    LOSSY_OPTION,
    DatasetLayoutError,
    broken_link,
    check_labels,
    check_same_size,
    format_paths,
    load_image,
    probe_image,
    read_label_png,
)
from seg_template.errors import ConfigError, DataError

#: mask file suffixes that are always lossy (WebP may be either: its header says)
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


class PairedFilesDataset(SegmentationDataset):
    """A dataset of ``samples = [(image_path, mask_path), ...]``.

    ``strict=False`` keeps going when files are unpaired (or masks lossy) and records them in ``unpaired``
    (``refused``) instead of raising: that is how ``scripts/check_dataset.py`` reports every problem at once.
    ``notes`` records what indexing corrected (a byte-order mark in a list file) for the doctor, ``left_out``
    one line per kind of file the listing left out (extensions that are not read, folder links not followed),
    which the doctor prints as notes and training logs as a warning.
    ``max_image_pixels``: larger files are refused before decoding (None: no limit).
    """

    #: the on-disk layout, printed when the root or a split is missing
    layout: str = ""
    #: lossy masks (JPEG, lossy WebP) are refused unless a dataset accepts them (``FolderDataset(lossy_masks=)``)
    lossy_masks: bool = False

    def __init__(self, root: str | Path, split: str, transform: Callable[..., dict[str, Any]] | None = None,
                 ignore_index: int = 255, strict: bool = True,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        super().__init__(transform=transform, ignore_index=ignore_index)
        if root is None:
            raise DatasetLayoutError(f"{type(self).__name__}: data.root is not set; expected layout:\n{self.layout}")
        self.root = Path(root).expanduser()
        if not isinstance(split, str | int) or isinstance(split, bool):
            raise ConfigError(f"{type(self).__name__}: split must be a name (data.*_set.split), got {split!r}")
        self.split = str(split)  # split=2024 typed as a number is the folder or list named 2024
        self.strict = strict
        self.max_image_pixels = pixel_limit(max_image_pixels)
        self.notes: list[str] = []
        self.left_out: list[str] = []
        pairs, unpaired = self.index_files()
        pairs, self.refused = self.refuse_lossy_masks(pairs)
        self.samples: list[tuple[Path, Path]] = sorted(pairs)
        self.unpaired: list[str] = unpaired
        if unpaired and strict:
            raise DatasetLayoutError(f"{type(self).__name__} split {split!r} under {self.root}: "
                                     f"{len(unpaired)} unpaired or missing file(s):{format_paths(unpaired)}")
        if self.refused and strict:
            raise DataError(f"{type(self).__name__} split {split!r} under {self.root}: {len(self.refused)} "
                            f"mask(s) in a lossy format:{format_paths(self.refused)}\nIts compression changes "
                            f"labels along edges: save masks as PNG, or accept them with {LOSSY_OPTION}")
        if not self.samples and strict:
            raise DatasetLayoutError(f"{type(self).__name__} split {split!r}: no image/mask pairs found under "
                                     f"{self.root}; expected layout:\n{self.layout}")

    def index_files(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        """Return ``(pairs, unpaired)``: matched (image, mask) paths and messages naming orphan files."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> np.ndarray:
        """Mask file -> train ids ``int64[H, W]`` (not yet range-checked)."""
        raise NotImplementedError

    def read_label(self, path: Path) -> np.ndarray:
        """An index mask file as stored ``int64[H, W]``, through the one reader with this dataset's options."""
        return read_label_png(path, lossy_ok=self.lossy_masks, max_pixels=self.max_image_pixels)

    def refuse_lossy_masks(self, pairs: Sequence[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path]], list[str]]:
        """``(pairs kept, messages)``: masks in a lossy format are found from their names (and a WebP's header)
        while indexing, so that one JPEG mask among thousands stops the run before training, not hours in."""
        if self.lossy_masks:
            return list(pairs), []
        kept, refused = [], []
        for image, mask in pairs:
            suffix = mask.suffix.lower()
            info = probe_image(mask) if suffix == ".webp" else None
            if suffix in LOSSY_SUFFIXES or (info is not None and info.lossy):
                refused.append(f"lossy mask ({'JPEG' if info is None else info.format}): {mask}")
            else:
                kept.append((image, mask))
        return kept, refused

    def sample_name(self, image_path: Path) -> str:
        return image_path.stem

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image_path, mask_path = self.samples[index]
        image, info = load_image(image_path, self.max_image_pixels)
        mask = self.read_mask(mask_path)
        check_same_size(image, mask, image_path, mask_path, info.orientation)
        check_labels(mask, self.num_classes, self.ignore_index, mask_path)
        # uint8 keeps albumentations/cv2 happy (cv2 cannot warp or pad int64 arrays)
        if 0 <= self.ignore_index <= 255 and self.num_classes <= 256:
            mask = mask.astype(np.uint8)
        else:
            mask = mask.astype(np.int32)
        return image, mask, self.sample_name(image_path)


def pair_by_key(images: dict[str, Path], masks: dict[str, Path], unread_images: Mapping[str, Path] | None = None,
                unread_masks: Mapping[str, Path] | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Match two ``key -> path`` maps; return pairs and messages for the orphans on either side. A path that is
    a symbolic link leading to no file (dangling, or a loop) is named as one (not as the other file's missing
    partner). ``unread_images`` / ``unread_masks``: files of the same keys that the listing left out for their
    extension; an orphan's message names its partner there and says that its extension is not read."""
    pairs, unpaired = [], []
    for key in sorted(images.keys() | masks.keys()):
        image, mask = images.get(key), masks.get(key)
        links = [link for link in (broken_link(p) for p in (image, mask) if p is not None) if link]
        if links:
            unpaired += links
        elif mask is None:
            unpaired.append(f"image without mask: {image}{_unread_partner(key, unread_masks)}")
        elif image is None:
            unpaired.append(f"mask without image: {mask}{_unread_partner(key, unread_images)}")
        else:
            pairs.append((image, mask))
    return pairs, unpaired


def _unread_partner(key: str, unread: Mapping[str, Path] | None) -> str:
    """`` (<file> has its name, but ...)`` when ``unread`` holds a file of ``key``, else ``""``."""
    other = (unread or {}).get(key)
    if other is None:
        return ""
    extension = f"its extension {other.suffix!r}" if other.suffix else "a file without an extension"
    return (f" ({other} has its name but is not read: {extension} is not one of {' '.join(IMAGE_EXTENSIONS)}; "
            "convert it to one of those)")


def by_key(paths: Sequence[Path], base: Path) -> dict[str, Path]:
    """``relative/path/without/suffix -> path`` for ``paths`` under ``base`` (the first of a key wins)."""
    out: dict[str, Path] = {}
    for p in paths:
        out.setdefault(str(p.relative_to(base).with_suffix("")), p)
    return out


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
