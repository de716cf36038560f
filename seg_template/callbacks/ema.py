"""An exponential moving average (EMA) of the weights: Lightning's ``EMAWeightAveraging``, fitted to the template.

``callbacks=[default,ema]`` (``configs/callbacks/ema.yaml``). After every optimiser step (every
``update_every_n_steps``, from ``update_starting_at_step``) each floating-point parameter and buffer ``a`` of the
average becomes ``decay * a + (1 - decay) * w`` (torch's EMA); the first update copies ``w``.
What Lightning 2.6's ``WeightAveraging`` does (pytorch_lightning/callbacks/weight_averaging.py), and so what the
whole template sees:

- fit's validation (``val/*``, which ``best.ckpt`` is chosen by) scores the average: it is swapped into the
  module when validation starts and out again when it ends;
- every checkpoint written during fit holds the average under ``state_dict`` (what eval.py, predict.py,
  export.py, ``model.pretrained`` and the test after fit read), the raw weights under ``current_model_state``,
  the average's ``n_averaged`` under ``averaging_state`` and the step of the latest update under
  ``callbacks["EMAWeights"]`` (``{"latest_update_step": int}``);
- a resumed fit (``ckpt_path=``) restores both: the average from ``state_dict``, the raw weights, which
  training continues from, from ``current_model_state``;
- when fit ends the average is copied into the module.

What :class:`EMAWeights` changes, each because the template went wrong without it:

1. Outside fit it leaves a checkpoint's weights alone. Lightning's loads ``current_model_state`` (the raw
   weights) whenever its average exists, which it still does after fit: train.py's test of ``best.ckpt``
   tested the raw weights, not the ones validation had scored.
2. A checkpoint written in an earlier callback's ``on_train_batch_end`` than this one's (StopOnSignal's
   mid-epoch ``last.ckpt``: ``stop_on_signal`` precedes ``ema`` in the list) first gets that step's update: it
   lacked it, so a stopped and resumed fit skipped one update and ended with another average than an
   uninterrupted fit of the same seed.
3. The average is swapped out in ``on_validation_end``, not ``on_validation_epoch_end``: the prediction grids
   (``callbacks/visuals.py``, drawn in ``on_validation_end``) then show the weights validation scored, as long
   as ``ema`` comes after ``val_images`` in the list (``callbacks=[default,ema]``). A checkpoint written
   meanwhile is written as if they were not swapped in.
4. Options a run cannot mean are refused when built (``update_every_n_steps=0`` never updated: validation
   scored the starting weights for ever); a resume from a checkpoint written without averaging says in one
   line that the average starts from its weights.
5. The update runs on torch's foreach kernels (:func:`ema_update`: one ``lerp`` over all tensors of a device
   and dtype), not one tensor at a time; integer buffers (BatchNorm's ``num_batches_tracked``) follow the raw
   model, as an average of a counter counts nothing.

A fit without this callback resuming a checkpoint written with it continues from the raw weights
(:func:`resume_raw_weights`, called by the module), with a warning; the average is dropped.

DDP: every rank averages its own copy of the same weights (gradients are all-reduced), so the averages agree
and nothing is communicated; BatchNorm statistics are each rank's own between DDP's broadcasts from rank 0,
in the average as in the raw model, and rank 0's are saved. Sharded strategies (FSDP, DeepSpeed) are not
supported by Lightning's callback.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from seg_template.errors import ConfigError
from seg_template.options import require

log = logging.getLogger(__name__)

#: the checkpoint keys where ``WeightAveraging`` keeps the raw weights and the average's own state
RAW_KEY, AVERAGING_KEY = "current_model_state", "averaging_state"
#: the state keys of the weight-averaging callbacks (``Callback.state_key``: the class name)
STATE_KEYS = ("EMAWeights", "EMAWeightAveraging", "WeightAveraging")


class EMAWeights(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (see the module's docstring for what it does and what this adds).

    ``decay`` in [0, 1): the weight of the old average at each update (0.999: the average spans about the
    last 1000 updates). ``update_every_n_steps`` >= 1, ``update_starting_at_step`` (a 0-based optimiser step,
    or None: from the first). ``device``: where the average lives (None: the model's; ``"cpu"`` saves GPU
    memory, each update then copies the weights to the host). ``use_buffers``: average the BatchNorm running
    statistics too (else they follow the raw model's).
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None, device: str | None = None,
                 use_buffers: bool = True) -> None:
        require("callbacks.ema.decay", decay)  # seg_template/option_rules.py
        require("callbacks.ema.update_every_n_steps", update_every_n_steps)
        require("callbacks.ema.update_starting_at_step", update_starting_at_step)
        require("callbacks.ema.use_buffers", use_buffers)
        check_device(device)
        super().__init__(device=device, use_buffers=bool(use_buffers), decay=float(decay),
                         update_every_n_steps=int(update_every_n_steps),
                         update_starting_at_step=update_starting_at_step)
        self.decay = float(decay)
        # the same update with torch's foreach kernels: Lightning's per-tensor avg_fn launches three kernels per
        # tensor (hrnet_w18, 1838 tensors: 240 ms an update on one CPU thread, 107 ms so; far more on a GPU)
        self._kwargs = {"multi_avg_fn": ema_update(self.decay)}
        self._swapped = False  # whether the module holds the average now (during fit's validation)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._swapped = False
            if self._average_model is not None:
                self._average_model._updates_on_host = 0  # a new average (update_average)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse an average that this fit would never update: validation, ``best.ckpt`` and the test would score
        the starting weights without a word."""
        start, total = self.update_starting_at_step, trainer.estimated_stepping_batches
        if start is not None and isinstance(total, (int, float)) and start >= total:
            raise ConfigError(f"callbacks.ema.update_starting_at_step={start} but this fit makes {int(total)} "
                              "optimiser steps (0-based: the last is step "
                              f"{int(total) - 1}): the average would never be updated, and validation, best.ckpt "
                              "and the test would score the starting weights; lower it, or leave it null")

    # ------------------------------------------------------------ updates
    def _catch_up(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The update of the latest optimiser step, when it is due and this callback has not made it yet."""
        step = trainer.global_step
        if (self._average_model is not None and trainer.state.fn == TrainerFn.FITTING
                and step > self._latest_update_step and self.should_update(step_idx=step - 1)):
            update_average(self._average_model, pl_module, self._use_buffers)
            self._latest_update_step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._catch_up(trainer, pl_module)  # Lightning's test and update, shared with on_save_checkpoint

    # ------------------------------------------------------------ validation scores the average
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # only fit's validation: after fit the average left over would replace a checkpoint trainer.validate loaded
        if self._average_model is not None and trainer.state.fn == TrainerFn.FITTING and not self._swapped:
            self._swap_models(pl_module)
            self._swapped = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: the average stays in until :meth:`on_validation_end`, for the prediction grids."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    @contextmanager
    def _unswapped(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                   checkpoint: dict[str, Any]) -> Iterator[None]:
        """The raw weights in the module (and ``checkpoint["state_dict"]``) meanwhile, if the average is in. The
        checkpoint's tensors are then copies: a state dict shares the storage of the weights, which the swap
        back into validation overwrites before the checkpoint is written."""
        if not self._swapped:
            yield
            return
        self._swap_models(pl_module)
        try:
            checkpoint["state_dict"] = trainer.strategy.lightning_module_state_dict()
            yield
            for key in ("state_dict", RAW_KEY):
                checkpoint[key] = {k: v.clone() for k, v in checkpoint[key].items()}
        finally:
            self._swap_models(pl_module)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        with self._unswapped(trainer, pl_module, checkpoint):
            self._catch_up(trainer, pl_module)
            states = checkpoint.get("callbacks")
            if isinstance(states, dict) and self.state_key in states:  # collected before this hook: the update's step
                states[self.state_key] = self.state_dict()
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # test / validate / predict: the module already holds state_dict, the average
        if RAW_KEY not in checkpoint or AVERAGING_KEY not in checkpoint:
            if trainer.is_global_zero:
                log.info("Resuming %s, written without weight averaging (callbacks.ema): the average starts from "
                         "its weights", trainer.ckpt_path)
            if self._average_model is not None:
                self._average_model.module.load_state_dict(checkpoint["state_dict"], strict=False)
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None:
            self._average_model._updates_on_host = None  # the restored count: read once, at the next update

    @staticmethod
    def state_problem(state: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(key, what is wrong)`` when ``state`` is not one :meth:`state_dict` writes, else None: checked with
        the other callbacks' states before a resume restores anything (``callbacks/checkpoint_io.py``)."""
        step = state.get("latest_update_step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return "latest_update_step", "not a whole number >= 0: it is the optimiser step of the latest update"
        return None


def ema_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Any], None]:
    """``AveragedModel``'s ``multi_avg_fn``: each floating-point tensor of ``averages`` becomes ``decay * average +
    (1 - decay) * current`` (one foreach ``lerp`` per device and dtype, as torch's ``get_ema_multi_avg_fn``);
    integer tensors take the current values. torch's own averages counters too, truncated back to integers:
    ``num_batches_tracked`` stood still (``int(0.999 * n + 0.001 * (n + 1)) == n``)."""

    @torch.no_grad()
    def update(averages: list[Tensor], currents: list[Tensor], _n_averaged: Any) -> None:
        if averages and (averages[0].is_floating_point() or averages[0].is_complex()):
            torch._foreach_lerp_(averages, currents, 1 - decay)
        else:
            torch._foreach_copy_(averages, currents)

    return update


def check_device(device: Any) -> None:
    """``callbacks.ema.device``: None, or a device torch knows and this machine has (else a ``ConfigError``
    now, rather than torch's error when the average is first moved there)."""
    if device is None:
        return
    try:
        place = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"callbacks.ema.device={device!r} is not a device ({err}); use null (the model's "
                          "device), cpu or cuda") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(place.type, True) or (place.type == "cuda" and place.index is not None
                                                and place.index >= torch.cuda.device_count()):
        raise ConfigError(f"callbacks.ema.device={device!r}: this machine has no such device; use null (the "
                          "model's device) or cpu")


def update_average(average: AveragedModel, model: torch.nn.Module, use_buffers: bool) -> None:
    """``AveragedModel.update_parameters`` without a host read: torch's asks ``n_averaged == 0`` and
    ``n_averaged > 0`` of a tensor on the model's device, which waits for the GPU at every update. The first
    update of this process reads the count once (0 for a new average, more for a resumed one) and keeps it
    on the host from then on; ``n_averaged`` itself is still counted on the device (checkpoints hold it)."""
    count = getattr(average, "_updates_on_host", None)
    if count is None:
        count = int(average.n_averaged)
    pairs = [(a.detach(), m.detach().to(a.device)) for a, m in zip(
        itertools.chain(average.module.parameters(), average.module.buffers() if use_buffers else ()),
        itertools.chain(model.parameters(), model.buffers() if use_buffers else ()), strict=True)]
    if count == 0:
        torch._foreach_copy_([a for a, _ in pairs], [m for _, m in pairs])
    else:
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor]]] = {}
        for a, m in pairs:
            groups.setdefault((a.device, a.dtype), []).append((a, m))
        for group in groups.values():
            average.multi_avg_fn([a for a, _ in group], [m for _, m in group], average.n_averaged)
    if not use_buffers:  # torch's rule: the buffers follow the model's
        for a, m in zip(average.module.buffers(), model.buffers(), strict=True):
            a.detach().copy_(m.detach().to(a.device))
    average.n_averaged += 1
    average._updates_on_host = count + 1


def averaged_module(trainer: pl.Trainer) -> torch.nn.Module | None:
    """The average a weight-averaging callback of ``trainer`` keeps during fit (the LightningModule's copy),
    or None."""
    for callback in trainer.callbacks:
        average = getattr(callback, "_average_model", None) if isinstance(callback, WeightAveraging) else None
        if average is not None:
            return average.module
    return None


def resume_raw_weights(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """A fit without weight averaging resuming ``checkpoint`` written with it: training continues from the raw
    weights (``current_model_state``) rather than from the average in ``state_dict``, and the averaging
    callback's state is dropped (Lightning would ask for that callback back). Called by the module's
    ``on_load_checkpoint``, before Lightning loads ``state_dict``."""
    raw = checkpoint.get(RAW_KEY)
    if not isinstance(raw, Mapping) or any(isinstance(c, WeightAveraging) for c in trainer.callbacks):
        return
    checkpoint["state_dict"] = raw
    states = checkpoint.get("callbacks")
    if isinstance(states, dict):
        for key in [k for k in states if str(k).split("{", 1)[0] in STATE_KEYS]:
            del states[key]
    if trainer.is_global_zero:
        log.warning("Resuming %s, written with weight averaging (callbacks.ema), without it: training continues "
                    "from its raw weights and the average is dropped (eval.py / predict.py on that file still use "
                    "the average). To keep averaging, resume with callbacks=[default,ema]", trainer.ckpt_path)
