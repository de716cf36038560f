"""Evaluation entry point: score a checkpoint on the val or test split, optionally with sliding-window or
multi-scale + flip inference. ``python eval.py ckpt_path=<ckpt> [inference.mode=slide ...]``."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seg_template.inference import InferenceModel, load_net_weights
from seg_template.train import build_module
from seg_template.utils import CONFIG_DIR, choices_summary, instantiate_callbacks, instantiate_loggers

log = logging.getLogger(__name__)


def require_ckpt_path(cfg: DictConfig, script: str) -> str:
    """``cfg.ckpt_path``, or a ``ValueError`` that shows how to pass it."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ValueError(f"ckpt_path is required: python {script} "
                         "ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt")
    return str(cfg.ckpt_path)


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate (``split=val``) or test (``split=test``) ``cfg.ckpt_path``.

    Returns ``(metrics, objects)`` like ``seg_template.train.train``: metric names are ``val/...`` or
    ``test/...`` as the module logs them.
    """
    ckpt_path = require_ckpt_path(cfg, "eval.py")
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {cfg.split!r}")
    summary = choices_summary()
    if summary:
        log.info(summary)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    load_net_weights(module.net, ckpt_path)
    # The module's eval step then sees image-size logits; its upsampling to the mask size is a no-op.
    module.net = InferenceModel(module.net, **OmegaConf.to_container(cfg.inference, resolve=True))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log.info("Evaluating %s on the %s split (%s)", ckpt_path, cfg.split, dict(cfg.inference))
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(module, datamodule=datamodule)
    metrics = dict(trainer.callback_metrics)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
