"""Helpers shared by the train / eval / predict entry points: config paths, callbacks, loggers, metrics."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
# configs/paths/default.yaml reads root_dir from here; a user may point it elsewhere (e.g. on a cluster).
os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
# The CSV logger writes metrics.csv into the run folder, which Hydra has already filled (.hydra/, *.log):
# expected, so its "directory exists and is not empty" warning would only alarm users.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def instantiate_group(cfg: DictConfig | None, kind: type, group: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, logger).

    Raises ``TypeError`` naming the entry when it is not a dict with ``_target_`` or builds the wrong type.
    """
    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"config group '{group}' must be a mapping of name -> {{_target_: ...}}, got {cfg!r}")
    for name, entry in cfg.items():
        if entry is None:  # `callbacks.rich_progress_bar=null` switches one entry off
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise TypeError(f"{group}.{name} has no _target_: {entry!r}")
        obj = instantiate(entry)
        if not isinstance(obj, kind):
            raise TypeError(f"{group}.{name} built a {type(obj).__name__}, expected a {kind.__name__}")
        objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return instantiate_group(cfg, Callback, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return instantiate_group(cfg, Logger, "logger")


@rank_zero_only
def log_hyperparameters(cfg: DictConfig, module: LightningModule, trainer: Trainer) -> None:
    """Send the resolved recipe and the parameter counts to every logger (hparams.yaml for CSV)."""
    if not trainer.loggers:
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hparams: dict[str, Any] = {
        key: resolved.get(key)
        for key in ("data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks",
                    "task_name", "seed", "ckpt_path")
    }
    params = list(module.parameters())
    hparams["model/params/total"] = sum(p.numel() for p in params)
    hparams["model/params/trainable"] = sum(p.numel() for p in params if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """``metrics[name]`` as a float (what a sweeper optimises); None when no name is configured."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    value = metrics[name]
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def choices_summary() -> str:
    """One line naming the chosen option of every config group, e.g. ``data=synthetic model=small ...``."""
    if not HydraConfig.initialized():
        return ""
    choices = HydraConfig.get().runtime.choices
    return " ".join(f"{k}={v}" for k, v in choices.items() if not k.startswith("hydra/") and v is not None)


@contextmanager
def isolated_job() -> Iterator[None]:
    """Undo what a DDP fit leaves behind in this process, so that the next multirun job starts clean.

    Lightning's launcher sets ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT``... in ``os.environ`` and keeps
    the process group. The next job would then believe its ranks were started externally and talk to the
    previous job's finished ranks. Variables set before the job (e.g. by torchrun or SLURM) are kept.
    """
    env_before = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key in set(os.environ) - set(env_before):
            del os.environ[key]
        os.environ.update(env_before)


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP re-launch of this script land in this multirun job's folder.

    Lightning starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<run dir>``. In a multirun
    ``sys.argv`` holds ``-m`` and the whole sweep, and the run dir is not the job's folder, so each child
    would start the sweep again elsewhere. Replace them with this job's own overrides and folder, which
    turns the child into a plain single run in the same folder.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run), open_dict(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
