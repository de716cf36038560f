"""What a run leaves for people to look at, in ``<run>/reports/``: after fit the validation reports and the
training curves, after test the test reports.

- ``confusion_<stage>.png``: the confusion matrix normalised per row (each ground-truth class sums to 1),
  class names on both axes; ``confusion_<stage>.csv``: the raw pixel counts (they sum to the labelled pixels
  evaluated). ``<stage>`` is ``val`` (the last validation of fit) or ``test``.
- ``iou_<stage>.png``: per-class IoU bars with the mean.
- ``curves.png``: train loss, val loss, val/mIoU and the learning rate, read from the CSV logger's
  ``metrics.csv``.

Drawn with matplotlib's object API on the Agg canvas (no display, no global backend switch), imported only
when a report is written. A missing input skips its report with one log line; a failing plot warns and the
run goes on (the weights are worth more than the pictures).
"""

from __future__ import annotations

import csv
import logging
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("seg_template")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` drawn by Agg, without pyplot (no window, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def write_confusion_csv(confmat: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """``confmat[C, C]`` raw counts, rows = ground truth, columns = prediction, with class names."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ground truth \\ prediction", *class_names])
        for name, row in zip(class_names, confmat.tolist(), strict=True):
            writer.writerow([name, *(int(v) for v in row)])


def plot_confusion(confmat: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised heatmap of ``confmat[C, C]``; the figure and font scale with ``C`` so 150 ADE20K names
    stay legible (about 0.13 inch per class), and small matrices get their percentages written in."""
    n = len(class_names)
    totals = confmat.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a class absent from the ground truth: a blank row
        rows = np.where(totals > 0, confmat / np.maximum(totals, 1), np.nan)
    side = max(5.0, 1.5 + 0.13 * n)
    font = 9 if n <= 25 else (7 if n <= 60 else 5)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    # the figure's title, wrapped to its width: over the square axes alone it was cut at both edges
    fig.suptitle(textwrap.fill(title, width=max(30, int(9 * (side + 1.2)))))
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if not math.isnan(rows[i, j]) and rows[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=font - 1,
                            color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the ground-truth class")
    fig.savefig(path, dpi=100 if n > 60 else 120)


def plot_iou(iou: Sequence[float], class_names: Sequence[str], path: Path, title: str) -> None:
    """Horizontal bars of per-class IoU (%) in class order, the mean as a line; NaN (absent) as "n/a"."""
    n = len(class_names)
    values = np.array([np.nan if v is None else 100.0 * v for v in iou], dtype=float)
    font = 9 if n <= 40 else 6
    fig = new_figure(7.0, max(2.5, 0.6 + 0.16 * n))
    ax = fig.add_subplot()
    ax.barh(range(n), np.nan_to_num(values), color="tab:blue")
    for i, value in enumerate(values):
        if math.isnan(value):
            ax.text(1, i, "n/a", va="center", fontsize=font, color="grey")
    if not np.isnan(values).all():
        mean = float(np.nanmean(values))
        ax.axvline(mean, color="tab:red", linestyle="--", label=f"mIoU {mean:.2f}")
        ax.legend(loc="lower right", fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.invert_yaxis()  # class 0 at the top, as in the printed table
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU %")
    ax.set_title(title)
    fig.savefig(path, dpi=110)


def read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """``metrics.csv`` as ``{metric: [(step, epoch, value), ...]}`` (empty cells skipped)."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            step, epoch = _number(row.get("step")), _number(row.get("epoch"))
            for key, cell in row.items():
                value = _number(cell)
                if key in ("step", "epoch") or key is None or value is None:
                    continue
                series.setdefault(key, []).append((step or 0.0, epoch or 0.0, value))
    return series


def _number(cell: Any) -> float | None:
    try:
        return float(cell) if cell not in (None, "") else None
    except ValueError:
        return None


#: the panels of curves.png: (title, x axis, metrics; a metric ending in "*" is a prefix)
CURVE_PANELS = (
    ("train loss", "step", ("train/loss_step", "train/loss_epoch", "train/loss")),
    ("val loss", "epoch", ("val/loss",)),
    ("val mIoU", "epoch", ("val/mIoU",)),
    ("learning rate", "step", ("lr-*",)),
)


def plot_curves(series: dict[str, list[tuple[float, float, float]]], path: Path) -> list[str]:
    """Write ``curves.png`` (2 x 2 panels, :data:`CURVE_PANELS`) and return the panels that had no data."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10.0, 7.0)
    axes = fig.subplots(2, 2).ravel()
    missing = []
    for ax, (title, x_axis, wanted) in zip(axes, CURVE_PANELS, strict=True):
        keys = [k for w in wanted for k in sorted(series)
                if (k.startswith(w[:-1]) if w.endswith("*") else k == w)]
        for key in keys:
            points = series[key]
            xs = [p[0] if x_axis == "step" else p[1] for p in points]
            ys = [p[2] for p in points]
            style = {"marker": "o", "markersize": 3} if x_axis == "epoch" or key.endswith("_epoch") else {}
            ax.plot(xs, ys, label=key, linewidth=1.0 if key.endswith("_step") else 1.5, **style)
        if keys:
            ax.legend(fontsize=8)
        else:
            missing.append(title)
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title)
        ax.set_xlabel(x_axis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 0.5"
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return missing


class Reports(Callback):
    """Writes the reports above into ``dirpath`` on global rank 0 after fit (validation + curves) and after
    test (and after ``trainer.validate``, as eval.py runs it). Needs ``module.last_confmat[stage]`` (``SegmentationModule`` keeps it) for the confusion matrix and
    IoU bars, and a CSV logger for the curves."""

    def __init__(self, dirpath: str | Path, curves: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.curves = bool(curves)
        self._validated = False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # the sanity check's matrix is no report of the model
            self._validated = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and trainer.state.fn == "validate":  # eval.py split=val: no fit end follows
            self._guarded("validation reports", self.write_stage, pl_module, "val", "validation")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self._validated:
            self._guarded("validation reports", self.write_stage, pl_module, "val", "validation (last epoch)")
        else:
            log.info("Reports: no validation ran during fit, so no validation confusion matrix or IoU chart")
        if self.curves:
            self._guarded("training curves", self.write_curves, trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._guarded("test reports", self.write_stage, pl_module, "test", "test")

    def _guarded(self, what: str, write: Any, *args: Any) -> None:
        try:
            write(*args)
        except Exception as err:  # noqa: BLE001 - a plotting failure must not end a finished fit
            log.warning("Reports: could not write the %s (%s: %s)", what, type(err).__name__, err,
                        exc_info=True)

    def write_stage(self, pl_module: pl.LightningModule, stage: str, label: str) -> None:
        """``confusion_<stage>.{png,csv}`` and ``iou_<stage>.png`` from the module's last ``stage`` matrix."""
        from seg_template.metrics import segmentation_scores

        confmat = getattr(pl_module, "last_confmat", {}).get(stage)
        if confmat is None:
            log.info("Reports: the module kept no %s confusion matrix (it needs module.last_confmat)", stage)
            return
        names = list(getattr(pl_module, "class_names", ())) or [str(i) for i in range(confmat.shape[0])]
        counts = confmat.long().numpy()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        write_confusion_csv(counts, names, self.dirpath / f"confusion_{stage}.csv")
        scores = segmentation_scores(confmat)
        plot_confusion(counts, names, self.dirpath / f"confusion_{stage}.png",
                       f"{label}: confusion, row-normalised ({int(counts.sum()):,} pixels)")
        plot_iou(scores["IoU"], names, self.dirpath / f"iou_{stage}.png", f"{label}: IoU per class")

    def write_curves(self, trainer: pl.Trainer) -> None:
        """``curves.png`` from the CSV logger's ``metrics.csv`` (flushed first)."""
        from pytorch_lightning.loggers import CSVLogger

        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        if not csv_loggers:
            log.info("Reports: no CSV logger (logger=csv), so no training curves")
            return
        csv_loggers[0].save()
        path = Path(csv_loggers[0].log_dir) / "metrics.csv"
        if not path.is_file():
            log.info("Reports: %s does not exist, so no training curves", path)
            return
        series = read_metrics_csv(path)
        if not series:
            log.info("Reports: %s holds no metrics yet, so no training curves", path)
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        missing = plot_curves(series, self.dirpath / "curves.png")
        if missing:
            log.info("Reports: curves.png has no %s (not in %s)", ", ".join(missing), path.name)
