"""Every option of every config group composes with train.yaml and builds what it describes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning import Callback, LightningDataModule, Trainer
from pytorch_lightning.loggers import Logger
from pytorch_lightning.strategies import DDPStrategy

from seg_template.utils import CONFIG_DIR, instantiate_callbacks, instantiate_loggers

GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths",
          "debug", "experiment", "hparams_search", "launcher")
OPTIONAL_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                     "many": ("tensorboard", "tensorboardX"),
                     "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher",)}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in options(group)]


def hydra_node(*overrides: str):
    """The composed ``hydra`` node (sweeper, launcher, run dirs) for train.yaml + overrides."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg.hydra


def test_every_group_has_options() -> None:
    missing = [g for g in GROUPS if not options(g)]
    assert not missing, f"config groups without options: {missing}"


def _needs(option: str) -> None:
    packages = OPTIONAL_PACKAGES.get(option)
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        pytest.skip(f"{option} needs the optional package {' or '.join(packages)}")


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    if group in ("logger", "launcher"):
        _needs(option)
    cfg = compose_cfg(overrides=[f"{group}={option}"], output_dir=tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves (paths, ${data.*})

    if group in ("data", "experiment"):
        assert isinstance(instantiate(cfg.data), LightningDataModule)
    if group in ("model", "experiment"):
        if group == "experiment":  # recipes name pretrained weights; building the network is what is checked
            cfg.model.pretrained = None
        net = instantiate(cfg.model)
        assert sum(p.numel() for p in net.parameters()) > 0
    if group in ("loss", "experiment"):
        if cfg.loss.main.get("weight", "") is None and "weighted" in cfg.loss.main._target_:
            cfg.data.class_weights = [1.0] * cfg.data.num_classes  # wce insists on weights
            cfg.loss.main.weight = cfg.data.class_weights
        loss = instantiate(cfg.loss)
        logits = torch.randn(2, cfg.data.num_classes, 4, 4, requires_grad=True)
        value = loss(logits, torch.randint(0, cfg.data.num_classes, (2, 8, 8)))
        assert torch.isfinite(value)
    if group in ("optimizer", "scheduler", "experiment"):
        params = [torch.nn.Parameter(torch.zeros(3))]
        optimizer = instantiate(cfg.optimizer)(params)
        assert isinstance(optimizer, torch.optim.Optimizer)
        if cfg.get("scheduler"):
            assert instantiate(cfg.scheduler) is not None
    if group in ("trainer", "debug", "experiment"):
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            # no GPU here: build it on CPU processes; the strategy and SyncBN settings are still checked
            cfg.trainer.accelerator = "cpu"
            cfg.trainer.devices = 2 if cfg.trainer.devices == -1 else cfg.trainer.devices
        trainer = instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer, Trainer)
        if option in ("ddp", "ddp_cpu"):
            assert isinstance(trainer.strategy, DDPStrategy)
        if option == "ddp":
            assert cfg.trainer.sync_batchnorm is True
    if group == "callbacks":
        assert all(isinstance(c, Callback) for c in instantiate_callbacks(cfg.callbacks))
    if group == "logger":
        assert all(isinstance(lg, Logger) for lg in instantiate_loggers(cfg.logger))
    if group == "paths":
        assert Path(cfg.paths.data_dir).parent == Path(cfg.paths.root_dir)
    if group == "hparams_search":
        params = hydra_node(f"hparams_search={option}").sweeper.params
        assert params, "a search space must list parameters"
        for key, values in params.items():  # each value of the space is a valid override
            for value in str(values).split(","):
                compose_cfg(overrides=[f"hparams_search={option}", f"{key}={value.strip()}"], output_dir=tmp_path)
    if group == "launcher":
        assert hydra_node(f"launcher={option}").launcher._target_


def test_default_callbacks() -> None:
    cfg = compose_cfg()
    callbacks = {type(c).__name__: c for c in instantiate_callbacks(cfg.callbacks)}
    assert {"ModelCheckpoint", "LearningRateMonitor", "RichProgressBar", "RichModelSummary"} <= set(callbacks)
    assert "EarlyStopping" not in callbacks
    checkpoint = callbacks["ModelCheckpoint"]
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/mIoU", "max", True)
    assert callbacks["LearningRateMonitor"].logging_interval == "step"


def test_early_stopping_and_disabling_a_callback() -> None:
    names = [type(c).__name__ for c in instantiate_callbacks(
        compose_cfg(overrides=["callbacks=[default,early_stopping]", "callbacks.rich_progress_bar=null"]).callbacks)]
    assert "EarlyStopping" in names and "RichProgressBar" not in names


def test_csv_logger_writes_into_the_output_dir(tmp_path: Path) -> None:
    (logger,) = instantiate_loggers(compose_cfg(output_dir=tmp_path).logger)
    assert Path(logger.log_dir) == tmp_path


def test_run_and_sweep_dirs_under_logs() -> None:
    node = hydra_node()
    assert "/logs/train/runs/" in node.run.dir and "/logs/train/multiruns/" in node.sweep.dir
    assert OmegaConf.to_container(node.sweep)["subdir"] == "${hydra.job.num}"  # numbered job folders


def test_default_recipe() -> None:
    cfg = compose_cfg(overrides=["trainer=default"])
    assert cfg.trainer.accelerator == "auto" and cfg.optimized_metric == "val/mIoU"
    assert cfg.model.num_classes == cfg.data.num_classes and cfg.loss.main.ignore_index == cfg.data.ignore_index


def test_unknown_option_lists_the_choices() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(overrides=["loss=foo"])
    message = str(err.value)
    assert "foo" in message and all(name in message for name in ("ce", "wce", "ohem"))


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_entry_configs_require_a_checkpoint(name: str) -> None:
    cfg = compose_cfg(name)
    assert OmegaConf.is_missing(cfg, "ckpt_path")
    cfg = compose_cfg(name, overrides=["ckpt_path=x.ckpt", "input=img"] if name == "predict" else ["ckpt_path=x.ckpt"])
    assert cfg.inference.mode == "whole" and list(cfg.inference.scales) == [1.0]
