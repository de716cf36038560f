"""IoU maths on a confusion matrix, and the per-class table printed after fit / test.

``confmat[i, j]`` counts pixels of ground-truth class ``i`` predicted as ``j`` (torchmetrics' layout,
ignored pixels already dropped). As in MMSegmentation, a class absent from both the ground truth and the
predictions has an undefined IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def iou_per_class(confmat: Tensor) -> Tensor:
    """IoU ``float64[C]`` = TP / (TP + FP + FN); NaN where the class is in neither GT nor prediction."""
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {tuple(confmat.shape)}")
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def segmentation_scores(confmat: Tensor) -> dict[str, float | list[float]]:
    """``{"mIoU", "aAcc", "IoU": [per class], "Acc": [per-class recall]}`` from ``confmat[C, C]``.

    ``aAcc`` is the fraction of labelled pixels predicted correctly; with no labelled pixel at all every
    score is NaN (nothing was measured, and 0 would be a lie).
    """
    cm = confmat.double()
    iou = iou_per_class(cm)
    present = ~iou.isnan()
    total = cm.sum()
    gt = cm.sum(1)
    acc = torch.where(gt > 0, cm.diagonal() / gt.clamp_min(1), torch.full_like(gt, float("nan")))
    return {
        "mIoU": float(iou[present].mean()) if present.any() else math.nan,
        "aAcc": float(cm.diagonal().sum() / total) if total > 0 else math.nan,
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


def format_table(class_names: Sequence[str], columns: Mapping[str, Sequence[float]], title: str = "") -> str:
    """Render per-class scores (one column per entry of ``columns``, values in [0, 1]) as a rich table;
    returns the text so callers can print or log it. NaN shows as ``-`` (class absent)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("class")
    for name in columns:
        table.add_column(name, justify="right")
    for i, cls in enumerate(class_names):
        cells = [("-" if math.isnan(v[i]) else f"{100 * v[i]:.2f}") for v in columns.values()]
        table.add_row(cls, *cells)
    console = Console(width=100, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get()
