"""What predict.py writes, and how it reports progress.

Per image ``<name>.png`` (the input's sub-folders mirrored under each folder):

- ``masks/``: class index per pixel (uint8; the data config's class ids),
- ``color/``: the class colours (the dataset's palette),
- ``overlay/``: the image blended with the colours, with a legend naming the classes present,
- ``submission/`` (``submission_ids=true``): the dataset's official ids, e.g. Cityscapes labelIds, which the
  official evaluation script (cityscapesscripts) scores directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from seg_template.errors import ConfigError
from seg_template.options import require
from seg_template.visualize import add_legend, colorize, overlay

log = logging.getLogger("seg_template")

FOLDERS = ("masks", "color", "overlay", "submission")
#: written into every output folder: images in its FOLDERS are outputs, never inputs of a later run
MARKER = ".seg_template_predict"


def foreign_outputs(folder: Path) -> list[str]:
    """The output folders of ``folder`` (``masks/``, ``color/``...) that hold files predict did not write there:
    any file when ``folder`` has no :data:`MARKER` (predict writes it before its first output), and anything
    that is not a folder under those names. Empty when ``folder`` is new, empty, or one of predict's own."""
    folder = Path(folder)
    own = (folder / MARKER).is_file()
    found = []
    for name in FOLDERS:
        path = folder / name
        if not os.path.lexists(path):
            continue
        if not path.is_dir():
            found.append(f"{name} (not a folder)")
        elif not own and next((files for _, _, files in os.walk(path, followlinks=True) if files), None):
            found.append(f"{name}/")
    return found


def _held_entries(folder: Path) -> list[str]:
    """The visible entries of an existing ``folder`` that is neither predict's (marked) nor this Hydra run's own
    folder (which holds the run's ``.hydra/`` and log); ``[]`` for a new, empty, marked or own folder."""
    if not folder.is_dir() or (folder / MARKER).is_file():
        return []
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        own = Path(HydraConfig.get().runtime.output_dir)
        if own.exists() and os.path.samefile(own, folder):
            return []
    return sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir()
                  if not entry.name.startswith("."))


def check_writable(folder: Path, option: str = "output_dir") -> Path:
    """Create ``folder`` and write its :data:`MARKER` into it; a ``ConfigError`` names the folder otherwise,
    so a read-only or mistyped destination fails before any image is processed.

    predict writes only into a folder that is new, empty (hidden files aside), one of its own (marked), or
    this run's own folder (the default): one whose ``masks/``, ``color/``, ``overlay/`` or ``submission/`` hold
    files it did not write (a dataset root, whose ``masks/`` are its ground truth) is refused before anything
    is written there, naming the folder and those sub-folders; so is any other folder that holds something
    (the input folder itself, a folder of photos, ``logs/train/runs``), naming a few of its entries.
    """
    folder = Path(folder)
    foreign = foreign_outputs(folder)
    if foreign:
        raise ConfigError(f"{option}={folder} holds {', '.join(foreign)} with files predict did not write (a "
                          f"dataset's ground truth?); predict writes {', '.join(f + '/' for f in FOLDERS)} there "
                          f"and would replace them. Pass a new or empty folder: {option}=<folder> (or leave "
                          f"{option} out for a new run folder)")
    held = _held_entries(folder)
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ConfigError(f"{option}={folder} already holds {shown}, which predict did not write; it writes "
                          f"{', '.join(f + '/' for f in FOLDERS)} beside them. Pass a new or empty folder: "
                          f"{option}=<folder> (or leave {option} out for a new run folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".write_test_", delete=False) as probe:
            probe.write(f"predict.py writes {', '.join(f + '/' for f in FOLDERS)} here; it never reads them\n")
        os.replace(probe.name, folder / MARKER)
    except OSError as err:
        raise ConfigError(f"{option}={folder} cannot be written: {err.strerror or err} "
                          f"(pass a writable folder: {option}=<folder>)") from err
    return folder


def without_outputs(files: Sequence[tuple[Path, Path]], output_dir: Path,
                    log_dir: Path | None) -> tuple[list[tuple[Path, Path]], int]:
    """``(files, how many were left out)``: the ``(path, output name)`` pairs of ``input_files`` minus the
    images found inside a folder searched for inputs that are predict's outputs — under ``output_dir``'s
    :data:`FOLDERS`, those of any folder holding a :data:`MARKER` (earlier runs), or under ``log_dir``
    (run folders: earlier predictions, validation grids). Without this a second run over a folder that
    holds its ``output_dir`` segments its own masks and overlays. A file named on its own is always kept."""
    output, logs = Path(os.path.abspath(output_dir)), Path(os.path.abspath(log_dir)) if log_dir else None
    marked: dict[Path, bool] = {}
    kept = []
    for path, name in files:
        full = Path(os.path.abspath(path))
        inside = full.parents[:len(name.parts) - 1]  # its folders below the one searched (none: a single file)
        if not any(p == logs or p.name in FOLDERS and (
                p.parent == output or marked.setdefault(p.parent, (p.parent / MARKER).is_file()))
                for p in inside):
            kept.append((path, name))
    return kept, len(files) - len(kept)


def submission_table(dataset_class: type, num_classes: int) -> np.ndarray:
    """``uint8[256]`` lookup: class id -> the dataset's official id for its benchmark submissions, from the
    dataset class's own ``submission_ids`` (Cityscapes: labelIds; ADE20K: 1..150, 0 being "other"). A dataset
    without them, or with one id per class for another class count, raises ``ConfigError``.
    """
    ids = getattr(dataset_class, "submission_ids", None)
    if ids is None:
        raise ConfigError(f"submission_ids=true: {dataset_class.__name__} has no official submission ids "
                          "(Cityscapes and ADE20K do); its masks/ already hold its class ids")
    if len(ids) != num_classes or not all(0 <= int(i) <= 255 for i in ids):
        raise ConfigError(f"submission_ids=true: {dataset_class.__name__}.submission_ids holds {len(ids)} ids "
                          f"for {num_classes} classes (one id in 0..255 per class is needed)")
    table = np.zeros(256, dtype=np.uint8)
    table[:num_classes] = np.asarray(ids, dtype=np.uint8)
    return table


class OutputWriter:
    """Writes the outputs of one image (see the module docstring) under ``root``."""

    def __init__(self, root: Path, palette: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
                 submission: np.ndarray | None = None, legend: bool = True) -> None:
        self.root, self.palette, self.class_names = Path(root), np.asarray(palette, np.uint8), list(class_names)
        self.alpha, self.submission, self.legend = float(require("overlay_alpha", alpha)), submission, legend

    def _save(self, folder: str, name: str, pixels: np.ndarray) -> Path:
        path = self.root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # written beside the target and renamed over it: a kill leaves no half image, and a link at the target
        # is replaced, never written through
        partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        try:
            Image.fromarray(pixels).save(partial)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return path

    def write(self, name: str, rgb: np.ndarray, labels: np.ndarray) -> Path:
        """Write ``labels`` (``uint8[H, W]``) of the image ``rgb`` (``uint8[H, W, 3]``); returns the index
        mask's path. Labels at another size than the image (a resizing transform) are resized back."""
        if labels.shape != rgb.shape[:2]:
            labels = np.asarray(Image.fromarray(labels).resize(rgb.shape[1::-1], Image.NEAREST))
        mask_path = self._save("masks", name, labels)
        self._save("color", name, colorize(labels, self.palette))
        blended = overlay(rgb, labels, self.palette, self.alpha)
        if self.legend:
            blended = add_legend(blended, labels, self.class_names, self.palette)
        self._save("overlay", name, blended)
        if self.submission is not None:
            self._save("submission", name, self.submission[labels])
        return mask_path


class ProgressReport:
    """Images done out of ``total``: a live bar on a terminal (rich), else a log line every ``every_s``
    seconds and one at the end (logs and schedulers cannot show a redrawn bar)."""

    def __init__(self, total: int, every_s: float = 30.0, live: bool | None = None) -> None:
        self.total, self.every_s, self.done = total, every_s, 0
        self.start = self.last = time.monotonic()
        self.live = sys.stdout.isatty() and os.environ.get("TERM") != "dumb" if live is None else live
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress("predict", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self._task = self._bar.add_task("predict", total=total)
            self._bar.start()

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, advance=count)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            log.info("predict: %d/%d images, %s", self.done, self.total, self._rate(now))

    def _rate(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f", ETA {int(left // 60)}:{int(left % 60):02d}" if self.done < self.total and rate > 0 else ""
        return f"{rate:.1f} images/s{eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        log.info("predict: %d/%d images in %.1f s (%s)", self.done, self.total, time.monotonic() - self.start,
                 self._rate(time.monotonic()))
