"""Evaluation task: score a checkpoint on the val or test split, optionally with sliding-window or
multi-scale + flip inference. ``python eval.py ckpt_path=<ckpt> [split=test] [inference=slide ...]``.

The data, model and loss come from the checkpoint's recipe (seg_template/recipe.py); options typed on the
command line win over it (``data.root=`` on another machine, ``data.eval_batch_size=``, ``model.*``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg_template.build import (
    build_module,
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_trainer,
    require_ckpt_path,
)
from seg_template.cli import hydra_main
from seg_template.recipe import check_recipe_options, read_checkpoint_recipe, recipe_argv, with_recipe

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, overrides: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate (``split=val``) or test (``split=test``) ``cfg.ckpt_path``.

    ``cfg.data`` / ``model`` / ``loss`` are replaced by the checkpoint's recipe, then ``overrides`` (Hydra
    syntax; default: the command line's, none outside a Hydra run) are applied again so that they win.
    Returns ``(metrics, objects)`` like ``seg_template.train.train``: metric names are ``val/...`` or
    ``test/...`` as the module logs them; ``objects["cfg"]`` is the config actually used.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from seg_template.inference import InferenceModel
    from seg_template.models.weights import load_net_weights

    ckpt_path = require_ckpt_path(cfg, "eval.py")
    recipe = read_checkpoint_recipe(ckpt_path)
    cfg = with_recipe(cfg, ckpt_path, recipe, overrides, "eval.py")
    check_recipe_options(cfg, ckpt_path, recipe, overrides)  # split, inference.*, the options typed over the recipe

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    datamodule.preflight([cfg.split])
    module = build_module(cfg, datamodule, training=False)
    load_net_weights(module.net, ckpt_path, configured_model=OmegaConf.to_container(cfg.model))
    # The module's eval step then sees image-size logits, upsampled to the mask's size (a no-op unless
    # data.val_transform resized the image: then as HRNet's and MMSeg's test code do, in a second step).
    module.net = InferenceModel(module.net, **OmegaConf.to_container(cfg.inference, resolve=True))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate_trainer(cfg.trainer, callbacks, loggers)
    reads = OmegaConf.select(cfg, f"data.{cfg.split}_set.split", default=None)
    if reads in ("train", "training"):  # a recipe (or an option) pointing the evaluated split at training images
        log.warning("data.%s_set reads the %r split: these scores are on training images", cfg.split, reads)
    log.info("Evaluating %s on the %s split%s (%s)", ckpt_path, cfg.split,
             f" (data.{cfg.split}_set.split={reads})" if reads not in (None, cfg.split) else "", dict(cfg.inference))
    run = trainer.validate if cfg.split == "val" else trainer.test
    # verbose=False: the module prints its per-class table; Lightning's would repeat it in other units
    run(module, datamodule=datamodule, verbose=False)
    metrics = dict(trainer.callback_metrics)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer}


def run_task(cfg: DictConfig) -> None:
    from seg_template.jobs import isolated_job

    with isolated_job():
        evaluate(cfg)


def main() -> None:
    """Entry point of ``python eval.py ckpt_path=<ckpt> [overrides]``."""
    sys.argv = recipe_argv(sys.argv, ("data", "model", "loss"))
    hydra_main("eval", run_task)


if __name__ == "__main__":
    main()
