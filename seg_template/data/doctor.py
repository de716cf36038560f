"""The dataset doctor: walk every split of a data config and report what is wrong with the files.

Reports per split: image / mask counts, unpaired files, unreadable files, image/mask size mismatches,
label values outside ``[0, C)`` ∪ {ignore} and per-class pixel frequencies. Every error names its file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

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


def check_split(dataset: PairedFilesDataset, split: str, limit: int | None = None) -> SplitReport:
    """Read every (image, mask) pair of ``dataset`` (the first ``limit`` if given) and collect problems."""
    report = SplitReport(split=split, class_pixels=np.zeros(dataset.num_classes, dtype=np.int64))
    report.errors += dataset.unpaired
    report.num_pairs = len(dataset.samples)
    report.num_images = report.num_pairs + sum(u.startswith("image without mask") for u in dataset.unpaired)
    report.num_masks = report.num_pairs + sum(u.startswith("mask without image") for u in dataset.unpaired)
    samples = dataset.samples if limit is None else dataset.samples[:limit]
    for image_path, mask_path in samples:
        report.num_checked += 1
        image = mask = None
        try:
            image = read_image(image_path)
        except (OSError, ValueError) as err:
            report.errors.append(f"unreadable image: {err}")
        try:
            mask = dataset.read_mask(mask_path)
        except (OSError, ValueError) as err:
            report.errors.append(f"unreadable mask: {err}")
        if mask is None:
            continue
        if image is not None and image.shape[:2] != mask.shape[:2]:
            report.errors.append(f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH), "
                                 f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}")
        per_class, ignored, bad = count_labels(mask, dataset.num_classes, dataset.ignore_index)
        report.class_pixels += per_class
        report.ignore_pixels += ignored
        if bad:
            report.errors.append(f"label value(s) {bad[:10]} outside [0, {dataset.num_classes}) and not the ignore "
                                 f"index {dataset.ignore_index}: {mask_path}")
    return report


def check_dataset(data_cfg: DictConfig, splits: Sequence[str] = SPLITS, limit: int | None = None) -> list[SplitReport]:
    """Check every split that ``data_cfg`` defines (``data.<split>_set`` not null)."""
    reports = []
    for split in splits:
        if split_config(data_cfg, split) is None:
            continue
        try:
            dataset = build_split(data_cfg, split, strict=False)
        except (OSError, ValueError, TypeError) as err:
            reports.append(SplitReport(split=split, errors=[f"cannot open split: {err}"]))
            continue
        report = check_split(dataset, split, limit)
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
