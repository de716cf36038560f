"""Your own data: a folder of images and a folder of masks with matching names.

Layout, either split by sub-folders (what ``scripts/write_synthetic.py`` writes)::

    <root>/images/<split>/<name>.{png,jpg,jpeg,bmp,tif,tiff,webp,gif}   (sub-folders and folder links too)
    <root>/masks/<split>/<name>.png

or one flat folder each plus list files naming the samples of a split (one name per line, without
extension; ``<root>/splits/<split>.txt`` or ``<root>/<split>.txt``)::

    <root>/images/<name>.jpg   <root>/masks/<name>.png   <root>/splits/{train,val}.txt

Masks are single-channel index PNGs or palette PNGs (the palette index is the class), or RGB colour
masks (``mask_format="rgb"``) with ``colors[k]`` the RGB colour of class ``k``. Masks in a lossy format
(JPEG, lossy WebP) are refused unless ``lossy_masks=True``: their compression changes labels along edges.
GIF masks are read by the grey level their palette shows (``decoding.py``).

Split by sub-folders, the folders are listed recursively, following folder links (``io.find_images``);
files with other extensions and links not followed are named (a NOTE of the dataset doctor, a warning in
training), and an unpaired file whose partner was left out for its extension says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_template.data.decoding import DEFAULT_MAX_IMAGE_PIXELS
from seg_template.data.io import (
    IMAGE_EXTENSIONS,
    DatasetLayoutError,
    find_images,
    read_list_file,
    read_rgb_mask,
    require_dir,
)
from seg_template.data.paired import PairedFilesDataset, by_key, keyed, pair_by_key
from seg_template.errors import ConfigError

LAYOUT = """\
  images/<split>/<name>.<png|jpg|...>  and  masks/<split>/<name>.png      (split by sub-folders), or
  images/<name>.<ext>  masks/<name>.png  splits/<split>.txt             (split by list files)"""
#: sub-folders of images/ that are splits: a split without a name would read them all as one
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})


def check_label_map(label_map: Sequence[Sequence[int]] | None, num_classes: int, ignore_index: int,
                    mask_format: str) -> list[tuple[int, int]]:
    """``data.train_set.label_map``: ``[[stored value, class id or ignore_index], ...]`` for index masks, e.g.
    ``[[11, 255]]`` for a dataset whose void label is 11. A ``ConfigError`` names what is wrong."""
    if not label_map:
        return []
    key = "data.train_set.label_map"
    if mask_format != "index":
        raise ConfigError(f"{key} maps the values of index masks; colour masks (mask_format=rgb) take their "
                          "classes from data.train_set.colors and ignore_colors")
    if not isinstance(label_map, Sequence) or isinstance(label_map, str):
        raise ConfigError(f"{key} is a list of [stored value, class id] pairs, got {label_map!r} "
                          f"(e.g. {key}=[[11,{ignore_index}]])")
    pairs, seen = [], set()
    for entry in label_map:
        if (not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry)):
            raise ConfigError(f"{key}: each entry is [stored value, class id], got {entry!r} "
                              f"(e.g. {key}=[[11,{ignore_index}]])")
        value, label = int(entry[0]), int(entry[1])
        if not 0 <= value <= 65535:
            raise ConfigError(f"{key}: stored value {value} is not a mask value (masks hold 0..65535)")
        if not (0 <= label < num_classes or label == ignore_index):
            raise ConfigError(f"{key}: {value} -> {label}, but a class id is in [0, {num_classes}) or the "
                              f"ignore index {ignore_index}")
        if value in seen:
            raise ConfigError(f"{key}: stored value {value} is mapped twice")
        seen.add(value)
        pairs.append((value, label))
    return pairs


class FolderDataset(PairedFilesDataset):
    """Images + masks matched by name; ``class_names`` (and colours) come from the data config."""

    layout = LAYOUT

    def __init__(self, root: str | Path, class_names: Sequence[str], split: str | None = "train",
                 transform: Callable[..., dict[str, Any]] | None = None, ignore_index: int = 255,
                 images_dir: str = "images", masks_dir: str = "masks", mask_suffix: str = "",
                 split_file: str | None = None, mask_format: str = "index",
                 colors: Sequence[Sequence[int]] | None = None, ignore_colors: Sequence[Sequence[int]] = (),
                 reduce_zero_label: bool = False, strict: bool = True, lossy_masks: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 label_map: Sequence[Sequence[int]] | None = None) -> None:
        if not class_names:
            raise ConfigError("FolderDataset needs class names (data.class_names)")
        if mask_format not in ("index", "rgb"):
            raise ConfigError(f"mask_format must be 'index' (grey or palette PNG) or 'rgb', got {mask_format!r} "
                              "(data.train_set.mask_format, which the other splits follow)")
        if mask_format == "rgb" and (not colors or len(colors) != len(class_names)):
            raise ConfigError(f"mask_format=rgb needs one colour per class: got "
                              f"{len(colors or [])} colours (data.train_set.colors, which the other splits follow) "
                              f"for {len(class_names)} classes (data.class_names)")
        self.class_names = tuple(class_names)
        self.palette = tuple(tuple(int(v) for v in c) for c in colors) if colors else None
        self.images_dir, self.masks_dir, self.mask_suffix = images_dir, masks_dir, mask_suffix
        self.split_file = split_file
        self.mask_format = mask_format
        self.colors = [list(c) for c in colors] if colors else []
        self.ignore_colors = [list(c) for c in ignore_colors]
        self.reduce_zero_label = reduce_zero_label
        self.label_map = check_label_map(label_map, len(class_names), ignore_index, mask_format)
        if not isinstance(lossy_masks, bool):
            raise ConfigError(f"data.train_set.lossy_masks must be true or false, got {lossy_masks!r}")
        self.lossy_masks = lossy_masks
        super().__init__(root, split or "", transform=transform, ignore_index=ignore_index, strict=strict,
                         max_image_pixels=max_image_pixels)

    def _list_file(self) -> Path | None:
        if self.split_file:
            path = Path(self.split_file)
            path = path if path.is_absolute() else self.root / path
            if not path.is_file():
                raise DatasetLayoutError(f"split list file not found: {path} (data.*_set.split_file)")
            return path
        if not self.split:
            return None
        for candidate in (self.root / "splits" / f"{self.split}.txt", self.root / f"{self.split}.txt"):
            if candidate.is_file():
                return candidate
        return None

    def index_files(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        require_dir(self.root, LAYOUT, "folder dataset root")
        image_root = require_dir(self.root / self.images_dir, LAYOUT, "image folder")
        mask_root = require_dir(self.root / self.masks_dir, LAYOUT, "mask folder")
        list_file = None if (self.split and (image_root / self.split).is_dir()) else self._list_file()
        if list_file is None and self.split:
            image_root = require_dir(image_root / self.split, LAYOUT, f"image folder of split {self.split!r} "
                                     f"(and no list file {self.root}/splits/{self.split}.txt)")
            mask_root = require_dir(mask_root / self.split, LAYOUT, f"mask folder of split {self.split!r}")
        recursive = list_file is None
        if not self.split and recursive:  # one flat folder is fine; split folders would all be read as one
            splits = sorted(d.name for d in image_root.iterdir() if d.is_dir() and d.name in SPLIT_FOLDER_NAMES)
            if splits:
                raise ConfigError(f"a split of data=folder has no split name (data.*_set.split={self.split!r}), so "
                                  f"it would read every image under {image_root}, whose split folders "
                                  f"({', '.join(splits)}) hold training images too: name the split, e.g. "
                                  f"data.test_set.split=test")
        image_listing = find_images(image_root, recursive, dangling=True)
        mask_listing = find_images(mask_root, recursive, dangling=True)
        images, dupes = keyed(image_listing.files, "", image_root)
        mask_files = [p for p in mask_listing.files if p.stem.endswith(self.mask_suffix)]
        masks, mask_dupes = keyed(mask_files, "", mask_root)
        unread_images = by_key(image_listing.left_out, image_root)
        unread_masks = by_key([p for p in mask_listing.left_out if p.stem.endswith(self.mask_suffix)], mask_root)
        if self.mask_suffix:
            masks = {k[: -len(self.mask_suffix)]: v for k, v in masks.items()}
            unread_masks = {k[: -len(self.mask_suffix)]: v for k, v in unread_masks.items()}
        if list_file is not None:
            # a flat folder holds every split: only what the list names matters, and its problems are errors
            lines, notes = read_list_file(list_file, whole_lines=True)
            self.notes += notes
            wanted, missing = listed_names(lines, images, image_root, unread_images)
            missing = [f"listed in {list_file} but {problem}" for problem in missing]
            images = {k: images[k] for k in wanted if k in images}
            masks = {k: masks[k] for k in wanted if k in masks}
            dupes += missing
        else:
            self.left_out += image_listing.left_out_lines() + mask_listing.left_out_lines()
        pairs, unpaired = pair_by_key(images, masks, unread_images, unread_masks)
        return pairs, dupes + mask_dupes + unpaired

    def read_mask(self, path: Path) -> np.ndarray:
        if self.mask_format == "rgb":
            mask = read_rgb_mask(path, self.colors, self.ignore_colors, self.ignore_index, self.lossy_masks,
                                 self.max_image_pixels)
        else:
            mask = self.read_label(path)
            if self.label_map:  # decided on the stored values: each pixel is mapped once ([[1, 2], [2, 3]])
                stored, mask = mask, mask.copy()
                for value, label in self.label_map:
                    mask[stored == value] = label
        if self.reduce_zero_label:
            mask = np.where(mask == 0, self.ignore_index, np.where(mask == self.ignore_index, mask, mask - 1))
        return mask

    def sample_name(self, image_path: Path) -> str:
        split_root = self.root / self.images_dir / self.split
        base = split_root if split_root.is_dir() and self.split else self.root / self.images_dir
        return image_path.relative_to(base).with_suffix("").as_posix()


def _bare(name: str) -> str:
    """A listed name without its image extension, if it has one (``a.jpg`` -> ``a``)."""
    return Path(name).with_suffix("").as_posix() if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name


def listed_names(lines: Sequence[str], images: Mapping[str, Path], root: Path,
                 unread: Mapping[str, Path] | None = None) -> tuple[list[str], list[str]]:
    """``(names, problems)`` for the lines of a split list, ``images`` mapping names to files in ``root``: a line names
    the sample whose name is the whole line when there is one (names with spaces: ``my img`` for
    ``my img.png``), else its first word (lists that add columns after the name: ``a.jpg a.png``). ``unread``:
    files of those names left out for their extension, named in the problem."""
    names, problems = [], []
    for line in lines:
        whole, first = _bare(line), _bare(line.split()[0])
        if whole in images or first in images:
            names.append(whole if whole in images else first)
            continue
        other = (unread or {}).get(whole) or (unread or {}).get(first)
        why = "" if other is None else (f" ({other} has that name but is not read: its extension "
                                        f"{other.suffix or '(none)'} is not one of {' '.join(IMAGE_EXTENSIONS)}; "
                                        "convert it to one of those)")
        if whole == first:
            problems.append(f"no image {root}/{whole}.<ext>{why}")
        else:
            problems.append(f"no image '{root}/{whole}.<ext>' (the whole line) nor '{root}/{first}.<ext>' (its first "
                            f"word){why}")
    return names, problems
