"""Stop a diverged training run early, with one message, before it saves or tests non-finite weights.

:class:`NaNGuard` watches every training step: a non-finite loss, or (in full precision) non-finite
gradients behind a finite loss, makes the step *bad*. The optimiser update of a bad step is skipped, so a
stray bad batch cannot poison the weights; after ``patience`` bad steps in a row training stops by raising
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


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite, with one device sync. The max-abs norm cannot overflow
    and is NaN / inf exactly when some element is (``get_total_norm``, torch >= 2.6, does it with foreach
    kernels)."""
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if total_norm is not None:
        peak = total_norm(tensors, norm_type=float("inf"))
    else:  # pragma: no cover - older torch
        peak = torch.stack([t.detach().abs().amax() for t in tensors if t.numel()]).amax()
    return bool(torch.isfinite(peak))


class NaNGuard(pl.Callback):
    """Skip updates of steps with a non-finite loss or gradients; raise after ``patience`` in a row.

    ``check_gradients``: also inspect the gradients (one host-device sync per step), which catches a finite
    loss with NaN gradients. Under 16-bit mixed precision the gradient scaler already skips steps with
    non-finite gradients (a few are normal while it calibrates), so there only the loss is watched.
    """

    def __init__(self, patience: int = 3, check_gradients: bool = True) -> None:
        super().__init__()
        require("callbacks.nan_guard.patience", patience)
        require("callbacks.nan_guard.check_gradients", check_gradients)  # bool("false ") would be True
        self.patience, self.check_gradients = int(patience), bool(check_gradients)
        self.streak = 0  # bad steps in a row
        self.first_bad = ""  # where the current streak began
        self.first_bad_step = 0
        self._bad_gradients = False

    @staticmethod
    def _scaled(trainer: pl.Trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Optimizer) -> None:
        if not self.check_gradients or self._scaled(trainer) or not pl_module.automatic_optimization:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        if not _all_finite([p.grad for p in params]):
            self._bad_gradients = True
            for p in params:  # optimisers skip parameters without a gradient: the update does not happen
                p.grad = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        bad_loss = isinstance(loss, Tensor) and not bool(torch.isfinite(loss.detach()).all())
        bad_gradients, self._bad_gradients = self._bad_gradients, False
        # DDP: every rank must take the same decision, or the others wait forever for the one that stopped
        if not trainer.strategy.reduce_boolean_decision(bad_loss or bad_gradients, all=False):
            self.streak = 0
            return
        self.streak += 1
        if bad_loss:
            what = f"loss {loss.detach().float().mean().item()}"
        else:
            what = "non-finite gradients (finite loss)" if bad_gradients else "on another process"
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step} (batch {batch_idx})"
        if self.streak == 1:
            self.first_bad, self.first_bad_step = where, trainer.global_step
        if self.streak < self.patience:
            if trainer.is_global_zero:  # every rank took the same decision: one line, not one per process
                log.warning("Non-finite training step at %s: %s; its update was skipped (%d of %d in a row "
                            "stops training)", where, what, self.streak, self.patience)
            return
        raise TrainingDiverged(
            f"{self.patience} training steps in a row had a non-finite loss or gradients, from {self.first_bad} "
            f"to {where} ({what}). Their updates were skipped and no checkpoint holds non-finite weights. "
            f"Try: {divergence_advice(trainer, self.first_bad_step)}.")

    def state_dict(self) -> dict[str, Any]:
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
