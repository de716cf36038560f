"""The dataset doctor: walk every split of a data config and report what is wrong with the files.

Reports per split: image / mask counts, unpaired files and dangling symlinks, unreadable or refused files
(lossy masks, multi-page files, files over the pixel limit), image/mask size mismatches (saying when an EXIF
orientation explains one), label values outside ``[0, C)`` ∪ {ignore} and per-class pixel frequencies. Every
error names its file. Warnings are likely mistakes training would not stop on (the ignore index used by a
class; repeated class names); notes say what the reader does to files that users may not expect (EXIF
orientation applied, 16-bit samples scaled, a byte-order mark dropped, files with extensions that are not read
and folder links not followed left out). The doctor never says "no problems"
while there is a note: a user should know.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from seg_template.data.config import SPLITS, build_split, split_config
from seg_template.data.paired import PairedFilesDataset
from seg_template.data.sample_check import NOTE_KINDS, count_labels, ignored_class, scan

__all__ = ["SplitReport", "check_config", "check_dataset", "check_split", "count_labels", "format_report"]

#: what a note kind means, printed above its files
NOTE_HEADLINES = {
    "orientation": "image(s) with an EXIF orientation, applied as image viewers show them; each mask must match "
                   "the displayed (turned) image",
    "mask orientation": "mask(s) with an EXIF orientation, applied to the mask as well",
    "bit depth": "image(s) with more than 8 bits per sample, scaled to 8 bits by their real range "
                 "(round(v * 255 / 65535) for 16-bit)",
    "lossy mask": "mask(s) in a lossy format, accepted by lossy_masks=true: their labels may be altered along edges",
    "list file": "split list file(s) corrected while reading",
    "left out": "file(s) and folder link(s) the listing left out",
}
#: note kinds whose details are whole sentences, printed one per line
SENTENCE_NOTES = ("list file", "left out")
#: files listed under one note (the count says how many there are)
NOTE_FILES_SHOWN = 5


@dataclass
class SplitReport:
    """What the doctor found in one split; ``class_pixels[k]`` counts pixels of class ``k``; ``notes`` maps a
    kind (``NOTE_KINDS``) to the files it concerns."""

    split: str
    num_images: int = 0
    num_masks: int = 0
    num_pairs: int = 0
    num_checked: int = 0
    errors: list[str] = field(default_factory=list)
    class_pixels: np.ndarray | None = None
    ignore_pixels: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)


def check_split(dataset: PairedFilesDataset, split: str, limit: int | None = None, workers: int = 0) -> SplitReport:
    """Read every (image, mask) pair of ``dataset`` (the first ``limit`` if given) and collect problems;
    ``workers`` processes read in parallel."""
    report = SplitReport(split=split, class_pixels=np.zeros(dataset.num_classes, dtype=np.int64))
    report.errors += dataset.unpaired + dataset.refused
    if dataset.notes:
        report.notes["list file"] = list(dataset.notes)
    if getattr(dataset, "left_out", None):
        report.notes["left out"] = list(dataset.left_out)
    report.num_pairs = len(dataset.samples)
    refused = len(dataset.refused)  # pairs left out for their lossy masks
    report.num_images = report.num_pairs + refused + sum(u.startswith("image without mask") for u in dataset.unpaired)
    report.num_masks = report.num_pairs + refused + sum(u.startswith("mask without image") for u in dataset.unpaired)
    count = report.num_pairs if limit is None else min(limit, report.num_pairs)
    masks_ignored = 0
    for check in scan(dataset, range(count), workers):
        report.num_checked += 1
        report.errors += check.errors
        report.class_pixels += check.class_pixels
        report.ignore_pixels += check.ignore_pixels
        masks_ignored += check.ignore_pixels > 0
        for kind, detail in check.notes:
            report.notes.setdefault(kind, []).append(detail)
    warning = ignored_class(dataset, masks_ignored, report.ignore_pixels, report.num_checked)
    if warning:
        report.warnings.append(warning)
    return report


def check_config(data_cfg: DictConfig) -> list[str]:
    """Problems of the data config itself: repeated class names, a class-name count other than
    ``data.num_classes``."""
    names = data_cfg.get("class_names")
    if not names:
        return []
    names = [str(n) for n in names]
    problems = []
    repeated = {name: count for name, count in Counter(names).items() if count > 1}
    for name, count in repeated.items():
        positions = [i for i, n in enumerate(names) if n == name]
        problems.append(f"data.class_names: {name!r} is given {count} times (classes {positions}); classes of one "
                        f"name share one metrics column (val/IoU/{name}) and one legend entry: name each class "
                        "once")
    expected = data_cfg.get("num_classes")
    if isinstance(expected, int) and expected != len(names):
        problems.append(f"data.class_names has {len(names)} names but data.num_classes is {expected}")
    return problems


def check_dataset(data_cfg: DictConfig, splits: Sequence[str] = SPLITS, limit: int | None = None,
                  workers: int = 0) -> list[SplitReport]:
    """Check every split that ``data_cfg`` defines (``data.<split>_set`` not null), reading with ``workers``
    processes. Problems of the config itself come first, as a report of split ``config``."""
    config_problems = check_config(data_cfg)
    reports = [SplitReport(split="config", errors=config_problems)] if config_problems else []
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


def _note_lines(notes: dict[str, list[str]]) -> list[str]:
    lines = []
    for kind in sorted(notes, key=lambda k: NOTE_KINDS.index(k) if k in NOTE_KINDS else len(NOTE_KINDS)):
        details = notes[kind]
        if kind in SENTENCE_NOTES:
            lines += [f"  NOTE {d}" for d in details]
            continue
        lines.append(f"  NOTE {len(details)} {NOTE_HEADLINES.get(kind, kind)}:")
        lines += [f"         {d}" for d in details[:NOTE_FILES_SHOWN]]
        if len(details) > NOTE_FILES_SHOWN:
            lines.append(f"         ... and {len(details) - NOTE_FILES_SHOWN} more")
    return lines


def format_report(reports: Sequence[SplitReport], class_names: Sequence[str]) -> str:
    """A human-readable summary: counts, errors (each naming its file), warnings, notes and class pixel
    frequencies; the last line says FAILED (errors or warnings), OK with notes, or OK."""
    lines = []
    for r in reports:
        if r.split == "config":
            lines.append(f"[config] errors: {len(r.errors)}")
        else:
            lines.append(f"[{r.split}] images: {r.num_images}  masks: {r.num_masks}  pairs: {r.num_pairs}  "
                         f"checked: {r.num_checked}  errors: {len(r.errors)}")
        lines += [f"  ERROR {e}" for e in r.errors]
        lines += [f"  WARNING {w}" for w in r.warnings]
        lines += _note_lines(r.notes)
        if r.class_pixels is not None and r.num_checked:
            total = int(r.class_pixels.sum()) + r.ignore_pixels
            lines.append(f"  pixel frequencies ({total} px, {100 * r.ignore_pixels / max(total, 1):.2f}% ignored):")
            for k, n in enumerate(r.class_pixels.tolist()):
                name = class_names[k] if k < len(class_names) else str(k)
                flag = "   <- absent" if n == 0 else ""
                lines.append(f"    {k:>3} {name:<24} {100 * n / max(total, 1):8.4f}%{flag}")
    n_errors = sum(len(r.errors) for r in reports)
    n_warnings = sum(len(r.warnings) for r in reports)
    n_notes = sum(len(d) for r in reports for d in r.notes.values())
    if n_errors or n_warnings:
        lines.append(f"FAILED: {n_errors + n_warnings} problem(s) ({n_errors} error(s), {n_warnings} warning(s))")
    elif n_notes:
        lines.append(f"OK: nothing to fix, but read the NOTEs above ({n_notes} of them)")
    else:
        lines.append("OK: no problems found")
    return "\n".join(lines)
