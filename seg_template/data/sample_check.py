"""Read one sample the way training will and say what is wrong with it, or worth knowing: the per-sample check
shared by the pre-flight (``preflight.py``) and the dataset doctor (``doctor.py``).

Problems (``errors``) each name their file. ``notes`` record what the reader does to a file that a user may
not expect (an EXIF orientation applied, 16-bit samples scaled, a lossy mask accepted), so that the doctor
can say so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from seg_template.data.base import SegmentationDataset
from seg_template.data.decoding import ImageInfo
from seg_template.data.io import load_image, probe_image, size_mismatch
from seg_template.data.paired import PairedFilesDataset

#: note kinds, in the order the doctor prints them
NOTE_KINDS = ("orientation", "mask orientation", "bit depth", "lossy mask", "list file", "left out")


def count_labels(mask: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, int, list[int]]:
    """``(pixels per class int64[C], ignored pixels, sorted bad values)`` for a label map ``[H, W]``. Pixels
    of the ignore index count as ignored, also when it is a class id: training ignores them."""
    flat = mask.ravel()
    if flat.size and flat.min() >= 0 and flat.max() < 65536:  # a histogram beats sorting 2-Mpx Cityscapes masks
        hist = np.bincount(flat)
        values = np.flatnonzero(hist)
        counts = hist[values]
    else:
        values, counts = np.unique(flat, return_counts=True)
    per_class = np.zeros(num_classes, dtype=np.int64)
    inside = (values >= 0) & (values < num_classes) & (values != ignore_index)
    per_class[values[inside]] = counts[inside]
    ignored = int(counts[values == ignore_index].sum())
    bad = [int(v) for v in values[~inside & (values != ignore_index)]]
    return per_class, ignored, bad


@dataclass
class SampleCheck:
    """What reading one sample found: problems (each naming its file), its label histogram int64[C], its
    ignored pixels and ``(kind, detail)`` notes (``NOTE_KINDS``)."""

    errors: list[str]
    class_pixels: np.ndarray
    ignore_pixels: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)


def _image_notes(info: ImageInfo, path: Path) -> list[tuple[str, str]]:
    notes = []
    if info.orientation != 1:
        notes.append(("orientation", f"{path} ({info.describe_orientation()})"))
    if info.bits > 8 or info.mode == "F":
        notes.append(("bit depth", f"{path} ({info.bits}-bit {info.mode})"))
    return notes


def _mask_notes(info: ImageInfo | None, path: Path) -> list[tuple[str, str]]:
    if info is None:
        return []
    notes = [("mask orientation", f"{path} ({info.describe_orientation()})")] if info.orientation != 1 else []
    if info.lossy:  # read at all, so the dataset accepts lossy masks
        notes.append(("lossy mask", f"{path} ({info.format})"))
    return notes


def _problem(what: str, err: Exception) -> str:
    # an undecodable file reads "unreadable image: cannot read image file ..."; a refusal names file and cause
    return f"unreadable {what}: {err}" if isinstance(err, OSError) else str(err)


def check_sample(dataset: SegmentationDataset, index: int) -> SampleCheck:
    """Read sample ``index`` of ``dataset`` and check it: readable files, image and mask of one size, labels
    in ``[0, C)`` or the ignore index. File-backed datasets read image and mask separately so that both
    problems of a pair are reported; other datasets (synthetic) go through ``load``."""
    empty = np.zeros(dataset.num_classes, dtype=np.int64)
    errors: list[str] = []
    notes: list[tuple[str, str]] = []
    image = mask = None
    orientation = 1
    if isinstance(dataset, PairedFilesDataset):
        image_path, mask_path = dataset.samples[index]
        where, image_where = str(mask_path), str(image_path)
        try:
            image, info = load_image(image_path, dataset.max_image_pixels)
            orientation = info.orientation
            notes += _image_notes(info, image_path)
        except (OSError, ValueError) as err:
            errors.append(_problem("image", err))
        try:
            mask = dataset.read_mask(mask_path)
            notes += _mask_notes(probe_image(mask_path), mask_path)
        except (OSError, ValueError) as err:
            errors.append(_problem("mask", err))
    else:
        where = image_where = f"{type(dataset).__name__}[{index}]"
        try:
            image, mask, name = dataset.load(index)
            where = image_where = f"{where} ({name})"
        except (OSError, ValueError) as err:
            errors.append(f"unreadable sample {where}: {err}")
    if mask is None:
        return SampleCheck(errors, empty, notes=notes)
    if image is not None:
        mismatch = size_mismatch(image.shape, mask.shape, image_where, where, orientation)
        if mismatch:
            errors.append(mismatch)
    per_class, ignored, bad = count_labels(mask, dataset.num_classes, dataset.ignore_index)
    if bad:
        errors.append(f"label value(s) {bad[:10]} outside [0, {dataset.num_classes}) and not the ignore "
                      f"index {dataset.ignore_index}: {where}")
    return SampleCheck(errors, per_class, ignored, notes)


class _Checks(Dataset):
    """``check_sample`` over chosen indices, as a Dataset so that a DataLoader's workers can share the reading."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> SampleCheck:
        return check_sample(self.dataset, self.indices[i])


def _as_is(check: SampleCheck) -> SampleCheck:
    return check


def scan(dataset: SegmentationDataset, indices: Sequence[int], workers: int = 0) -> Iterator[SampleCheck]:
    """``check_sample`` for each of ``indices``, in order; ``workers > 0`` reads in that many processes (the
    DataLoader's worker machinery, the same the training uses)."""
    workers = min(int(workers), len(indices))
    if workers <= 1:
        return (check_sample(dataset, i) for i in indices)
    loader = DataLoader(_Checks(dataset, indices), batch_size=None, num_workers=workers, collate_fn=_as_is)
    return iter(loader)


def ignored_class(dataset: SegmentationDataset, masks: int, pixels: int, read: int) -> str | None:
    """The warning when the ignore index is also a class id (``< num_classes``) and ``pixels`` pixels of it
    occur in ``masks`` of the ``read`` masks; None when it is not a class id or does not occur."""
    ignore, classes = dataset.ignore_index, dataset.num_classes
    if not (0 <= ignore < classes and pixels):
        return None
    names = list(dataset.class_names)
    name = f" ({names[ignore]!r})" if ignore < len(names) else ""
    return (f"data.ignore_index={ignore} is also a class id (class {ignore}{name}, data.num_classes={classes}): "
            f"{masks} of the {read} masks read hold {pixels:,} pixels of value {ignore}, which the loss and the metrics ignore, "
            f"so class {ignore} is never learned or scored. If it is a class, set data.ignore_index to a value "
            "that is not a class id (e.g. 255)")
