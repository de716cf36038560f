"""Pre-flight: read part (or all) of each split before fitting, so that bad data stops a run in seconds
rather than when its batch comes up hours in.

``data.preflight``:

- ``sample`` (default): a few samples spread over each split: files readable and paired, image and mask of
  one size, labels in ``[0, C)`` or the ignore index. If no sampled mask has a labelled pixel, the scan goes
  on until one does: a split whose masks are all ignore stops the run (nothing to learn, mIoU nan).
- ``full``: every sample, read by ``data.num_workers`` processes (the dataset doctor's per-sample check).
- ``none``: skip.

Every problem raises ``DataError`` naming the split, the file and the cause: the reader's refusals too (lossy
masks, multi-page files, files over the pixel limit). An ignore index that is also a class id occurring in
the masks read is warned about once: that class would silently vanish from the loss and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from seg_template.data.base import SegmentationDataset
from seg_template.data.sample_check import ignored_class, scan
from seg_template.errors import DataError

log = logging.getLogger(__name__)

PREFLIGHT_MODES = ("sample", "full", "none")
#: samples read per split in ``sample`` mode (first, last and evenly spaced between)
SAMPLE_SIZE = 8
#: problems listed in the error message (the dataset doctor lists them all)
SHOWN = 10


def sample_indices(length: int, count: int = SAMPLE_SIZE) -> list[int]:
    """Up to ``count`` distinct indices spread evenly over ``[0, length)``, first and last included."""
    if length <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, length - 1, min(count, length)).round()})


def _fail(split: str, dataset: SegmentationDataset, errors: list[str], checked: int, mode: str) -> DataError:
    shown = "\n".join(f"  - {e}" for e in errors[:SHOWN])
    more = f"\n  ... and {len(errors) - SHOWN} more" if len(errors) > SHOWN else ""
    scope = "every sample" if mode == "full" else f"{checked} of its {len(dataset)} samples"
    return DataError(f"data.{split}_set ({type(dataset).__name__}): {len(errors)} problem(s) found by the "
                     f"pre-flight check of {scope}:\n{shown}{more}\n"
                     "Fix the files (scripts/check_dataset.py with the same data overrides lists every problem), "
                     "or skip this check with data.preflight=none.")


@dataclass
class SplitScan:
    """What the pre-flight read of one split: samples ``checked``, and the masks / pixels holding the ignore
    index (only of interest when it is also a class id)."""

    checked: int = 0
    ignore_masks: int = 0
    ignore_pixels: int = 0


def preflight_split(dataset: SegmentationDataset, split: str, mode: str = "sample", workers: int = 0) -> int:
    """Check ``dataset`` (split ``split``) as ``mode`` says; return the number of samples read.

    Raises ``DataError`` on any unreadable, refused, mismatched or out-of-range sample, and when no mask read
    has a labelled pixel (in ``sample`` mode the reading then continues through the split until one does).
    """
    return scan_split(dataset, split, mode, workers).checked


def scan_split(dataset: SegmentationDataset, split: str, mode: str = "sample", workers: int = 0) -> SplitScan:
    """:func:`preflight_split`, returning what it read (:class:`SplitScan`)."""
    if mode not in PREFLIGHT_MODES:
        raise ValueError(f"preflight mode must be one of {PREFLIGHT_MODES}, got {mode!r}")
    found = SplitScan()
    if mode == "none":
        return found
    length = len(dataset)
    indices = list(range(length)) if mode == "full" else sample_indices(length)
    errors: list[str] = []
    labelled = 0
    for check in scan(dataset, indices, workers if mode == "full" else 0):
        found.checked += 1
        errors += check.errors
        labelled += int(check.class_pixels.sum())
        found.ignore_masks += check.ignore_pixels > 0
        found.ignore_pixels += check.ignore_pixels
    if not errors and not labelled and found.checked < length:
        # an unlucky sample, or a split that really has nothing labelled: read on until a labelled pixel
        seen = set(indices)
        for check in scan(dataset, [i for i in range(length) if i not in seen], workers):
            found.checked += 1
            errors += check.errors
            labelled += int(check.class_pixels.sum())
            found.ignore_masks += check.ignore_pixels > 0
            found.ignore_pixels += check.ignore_pixels
            if errors or labelled:
                break
    checked = found.checked
    if errors:
        raise _fail(split, dataset, errors, checked, mode)
    if not labelled:
        raise DataError(f"data.{split}_set ({type(dataset).__name__}): none of its {length} masks has a labelled "
                        f"pixel: every pixel is the ignore index {dataset.ignore_index}, so there is nothing to "
                        f"learn or score (mIoU would be nan). Check how the masks map to classes "
                        "(data.ignore_index, reduce_zero_label, mask_format, label_type).")
    return found


def preflight(datasets: Mapping[str, SegmentationDataset], mode: str = "sample", workers: int = 0) -> None:
    """``preflight_split`` for each ``split -> dataset``; logs one line with what was read."""
    if mode == "none":
        return
    start = time.perf_counter()
    scans = {split: scan_split(dataset, split, mode, workers) for split, dataset in datasets.items()}
    if scans:
        first = next(iter(datasets.values()))
        warning = ignored_class(first, sum(s.ignore_masks for s in scans.values()),
                                sum(s.ignore_pixels for s in scans.values()), sum(s.checked for s in scans.values()))
        if warning:
            log.warning(warning)  # once per run, over every split read: the DataModule passes one ignore index
    read = ", ".join(f"{split} {s.checked}/{len(datasets[split])}" for split, s in scans.items())
    log.info("Data pre-flight (%s) passed: read %s samples in %.1f s", mode, read, time.perf_counter() - start)
