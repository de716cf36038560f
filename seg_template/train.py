"""Training task: build the parts named by the config, fit, test the best checkpoint.

``python train.py loss=ohem`` (root script) or ``seg-train loss=ohem`` (console script) call :func:`main`;
tests call :func:`train` with a composed config. torch and Lightning are imported inside the functions, so
``python train.py --help`` answers before loading them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from seg_template.build import (
    build_module,
    choices_summary,
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_trainer,
    log_hyperparameters,
    metric_value,
)
from seg_template.cli import hydra_main
from seg_template.errors import ConfigError
from seg_template.recipe import recipe_from

if TYPE_CHECKING:
    import pytorch_lightning as pl

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and/or test as ``cfg`` says.

    Returns ``(metrics, objects)``: every metric logged by fit and test (floats/tensors by name, e.g.
    ``val/mIoU``, ``test/mIoU``) and the built ``datamodule``, ``module``, ``trainer``, ``callbacks``,
    ``loggers``.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from seg_template.jobs import is_global_zero, prepare_ddp_relaunch
    from seg_template.options import check_options

    check_options(cfg)  # every typed option's type, range and NaN, before anything is built
    _check_own_recipe(cfg)
    seed = cfg.get("seed")
    if seed is not None:  # an integer in [0, 2**32) (check_options)
        pl.seed_everything(seed, workers=True)
    say = log.info if is_global_zero() else log.debug  # ranks > 0 would repeat every line
    summary = choices_summary()
    if summary:
        say(summary)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    # read a sample of every split this run will use before anything is built: bad data fails in seconds
    testing = cfg.get("test", False) and cfg.data.get("test_set") is not None
    datamodule.preflight([*(("train", "val") if cfg.get("train", True) else ()), *(("test",) if testing else ())])
    module = build_module(cfg, datamodule)
    module.recipe = recipe_from(cfg)  # stored in every checkpoint: eval/predict/export need only it
    if cfg.get("ckpt_path"):  # a readable training checkpoint of this model, before any folder fills up
        from seg_template.callbacks.checkpoint import check_resume_checkpoint

        state = check_resume_checkpoint(cfg.ckpt_path, module)
        max_epochs = cfg.trainer.get("max_epochs")
        if cfg.get("train", True) and isinstance(max_epochs, int) and 0 <= max_epochs <= state["epoch"]:
            # Lightning fails with a traceback below, and silently trains nothing at the epoch itself
            raise ConfigError(f"trainer.max_epochs={max_epochs}, but ckpt_path '{cfg.ckpt_path}' has trained "
                              f"{state['epoch'] + 1} epochs already: raise trainer.max_epochs to train on (the "
                              "schedule is recomputed for it), or pass train=false to only test it")
        if cfg.get("train", True):  # a fit resumed in its own folder starts from that folder's newest state
            from omegaconf import OmegaConf

            from seg_template.run_folder import check_resume_in_place

            check_resume_in_place(cfg.ckpt_path, cfg.paths.output_dir,
                                  OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None),
                                  state["global_step"])
        say("Resuming %s (epoch %d, step %d)", cfg.ckpt_path, state["epoch"], state["global_step"])
        from seg_template.recipe import read_checkpoint_recipe, recipe_changes

        trained = read_checkpoint_recipe(cfg.ckpt_path)  # the object the check read: no second read
        changed = recipe_changes(trained, module.recipe) if trained else []
        if changed:  # a loss or data switch is allowed (fine-tuning), never silent
            say("Resuming with other data / model / loss options than the run that wrote it (its weights and "
                "optimiser state continue under them): %s", "; ".join(changed))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    prepare_ddp_relaunch()
    trainer: pl.Trainer = instantiate_trainer(cfg.trainer, callbacks, loggers)
    objects = {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer,
               "callbacks": callbacks, "loggers": loggers}
    log_hyperparameters(cfg, module, trainer)

    if cfg.get("train", True):
        say("Training; outputs in %s", trainer.default_root_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if not trainer.interrupted:
            remove_requeue_checkpoints(trainer)
    metrics: dict[str, Any] = dict(trainer.callback_metrics)

    if cfg.get("test", False) and cfg.data.get("test_set") is None:
        say("data.test_set is null: no test split to test on")
    elif cfg.get("test", False):
        ckpt_path = best_checkpoint(trainer, cfg)
        # verbose=False: the module prints its own per-class table; Lightning's would repeat it in other units
        with _stopped_during_the_test(ckpt_path):
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics.update(trainer.callback_metrics)
        if trainer.checkpoint_callback is not None and ckpt_path:
            say("Best checkpoint: %s", ckpt_path)
    return metrics, objects


@contextmanager
def _stopped_during_the_test(ckpt_path: str | None) -> Iterator[None]:
    """A signal during the test after fit: the fit is complete, so the line says so and how to run the test
    alone (the entry point would only say "Stopped by SIGTERM")."""
    from seg_template.callbacks.stop_on_signal import shell_word
    from seg_template.paths import hydra_value
    from seg_template.signals import StoppedBySignal, as_stop, mark_reported, signal_name

    try:
        yield
    except BaseException as err:
        stop = err if isinstance(err, StoppedBySignal) else as_stop(err) if isinstance(err, Exception) else None
        if stop is not None and not stop.reported and ckpt_path:
            command = f"python eval.py {shell_word(f'ckpt_path={hydra_value(str(ckpt_path))}')} split=test"
            log.warning("Stopped by %s during the test after fit (exit status %d); the fit is complete and %s "
                        "holds its best weights: test them with %s", signal_name(stop.signum), stop.code,
                        Path(ckpt_path).name, command)
            mark_reported()
            stop.reported = True
        raise


def remove_requeue_checkpoints(trainer: pl.Trainer) -> None:
    """Remove SLURM's ``hpc_ckpt_<n>.ckpt`` from the run folder once fit is complete: a requeued job resumed
    from them; ``last.ckpt`` now holds the fit's end (and a job requeued later must not train again from one).
    Rank 0 only (the folder is shared)."""
    if not trainer.is_global_zero:
        return
    for path in sorted(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
        path.unlink(missing_ok=True)
        log.info("Removed %s: the fit is complete (last.ckpt holds its end)", path.name)


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


def sweeper_needs_value() -> bool:
    """True in a multirun whose sweeper optimises the returned value (not Hydra's basic grid sweeper)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and "BasicSweeper" not in str(hydra_cfg.sweeper.get("_target_"))


def _check_own_recipe(cfg: DictConfig) -> None:
    """Refuse a run whose checkpoints eval, predict and resume would refuse: its recipe calls a ``_target_`` that
    no config file writes at that key (given only on the command line), which the recipe door cannot tell from
    a crafted checkpoint (seg_template/file_config.py)."""
    from seg_template.file_config import target_problem

    problem = target_problem(recipe_from(cfg))
    if problem:
        raise ConfigError(f"this run's recipe {problem}: eval.py, predict.py and a resume would refuse its "
                          "checkpoints. Write that node in a YAML file under configs/ (e.g. configs/loss/<yours>.yaml, "
                          "docs/extending.md), where the allowed targets are read from, and pick that file")


def run_task(cfg: DictConfig) -> float | None:
    """Train, then return ``cfg.optimized_metric`` for sweepers (None when unset or not logged)."""
    from seg_template.jobs import isolated_job

    with isolated_job():
        metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"), required=sweeper_needs_value())


def main() -> float | None:
    """Entry point of ``python train.py [overrides]``."""
    return hydra_main("train", run_task)


if __name__ == "__main__":
    main()
