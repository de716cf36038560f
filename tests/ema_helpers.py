"""What tests/test_ema.py and tests/test_ema_resume.py share: tiny fits with ``callbacks=[default,ema]`` through
the real train entry point, test-only callbacks that record the weights (built by Hydra from ``HERE``), and the
EMA recomputed from the raw weights after each optimiser step.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from seg_template.train import train
from tests.conftest import _compose
from tests.helpers import TRAINED

DECAY = 0.6  # far from 1, so that a few steps leave the average well apart from the raw weights
HERE = "tests.ema_helpers"  # where Hydra finds the test-only callbacks below
EMA = ["callbacks=[default,ema]", f"callbacks.ema.decay={DECAY}"]
QUIET = ["callbacks.rich_model_summary=null", "data.num_workers=0", "test=false",
         f"+callbacks.recorder._target_={HERE}.Recorder"]
Weights = dict[str, torch.Tensor]



def floats(module: torch.nn.Module) -> Weights:
    """The floating-point tensors of ``module.state_dict()`` (parameters and BatchNorm statistics), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def ema_of(steps: list[Weights], decay: float = DECAY) -> Weights:
    """The EMA after ``steps`` (the raw weights after each optimiser step): the first copied, then
    ``decay * average + (1 - decay) * weights``, computed here without Lightning or torch's AveragedModel."""
    average = dict(steps[0])
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
    return average


def assert_same(a: Weights, b: Weights, differ: bool = False) -> None:
    """``a`` equals ``b`` on ``b``'s floating-point tensors (or, ``differ``, is clearly apart from it)."""
    keys = [k for k in b if b[k].is_floating_point()]
    gap = max(float((a[k].float() - b[k].float()).abs().max()) for k in keys)
    assert (gap > 1e-4) if differ else (gap <= 1e-6), f"max |difference| {gap}"


class Recorder(pl.Callback):
    """The raw weights after every optimiser step, the weights each validation scores (at its first batch), its
    metrics, and a checkpoint written in the middle of the last validation (the average is in the module then)."""

    def __init__(self) -> None:
        self.steps: list[Weights] = []
        self.validated: dict[int, Weights] = {}
        self.metrics: dict[int, dict[str, float]] = {}
        self.started: Weights | None = None
        self.drawn: dict[int, Weights] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = floats(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.steps.append(floats(pl_module))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self.validated[trainer.current_epoch] = floats(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch + 1 == trainer.max_epochs:
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "during_validation.ckpt")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.metrics[trainer.current_epoch] = {k: float(trainer.callback_metrics[k])
                                                   for k in ("val/loss", "val/mIoU", "val/aAcc")}


class SignalAt(pl.Callback):
    """SIGTERM to this process when optimiser step ``at_step`` starts, as a scheduler would send it."""

    def __init__(self, at_step: int) -> None:
        self.at_step = int(at_step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


def compose(out: Path, *overrides: str) -> DictConfig:
    """train.yaml on the CPU with ``overrides``, writing to ``out`` (tests/conftest.py's compose_cfg)."""
    cfg = _compose("train", ["trainer=cpu", *overrides])
    cfg.paths.output_dir, cfg.paths.log_dir = str(out), str(out / "logs")
    return cfg


def fit(out: Path, *overrides: str, ema: bool = True) -> tuple[Recorder, dict[str, Any]]:
    """``train.py`` in-process on TRAINED's tiny data with ``callbacks=[default,ema]`` (unless not ``ema``)."""
    metrics, objects = train(compose(out, *TRAINED, *(EMA if ema else ()), *QUIET, *overrides))
    (recorder,) = [c for c in objects["trainer"].callbacks if isinstance(c, Recorder)]
    return recorder, {**objects, "metrics": metrics}


def read(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def net_part(state: Weights) -> Weights:
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


class KeepEpochEnd(pl.Callback):
    """Copies ``last.ckpt`` as written at the end of epoch 0 to ``<run>/epoch0.ckpt``."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            shutil.copy(trainer.checkpoint_callback.last_model_path, Path(trainer.default_root_dir) / "epoch0.ckpt")

