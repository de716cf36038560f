"""Stop a diverged training run early, with one message, before it saves or tests non-finite weights.

:class:`NaNGuard` watches every training step without waiting for the device: a non-finite loss, or (in full
precision) non-finite gradients behind a finite loss, makes the step *bad*. The gradients of a bad step are
dropped on the device, so a stray bad batch cannot poison the weights; the verdicts are read at logging steps,
epoch ends and before every checkpoint, and after ``patience`` bad steps in a row training stops by raising
:class:`~seg_template.errors.TrainingDiverged`, naming the epoch and step and what to change. Raising (rather
than setting ``trainer.should_stop``) is deliberate: the run then exits non-zero, and the test phase does not
run on diverged weights.

The checkpoint callback (:mod:`seg_template.callbacks.checkpoint`) refuses to write non-finite weights, which
covers what the guard cannot: batch-norm statistics poisoned by a non-finite forward pass.

The guard's saved state (its streak) is checked with the other callbacks' before a resume restores anything
(:meth:`NaNGuard.state_problem`, called by ``check_callback_states`` in ``callbacks/checkpoint_io.py``): a
checkpoint whose streak is not a whole number >= 0 is refused naming the file and the key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from seg_template.callbacks.cadence import at_logging_step
from seg_template.errors import CheckpointError, TrainingDiverged
from seg_template.options import require

log = logging.getLogger(__name__)


#: a divergence that begins within this many optimiser steps of resuming from a file blames the file first
RESUME_WINDOW = 10


def resumed_from(trainer: pl.Trainer) -> tuple[str, int, tuple[str, ...]] | None:
    """``(checkpoint file, step, changed optimiser / scheduler options)`` this fit resumed with, as the module
    recorded it when training started (``SegmentationModule.resumed_from``); None for a fresh fit or another
    LightningModule."""
    module = getattr(trainer, "lightning_module", None)
    point = getattr(module, "resumed_from", None)
    return point if isinstance(point, tuple) else None


def resume_suspect(trainer: pl.Trainer, later: int | None = None) -> str | None:
    """The likely cause when a resumed fit goes non-finite (``later`` steps after resuming, if known): the
    optimiser or scheduler options changed on resuming, else the file itself; None for a fresh fit."""
    resumed = resumed_from(trainer)
    if resumed is None:
        return None
    path, start, changes = resumed
    when = f" and diverged {later} step(s) later" if later is not None else ""
    if changes:
        return (f"this fit resumed from ckpt_path={path} at step {start} with changed options ({'; '.join(changes)})"
                f"{when}, so those changes are the likely cause: resume with the values that file was trained with")
    return (f"this fit resumed from ckpt_path={path} at step {start}{when}, so that file is the likely cause: resume "
            "from an earlier checkpoint of that run (or start anew from sound weights)")


def lr_advice(trainer: pl.Trainer) -> str:
    """A lower learning rate (the configured one is quoted) and, when training in reduced precision, 32-bit."""
    lr = None
    if trainer.optimizers:
        lr = trainer.optimizers[0].defaults.get("lr")
    advice = "lower optimizer.lr" + (f" (now {lr:g})" if isinstance(lr, (int, float)) else "")
    precision = str(trainer.precision)
    if not precision.startswith(("32", "64")):
        advice += f", or train in 32-bit precision (trainer.precision=32-true instead of {precision})"
    return advice


def divergence_advice(trainer: pl.Trainer, began_at: int | None = None) -> str:
    """What to try (:func:`lr_advice`). When the divergence began (``began_at``, default the current step)
    within ``RESUME_WINDOW`` steps of resuming from a file, the resume comes first (:func:`resume_suspect`):
    weights that cannot train a few steps were broken before this run touched them (scaled up, edited,
    damaged), unless the options changed on resuming."""
    resumed = resumed_from(trainer)
    step = trainer.global_step if began_at is None else began_at
    if resumed is not None and 0 <= step - resumed[1] <= RESUME_WINDOW:
        return f"{resume_suspect(trainer, step - resumed[1])}; else {lr_advice(trainer)}"
    return lr_advice(trainer)


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding NaN or inf."""
    tensors = {name: t for name, t in module.state_dict().items() if isinstance(t, Tensor) and t.is_floating_point()}
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).tolist()  # one device sync
    return [name for name, ok in zip(tensors, finite, strict=True) if not ok]


def _finite(tensors: list[Tensor]) -> Tensor:
    """A 0-dim bool tensor on their device: whether every element of ``tensors`` is finite (no host read). The
    max-abs norm cannot overflow and is NaN / inf exactly when some element is (``get_total_norm``, torch >= 2.6,
    does it with foreach kernels)."""
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if total_norm is not None:
        peak = total_norm(tensors, norm_type=float("inf"))
    else:  # pragma: no cover - older torch
        peak = torch.stack([t.detach().abs().amax() for t in tensors if t.numel()]).amax()
    return torch.isfinite(peak)


class NaNGuard(pl.Callback):
    """Drop the gradients of steps that are non-finite; raise after ``patience`` bad steps in a row.

    A step is *bad* when its loss is NaN / inf or (``check_gradients``, full precision) its gradients are. The
    guard never reads a device tensor during a step (each host read waits for the GPU): it notes each step's
    verdict on the device and reads them all at once at logging steps (``trainer.log_every_n_steps``), at each
    epoch's end, before validation and before any checkpoint is written, then warns about bad steps or raises
    :class:`~seg_template.errors.TrainingDiverged` (a streak may thus be reported a few steps after it began).

    Non-finite gradients are zeroed on the device before the optimiser step, so a stray bad batch cannot poison
    the weights. That is not a skipped step: the optimiser still applies its momentum and weight decay with a
    zero gradient. A step whose loss is NaN but whose gradients are finite (masked pixels) keeps its update and
    counts as bad. Under 16-bit mixed precision the gradient scaler already skips steps with non-finite
    gradients (a few are normal while it calibrates), so there only the loss is watched. Under DDP the
    gradients are the same on every rank after their all-reduce, so each rank drops the same ones; the
    verdicts of all ranks are reduced (one collective per check) so that all of them stop together.
    """

    def __init__(self, patience: int = 3, check_gradients: bool = True) -> None:
        super().__init__()
        require("callbacks.nan_guard.patience", patience)
        require("callbacks.nan_guard.check_gradients", check_gradients)  # bool("false ") would be True
        self.patience, self.check_gradients = int(patience), bool(check_gradients)
        self.streak = 0  # bad steps in a row, as of the last check
        self.first_bad = ""  # where the current streak began
        self.first_bad_step = 0
        self._grads_ok: Tensor | None = None  # this step's gradient verdict, on the device
        # steps since the last check: ([loss bad, gradients bad, loss value] on the device, (epoch, step, batch))
        self._pending: list[tuple[Tensor, tuple[int, int, int]]] = []
        self._trainer: pl.Trainer | None = None

    @staticmethod
    def _scaled(trainer: pl.Trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._pending, self._grads_ok = trainer, [], None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Optimizer) -> None:
        if not self.check_gradients or self._scaled(trainer) or not pl_module.automatic_optimization:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        ok = _finite(grads)
        drop = ~ok
        for grad in grads:  # all of a bad step's gradients become 0, on the device: no host decision
            grad.masked_fill_(drop, 0)
        self._grads_ok = ok if self._grads_ok is None else self._grads_ok & ok

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        grads_ok, self._grads_ok = self._grads_ok, None
        if isinstance(loss, Tensor):
            value = loss.detach().float().mean()
            loss_bad = ~torch.isfinite(value)
        elif grads_ok is not None:
            value = loss_bad = torch.zeros((), device=grads_ok.device)
        else:
            return
        grads_bad = torch.zeros_like(loss_bad) if grads_ok is None else ~grads_ok
        verdict = torch.stack((loss_bad.float(), grads_bad.float(), value))
        self._pending.append((verdict, (trainer.current_epoch, trainer.global_step, batch_idx)))
        if at_logging_step(trainer):
            self.check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)  # a streak is reported before its weights are validated

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Read the verdicts of the steps since the last check (one host read; under DDP, one collective first):
        warn about each bad step, raise ``TrainingDiverged`` at the ``patience``-th in a row."""
        if not self._pending:
            return
        verdicts = torch.stack([v for v, _ in self._pending])  # [steps, 3]
        places = [p for _, p in self._pending]
        self._pending = []
        if trainer.world_size > 1:  # every rank must take the same decision, or the others wait forever
            verdicts = trainer.strategy.reduce(verdicts, reduce_op="max")
        for (loss_bad, grads_bad, value), (epoch, step, batch_idx) in zip(verdicts.tolist(), places, strict=True):
            if not (loss_bad or grads_bad):
                self.streak = 0
                continue
            self.streak += 1
            what = f"loss {value}" if loss_bad else "non-finite gradients (finite loss)"
            where = f"epoch {epoch}, step {step} (batch {batch_idx})"
            if self.streak == 1:
                self.first_bad, self.first_bad_step = where, step
            if self.streak < self.patience:
                if trainer.is_global_zero:  # every rank took the same decision: one line, not one per process
                    log.warning("Non-finite training step at %s: %s; its gradients were dropped (%d of %d in a "
                                "row stops training)", where, what, self.streak, self.patience)
                continue
            raise TrainingDiverged(
                f"{self.patience} training steps in a row had a non-finite loss or gradients, from "
                f"{self.first_bad} to {where} ({what}). Their gradients were dropped and no checkpoint holds "
                f"non-finite weights. Try: {divergence_advice(trainer, self.first_bad_step)}.")

    def state_dict(self) -> dict[str, Any]:
        """``{"streak": ...}``, checked first: a checkpoint is written only after the steps it holds were read."""
        if self._trainer is not None:
            self.check(self._trainer)
        return {"streak": self.streak}

    @staticmethod
    def state_problem(state_dict: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(key, what is wrong)`` when ``state_dict`` is not a state :meth:`state_dict` writes (``streak`` a
        whole number >= 0, or absent), else None. The resume check refuses such a checkpoint naming the file
        (``check_callback_states`` in ``seg_template/callbacks/checkpoint_io.py``) before anything is restored."""
        streak = state_dict.get("streak", 0)
        if isinstance(streak, bool) or not isinstance(streak, int) or streak < 0:
            return "streak", "not a whole number >= 0: it counts the bad steps in a row"
        return None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the streak of bad steps; a state no run writes (a NaN streak) is a ``CheckpointError``.
        Checkpoints read through our reader never get here with one (:meth:`state_problem`)."""
        problem = self.state_problem(state_dict)
        if problem is not None:
            raise CheckpointError(f"the checkpoint's callbacks.NaNGuard.{problem[0]} is {state_dict.get(problem[0])!r}"
                                  f" ({problem[1]}): the file was damaged or edited; resume from another "
                                  "checkpoint of the run")
        self.streak = int(state_dict.get("streak", 0))
