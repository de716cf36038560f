"""The dataset doctor: walk every split of a data config and report what is wrong with the files.

Reports per split: image / mask counts, unpaired files, unreadable files, image/mask size mismatches,
label values outside ``[0, C)`` ∪ {ignore} and per-class pixel frequencies. Every error names its file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from seg_template.data.base import SegmentationDataset
from seg_template.data.config import SPLITS, build_split, split_config
from seg_template.data.io import read_image
from seg_template.data.paired import PairedFilesDataset


@dataclass
class SplitReport:
    """What the doctor found in one split; ``class_pixels[k]`` counts pixels of class ``k``."""

    split: str
    num_images: int = 0
    num_masks: int = 0
    num_pairs: int = 0
    num_checked: int = 0
    errors: list[str] = field(default_factory=list)
    class_pixels: np.ndarray | None = None
    ignore_pixels: int = 0


def count_labels(mask: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, int, list[int]]:
    """``(pixels per class int64[C], ignored pixels, sorted bad values)`` for a label map ``[H, W]``."""
    flat = mask.ravel()
    if flat.size and flat.min() >= 0 and flat.max() < 65536:  # a histogram beats sorting 2-Mpx Cityscapes masks
        hist = np.bincount(flat)
        values = np.flatnonzero(hist)
        counts = hist[values]
    else:
        values, counts = np.unique(flat, return_counts=True)
    per_class = np.zeros(num_classes, dtype=np.int64)
    inside = (values >= 0) & (values < num_classes)
    per_class[values[inside]] = counts[inside]
    ignored = int(counts[values == ignore_index].sum())
    bad = [int(v) for v in values[~inside & (values != ignore_index)]]
    return per_class, ignored, bad


@dataclass
class SampleCheck:
    """What reading one sample found: problems (each naming its file) and its label histogram int64[C]."""

    errors: list[str]
    class_pixels: np.ndarray
    ignore_pixels: int = 0


def check_sample(dataset: SegmentationDataset, index: int) -> SampleCheck:
    """Read sample ``index`` of ``dataset`` and check it: readable files, image and mask of one size, labels
    in ``[0, C)`` or the ignore index. File-backed datasets read image and mask separately so that both
    problems of a pair are reported; other datasets (synthetic) go through ``load``."""
    empty = np.zeros(dataset.num_classes, dtype=np.int64)
    errors: list[str] = []
    image = mask = None
    if isinstance(dataset, PairedFilesDataset):
        image_path, mask_path = dataset.samples[index]
        where, image_where = str(mask_path), str(image_path)
        try:
            image = read_image(image_path)
        except (OSError, ValueError) as err:
            errors.append(f"unreadable image: {err}")
        try:
            mask = dataset.read_mask(mask_path)
        except (OSError, ValueError) as err:
            errors.append(f"unreadable mask: {err}")
    else:
        where = image_where = f"{type(dataset).__name__}[{index}]"
        try:
            image, mask, name = dataset.load(index)
            where = image_where = f"{where} ({name})"
        except (OSError, ValueError) as err:
            errors.append(f"unreadable sample {where}: {err}")
    if mask is None:
        return SampleCheck(errors, empty)
    if image is not None and image.shape[:2] != mask.shape[:2]:
        errors.append(f"size mismatch: image {image_where} is {image.shape[1]}x{image.shape[0]} (WxH), "
                      f"mask {where} is {mask.shape[1]}x{mask.shape[0]}")
    per_class, ignored, bad = count_labels(mask, dataset.num_classes, dataset.ignore_index)
    if bad:
        errors.append(f"label value(s) {bad[:10]} outside [0, {dataset.num_classes}) and not the ignore "
                      f"index {dataset.ignore_index}: {where}")
    return SampleCheck(errors, per_class, ignored)


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


def check_split(dataset: PairedFilesDataset, split: str, limit: int | None = None, workers: int = 0) -> SplitReport:
    """Read every (image, mask) pair of ``dataset`` (the first ``limit`` if given) and collect problems;
    ``workers`` processes read in parallel."""
    report = SplitReport(split=split, class_pixels=np.zeros(dataset.num_classes, dtype=np.int64))
    report.errors += dataset.unpaired
    report.num_pairs = len(dataset.samples)
    report.num_images = report.num_pairs + sum(u.startswith("image without mask") for u in dataset.unpaired)
    report.num_masks = report.num_pairs + sum(u.startswith("mask without image") for u in dataset.unpaired)
    count = report.num_pairs if limit is None else min(limit, report.num_pairs)
    for check in scan(dataset, range(count), workers):
        report.num_checked += 1
        report.errors += check.errors
        report.class_pixels += check.class_pixels
        report.ignore_pixels += check.ignore_pixels
    return report


def check_dataset(data_cfg: DictConfig, splits: Sequence[str] = SPLITS, limit: int | None = None,
                  workers: int = 0) -> list[SplitReport]:
    """Check every split that ``data_cfg`` defines (``data.<split>_set`` not null), reading with ``workers``
    processes."""
    reports = []
    for split in splits:
        if split_config(data_cfg, split) is None:
            continue
        try:
            dataset = build_split(data_cfg, split, strict=False)
        except (OSError, ValueError, TypeError) as err:
            reports.append(SplitReport(split=split, errors=[f"cannot open split: {err}"]))
            continue
        report = check_split(dataset, split, limit, workers)
        if not dataset.samples and not dataset.unpaired:
            report.errors.append(f"no image/mask pairs found under {dataset.root}; expected layout:\n{dataset.layout}")
        expected = data_cfg.get("num_classes")
        if expected is not None and expected != dataset.num_classes:
            report.errors.append(f"data.num_classes={expected} but the {split} dataset has {dataset.num_classes} "
                                 "classes")
        reports.append(report)
    return reports


def format_report(reports: Sequence[SplitReport], class_names: Sequence[str]) -> str:
    """A human-readable summary: counts, errors (each naming its file) and class pixel frequencies."""
    lines = []
    for r in reports:
        lines.append(f"[{r.split}] images: {r.num_images}  masks: {r.num_masks}  pairs: {r.num_pairs}  "
                     f"checked: {r.num_checked}  errors: {len(r.errors)}")
        lines += [f"  ERROR {e}" for e in r.errors]
        if r.class_pixels is not None and r.num_checked:
            total = int(r.class_pixels.sum()) + r.ignore_pixels
            lines.append(f"  pixel frequencies ({total} px, {100 * r.ignore_pixels / max(total, 1):.2f}% ignored):")
            for k, n in enumerate(r.class_pixels.tolist()):
                name = class_names[k] if k < len(class_names) else str(k)
                flag = "   <- absent" if n == 0 else ""
                lines.append(f"    {k:>3} {name:<24} {100 * n / max(total, 1):8.4f}%{flag}")
    n_errors = sum(len(r.errors) for r in reports)
    lines.append("OK: no problems found" if n_errors == 0 else f"FAILED: {n_errors} problem(s)")
    return "\n".join(lines)
