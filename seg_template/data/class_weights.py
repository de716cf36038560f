"""Class weights from pixel statistics of a training split, and files that ``loss=wce`` can load.

Three published schemes (``counts`` are pixels per class over the split, ignore pixels excluded):

- ``inverse``: ``N / (C_present * n_c)`` — inverse frequency scaled so the weighted pixel total equals
  ``N`` (scikit-learn's "balanced").
- ``median``: median frequency balancing (Eigen & Fergus, ICCV 2015): ``freq_c = n_c / P_c`` with ``P_c``
  the pixel total of the images in which ``c`` appears; ``w_c = median(freq) / freq_c``.
- ``enet``: ENet (Paszke et al., 2016): ``w_c = 1 / ln(1.02 + p_c)`` with ``p_c = n_c / N``.

A class absent from the split gets weight 0 under ``inverse`` and ``median`` (its frequency is 0, so the
formula has no value) and the formula's ceiling ``1 / ln(1.02)`` under ``enet``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from seg_template.data.base import SegmentationDataset
from seg_template.data.io import check_labels
from seg_template.data.paired import PairedFilesDataset
from seg_template.errors import ConfigError, DataError

METHODS = ("inverse", "median", "enet")


def _masks(dataset: SegmentationDataset, limit: int | None) -> Iterator[tuple[np.ndarray, str]]:
    """``(mask, where)`` pairs: file-backed datasets read only their mask files, others generate samples."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, PairedFilesDataset):
        for _, mask_path in dataset.samples[:count]:
            yield dataset.read_mask(mask_path), str(mask_path)
    else:
        for index in range(count):
            _, mask, name = dataset.load(index)
            yield mask, f"{type(dataset).__name__}[{index}] ({name})"


def pixel_statistics(dataset: SegmentationDataset, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(counts int64[C], present_pixels int64[C])`` over the dataset's masks.

    ``counts[c]``: pixels of class ``c``; ``present_pixels[c]``: valid pixels of the images containing ``c``.
    A label out of range raises naming the value and the file (or sample).
    """
    num_classes = dataset.num_classes
    counts = np.zeros(num_classes, dtype=np.int64)
    present = np.zeros(num_classes, dtype=np.int64)
    for raw, where in _masks(dataset, limit):
        mask = check_labels(raw, num_classes, dataset.ignore_index, where)
        per_image = np.bincount(mask[mask != dataset.ignore_index].ravel(), minlength=num_classes)[:num_classes]
        counts += per_image
        present[per_image > 0] += int(per_image.sum())
    return counts, present


def class_weights(counts: np.ndarray, present_pixels: np.ndarray | None = None, method: str = "median") -> np.ndarray:
    """Weights ``float64[C]`` from ``counts[C]`` (and ``present_pixels[C]`` for ``median``)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0:
        raise DataError(f"need a 1-D array of pixel counts with at least one labelled pixel, got {counts.tolist()}")
    seen = counts > 0
    weights = np.zeros_like(counts)
    if method == "inverse":
        weights[seen] = counts.sum() / (seen.sum() * counts[seen])
    elif method == "median":
        if present_pixels is None:
            raise ValueError("median frequency weights need present_pixels (pixels of images containing each class)")
        freq = counts[seen] / np.asarray(present_pixels, dtype=np.float64)[seen]
        weights[seen] = np.median(freq) / freq
    elif method == "enet":
        weights = 1.0 / np.log(1.02 + counts / counts.sum())
    else:
        raise ConfigError(f"unknown class-weight method {method!r}; choose one of {METHODS}")
    return weights


def save_weights(weights: Sequence[float], path: Path | str, class_names: Sequence[str] = ()) -> Path:
    """Write weights as ``.json`` (a list), ``.npy`` or ``.txt`` (one per line, ``# name`` comments)."""
    path = Path(path)
    values = [float(w) for w in weights]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(values) + "\n")
    elif path.suffix == ".npy":
        np.save(path, np.asarray(values, dtype=np.float32))
    elif path.suffix == ".txt":
        names = (list(class_names) + [""] * len(values))[: len(values)]
        lines = (f"{w:.6f}  # {k} {n}".rstrip() + "\n" for k, (w, n) in enumerate(zip(values, names, strict=True)))
        path.write_text("".join(lines))
    else:
        raise ConfigError(f"class weights file {path}: unsupported suffix {path.suffix!r} (use .json, .npy or .txt)")
    return path
