"""What a user watches during a run: a live progress bar on a terminal, plain log lines everywhere else.

Redirected to a file or run under a scheduler (SLURM, nohup), a live bar writes redraw sequences nobody can
read. :func:`progress_bar` picks Lightning's rich bar on a terminal and :class:`PlainProgressBar` otherwise;
:class:`EpochLog` writes one line per epoch to the run's log (``train.log``) in both cases.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ProgressBar, RichProgressBar
from torch import Tensor

from seg_template.callbacks.cadence import at_logging_step

log = logging.getLogger("seg_template")


def progress_bar(plain_every_s: float = 30.0) -> ProgressBar:
    """A :class:`RichBar` when stdout is a terminal, else a :class:`PlainProgressBar` that logs a line every
    ``plain_every_s`` seconds of training."""
    if sys.stdout.isatty():
        return RichBar()
    return PlainProgressBar(every_s=plain_every_s)


def loss_at_logging_step(trainer: pl.Trainer, outputs: Any) -> float | None:
    """The training step's loss (``outputs`` of ``on_train_batch_end``) at a logging step
    (``trainer.log_every_n_steps``), else None. Reading a GPU tensor on the host waits for the device, so the
    bars show the loss of the latest logging step instead of reading it every step (the module logs
    ``train/loss`` without ``prog_bar`` for the same reason)."""
    if not at_logging_step(trainer):
        return None
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return float(loss.detach()) if isinstance(loss, Tensor) and loss.numel() == 1 else None


class RichBar(RichProgressBar):
    """Lightning's rich bar, showing ``train/loss`` as of the latest logging step (:func:`loss_at_logging_step`)."""

    def __init__(self) -> None:
        super().__init__()
        self._loss: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = loss_at_logging_step(trainer, outputs)
        self._loss = self._loss if loss is None else loss
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if self._loss is not None:
            items["train/loss"] = self._loss
        return items


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _scalar(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class PlainProgressBar(ProgressBar):
    """A progress bar for logs: a line every ``every_s`` seconds within a training epoch (batch i/n, rate,
    the loss of the latest logging step). Lines go through the ``seg_template`` logger, so they also land in the run's log."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = float(every_s)
        self._enabled = True
        self._epoch_start = self._last_line = 0.0
        self._loss: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a fit resumed mid-epoch starts without on_train_epoch_start (Lightning skips it)
        self._epoch_start = self._last_line = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._last_line = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if trainer.global_rank != 0:
            return
        loss = loss_at_logging_step(trainer, outputs)
        self._loss = self._loss if loss is None else loss
        if not self._enabled or now - self._last_line < self.every_s:
            return
        self._last_line = now
        done, total = batch_idx + 1, self.total_train_batches
        rate = done / max(now - self._epoch_start, 1e-9)
        of = f"/{int(total)}" if isinstance(total, int) or math.isfinite(total) else ""
        loss_text = f", loss {self._loss:.4f}" if self._loss is not None else ""
        log.info("%s: batch %d%s, %.1f it/s%s", epoch_label(trainer), done, of, rate, loss_text)


def epoch_label(trainer: pl.Trainer) -> str:
    """``epoch k/last``: epochs are counted from 0 everywhere, as Lightning's progress bar, ``metrics.csv``, the
    tables' ``(ep k)``, ``images/val_epoch_<k>.png`` and the checkpoints do (``epoch 11/14``: the 12th of 15)."""
    max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    return f"epoch {trainer.current_epoch}" + (f"/{max_epochs - 1}" if max_epochs else "")


class EpochLog(Callback):
    """One log line per finished training epoch: epoch k/last (from 0), train loss, val/mIoU when this epoch
    validated (``check_val_every_n_epoch``), epoch time and ETA."""

    def __init__(self) -> None:
        self._fit_start = self._epoch_start = 0.0
        self._epochs_done = 0
        self._validated = False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the epoch clock too: a fit resumed mid-epoch starts without on_train_epoch_start (Lightning skips it)
        self._fit_start = self._epoch_start = time.monotonic()
        self._epochs_done = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()
        self._validated = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # runs after this epoch's validation (Lightning validates before the training epoch ends)
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        self._epochs_done += 1
        now = time.monotonic()
        metrics = trainer.callback_metrics
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [epoch_label(trainer)]
        loss = _scalar(metrics, "train/loss_epoch")
        if loss is not None:
            parts.append(f"train/loss {loss:.4f}")
        miou = _scalar(metrics, "val/mIoU") if self._validated else None  # not last epoch's value again
        if miou is not None:
            parts.append(f"val/mIoU {100 * miou:.2f}%")
        self._validated = False
        parts.append(f"{_fmt_duration(now - self._epoch_start)} / epoch")
        remaining = (max_epochs or 0) - trainer.current_epoch - 1
        if remaining > 0:
            per_epoch = (now - self._fit_start) / self._epochs_done
            parts.append(f"ETA {_fmt_duration(per_epoch * remaining)}")
        log.info(" | ".join(parts))
