"""Training entry point: build the parts named by the config, fit, test the best checkpoint.

``python train.py loss=ohem`` (root script) or ``seg-train loss=ohem`` (console script) call ``main``.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from seg_template.utils import (
    CONFIG_DIR,
    choices_summary,
    instantiate_callbacks,
    instantiate_loggers,
    isolated_job,
    log_hyperparameters,
    metric_value,
    prepare_ddp_relaunch,
)

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> pl.LightningModule:
    """The ``SegmentationModule`` from ``cfg.model``, ``cfg.loss``, ``cfg.optimizer``, ``cfg.scheduler``."""
    from seg_template.module import SegmentationModule  # heavy import, after Hydra has parsed the CLI

    model_classes = cfg.model.get("num_classes")
    if model_classes is not None and model_classes != datamodule.num_classes:
        raise ValueError(f"model.num_classes={model_classes} but data.num_classes={datamodule.num_classes}: "
                         "leave model.num_classes at ${data.num_classes}")
    scheduler = cfg.get("scheduler")
    return SegmentationModule(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler else None,
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        class_names=list(datamodule.class_names),
    )


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and/or test as ``cfg`` says.

    Returns ``(metrics, objects)``: every metric logged by fit and test (floats/tensors by name, e.g.
    ``val/mIoU``, ``test/mIoU``) and the built ``datamodule``, ``module``, ``trainer``, ``callbacks``,
    ``loggers``.
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    summary = choices_summary()
    if summary:
        log.info(summary)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    prepare_ddp_relaunch()
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    objects = {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer,
               "callbacks": callbacks, "loggers": loggers}
    log_hyperparameters(cfg, module, trainer)

    if cfg.get("train", True):
        log.info("Training; outputs in %s", trainer.default_root_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, Any] = dict(trainer.callback_metrics)

    if cfg.get("test", False) and cfg.data.get("test_set") is None:
        log.info("data.test_set is null: no test split to test on")
    elif cfg.get("test", False):
        ckpt_path = best_checkpoint(trainer, cfg)
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(trainer.callback_metrics)
        if trainer.checkpoint_callback is not None and ckpt_path:
            log.info("Best checkpoint: %s", ckpt_path)
    return metrics, objects


def best_checkpoint(trainer: pl.Trainer, cfg: DictConfig) -> str | None:
    """The checkpoint to test: fit's best one, else ``cfg.ckpt_path`` when not training, else None
    (the current weights, with a warning)."""
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best:
        return best
    if not cfg.get("train", True) and cfg.get("ckpt_path"):
        return cfg.ckpt_path
    log.warning("No best checkpoint (no ModelCheckpoint, fast_dev_run or no validation): testing the "
                "current weights")
    return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry: train, then return ``cfg.optimized_metric`` (for sweepers; None if not set)."""
    with isolated_job():
        metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
