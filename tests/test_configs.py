"""Every option of every config group composes with train.yaml, resolves, and builds what it describes.

One test per group; each is parametrized over the group's YAML files, so a new option is tested as soon as
its file exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback, LightningDataModule, Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from seg_template.build import build_net, build_optimizer, instantiate_callbacks, instantiate_loggers
from seg_template.models.outputs import main_logits
from seg_template.optim import param_groups
from seg_template.option_schema import self_before_base
from seg_template.options import missing_values, problems
from seg_template.paths import CONFIG_DIR, PROJECT_ROOT
from tests.helpers import options, skip_unless_builder_importable, skip_unless_importable

#: option -> modules of which one must be importable for it to build (optional extras)
OPTIONAL_PACKAGES = {
    "logger": {"tensorboard": ("tensorboard", "tensorboardX"), "many": ("tensorboard", "tensorboardX"),
               "wandb": ("wandb",), "mlflow": ("mlflow",)},
    "launcher": {"submitit_slurm": ("hydra_plugins.hydra_submitit_launcher",),
                 "submitit_local": ("hydra_plugins.hydra_submitit_launcher",)},
    "hparams_search": {"optuna": ("hydra_plugins.hydra_optuna_sweeper",)},
}


def composed(compose_cfg, tmp_path: Path, group: str, option: str, *overrides: str) -> DictConfig:
    """train.yaml with ``group=option`` (skipped when the option needs a missing optional package), every
    interpolation resolved. Every shipped option passes the typed-option check (seg_template/options.py)."""
    skip_unless_importable(*OPTIONAL_PACKAGES.get(group, {}).get(option, ()))
    cfg = compose_cfg(overrides=[f"{group}={option}", *overrides], output_dir=tmp_path)
    skip_unless_builder_importable(cfg.model._target_)  # a model (or experiment) over smp: the `.[smp]` extra
    # values its user must give ('???', e.g. a dataset's root): named by the option check, then stood in for
    required = [key for key in missing_values(cfg) if key not in ("ckpt_path", "input")]
    assert all("a required value ('???'" in text for text in problems(cfg)[:len(required)])
    for key in required:
        OmegaConf.update(cfg, key, f"<{key}>")
    assert problems(cfg) == [], f"{group}={option} {' '.join(overrides)}"
    OmegaConf.resolve(cfg)  # paths, ${data.*}, ${hydra:...} replaced above
    return cfg


def num_classes_out(model_cfg: DictConfig, size: int = 64) -> int:
    """Channels of the main output of the network ``model_cfg`` builds, on the meta device (no memory, no
    compute: even hrnet_w48 builds in a blink)."""
    with torch.device("meta"):
        net, _ = build_net(model_cfg)  # as the module builds it (model.align_corners is not every builder's)
        assert isinstance(net, nn.Module)
        out = net.eval()(torch.empty(1, 3, size, size))
    return main_logits(out).shape[1]


def check_loss(loss_cfg: DictConfig, num_classes: int, ignore_index: int) -> None:
    """The loss builds, gives a finite value on native-stride logits vs full-size labels (some ignored) and a
    finite, non-zero gradient."""
    loss = instantiate(loss_cfg)
    logits = torch.randn(2, num_classes, 4, 4, requires_grad=True)
    target = torch.randint(0, num_classes, (2, 8, 8))
    target[:, 0] = ignore_index
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def build_trainer(trainer_cfg: DictConfig) -> Trainer:
    """The Trainer; a GPU option is built with CPU processes on a machine without one, so its strategy and
    SyncBN settings are still checked."""
    if trainer_cfg.accelerator == "gpu" and not torch.cuda.is_available():
        trainer_cfg.accelerator = "cpu"
        trainer_cfg.devices = 2 if trainer_cfg.devices == -1 else trainer_cfg.devices
    return instantiate(trainer_cfg, logger=False)


@pytest.mark.parametrize("option", options("data"))
def test_data(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "data", option)
    datamodule = instantiate(cfg.data)  # checks class_names against num_classes
    assert isinstance(datamodule, LightningDataModule)
    weights = cfg.data.get("class_weights")
    if OmegaConf.is_list(weights):  # a file path is checked when the loss reads it
        assert len(weights) == cfg.data.num_classes, "one class weight per class"
    # the model and the loss take the class count and ignore index from the data config
    assert num_classes_out(cfg.model) == datamodule.num_classes
    assert cfg.loss.main.ignore_index == datamodule.ignore_index
    # a base it starts from (/data_base@_here_) comes before _self_, else the base replaces the file's values
    base = self_before_base(CONFIG_DIR / "data" / f"{option}.yaml")
    assert base is None, (f"configs/data/{option}.yaml lists _self_ before {base}: the base's values replace the "
                          "file's own (write `_self_` after it)")


@pytest.mark.parametrize("option", options("data/class_weights"))
def test_data_class_weights_preset(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "data/class_weights", option, "data=cityscapes", "loss=wce")
    assert len(cfg.data.class_weights) == cfg.data.num_classes
    check_loss(cfg.loss, cfg.data.num_classes, cfg.data.ignore_index)


@pytest.mark.parametrize("option", options("model"))
def test_model(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "model", option)
    assert num_classes_out(cfg.model) == cfg.data.num_classes


@pytest.mark.parametrize("option", options("loss"))
def test_loss(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "loss", option)
    check_loss(cfg.loss, cfg.data.num_classes, cfg.data.ignore_index)


@pytest.mark.parametrize("scheduler", options("scheduler"))
@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_optimizer_and_scheduler(optimizer: str, scheduler: str, compose_cfg, tmp_path: Path) -> None:
    """The module's recipe: the optimizer partial over param_groups, the scheduler partial over the optimizer
    and the run's step count, stepped once per optimisation step."""
    cfg = composed(compose_cfg, tmp_path, "optimizer", optimizer, f"scheduler={scheduler}")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    factory, no_weight_decay = build_optimizer(cfg.optimizer)
    opt = factory(params=param_groups(net, no_weight_decay))
    assert isinstance(opt, torch.optim.Optimizer)
    base_lr = opt.param_groups[0]["lr"]
    if cfg.scheduler is None:
        return
    sched = instantiate(cfg.scheduler)(optimizer=opt, total_steps=20)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 <= lr <= base_lr for lr in lrs) and lrs[-1] < lrs[len(lrs) // 2], "the LR must decay"


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "trainer", option)
    trainer = build_trainer(cfg.trainer)
    assert isinstance(trainer, Trainer)
    assert Path(trainer.default_root_dir) == tmp_path  # checkpoints and logs land in the run folder
    if option.startswith("ddp"):
        assert isinstance(trainer.strategy, DDPStrategy)
    if option == "ddp":
        assert cfg.trainer.sync_batchnorm is True  # the module converts BatchNorm to SyncBatchNorm from it
    if option == "ddp_cpu":
        assert trainer.num_devices == 2 and trainer.strategy.process_group_backend == "gloo"


@pytest.mark.parametrize("option", options("debug"))
def test_debug(option: str, compose_cfg, tmp_path: Path) -> None:
    """Every debug option runs in one CPU process without loader workers, whatever trainer is asked for:
    debug comes after trainer in train.yaml's defaults."""
    cfg = composed(compose_cfg, tmp_path, "debug", option, "trainer=ddp")
    trainer = build_trainer(cfg.trainer)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 1
    assert instantiate(cfg.data).num_workers == 0
    assert cfg.task_name == "debug"  # runs go to logs/debug/, apart from real ones


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "callbacks", option)
    callbacks = instantiate_callbacks(cfg.callbacks)
    assert all(isinstance(c, Callback) for c in callbacks)
    entries = [name for name, entry in (cfg.callbacks or {}).items() if entry is not None]
    assert len(callbacks) == len(entries), "one callback per entry"


@pytest.mark.parametrize("option", options("logger"))
def test_logger(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "logger", option)
    loggers = instantiate_loggers(cfg.logger)
    assert loggers and all(isinstance(lg, Logger) for lg in loggers)
    for logger in loggers:
        if isinstance(logger, CSVLogger | TensorBoardLogger):  # the file loggers write into the run folder
            assert Path(logger.log_dir).is_relative_to(tmp_path), logger.log_dir


@pytest.mark.parametrize("option", options("paths"))
def test_paths(option: str, compose_cfg, tmp_path: Path) -> None:
    cfg = composed(compose_cfg, tmp_path, "paths", option)
    assert Path(cfg.paths.root_dir).resolve() == PROJECT_ROOT  # from $PROJECT_ROOT (seg_template.paths)
    assert Path(cfg.paths.data_dir).parent == Path(cfg.paths.root_dir)


def sweep_values(key: str, values: str) -> list[str]:
    """The single values a sweep parameter stands for: each of ``a,b`` / ``choice(a,b)`` / ``range(...)``,
    the two ends of an ``interval(low, high)`` (Optuna's continuous ranges, log-tagged or not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={values}")
    if override.is_interval_sweep():
        interval = override.value()
        return [str(interval.start), str(interval.end)]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


@pytest.mark.parametrize("option", options("hparams_search"))
def test_hparams_search(option: str, compose_cfg, hydra_node, tmp_path: Path) -> None:
    skip_unless_importable(*OPTIONAL_PACKAGES["hparams_search"].get(option, ()))
    params = hydra_node(f"hparams_search={option}").sweeper.params
    assert params, "a search space must list parameters"
    for key, values in params.items():  # each value of the space is a valid override that composes
        for value in sweep_values(str(key), str(values)):
            composed(compose_cfg, tmp_path, "hparams_search", option, f"{key}={value}")


@pytest.mark.parametrize("option", options("launcher"))
def test_launcher(option: str, hydra_node) -> None:
    skip_unless_importable(*OPTIONAL_PACKAGES["launcher"].get(option, ()))
    launcher = hydra_node(f"launcher={option}").launcher
    assert get_class(launcher._target_)  # the plugin's launcher class exists in this environment


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment(option: str, compose_cfg, tmp_path: Path) -> None:
    """A recipe builds every part: data, network (without its pretrained weights: nothing is downloaded in
    tests), loss, optimizer and scheduler, trainer."""
    cfg = composed(compose_cfg, tmp_path, "experiment", option, "model.pretrained=null")
    datamodule = instantiate(cfg.data)
    assert num_classes_out(cfg.model) == datamodule.num_classes
    check_loss(cfg.loss, datamodule.num_classes, datamodule.ignore_index)
    optimizer = build_optimizer(cfg.optimizer)[0](params=[nn.Parameter(torch.zeros(3))])
    if cfg.get("scheduler"):
        instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=10)
    assert isinstance(build_trainer(cfg.trainer), Trainer)


def test_default_callbacks(compose_cfg) -> None:
    callbacks = instantiate_callbacks(compose_cfg().callbacks)
    assert sum(isinstance(c, ProgressBar) for c in callbacks) == 1
    assert any(isinstance(c, LearningRateMonitor) for c in callbacks)
    assert not any(isinstance(c, EarlyStopping) for c in callbacks)
    (checkpoint,) = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/mIoU", "max", True)


def test_early_stopping_and_disabling_a_callback(compose_cfg) -> None:
    callbacks = instantiate_callbacks(
        compose_cfg(overrides=["callbacks=[default,early_stopping]", "callbacks.rich_progress_bar=null"]).callbacks)
    assert any(isinstance(c, EarlyStopping) for c in callbacks)
    assert not any(isinstance(c, ProgressBar) for c in callbacks)


def test_csv_logger_writes_into_the_output_dir(compose_cfg, tmp_path: Path) -> None:
    (logger,) = instantiate_loggers(compose_cfg(output_dir=tmp_path).logger)
    assert Path(logger.log_dir) == tmp_path


def test_run_and_sweep_dirs_under_logs(hydra_node) -> None:
    node = hydra_node()
    assert "/logs/train/runs/" in node.run.dir and "/logs/train/multiruns/" in node.sweep.dir


def test_default_recipe(compose_cfg) -> None:
    cfg = compose_cfg(overrides=["trainer=default"])
    assert cfg.trainer.accelerator == "auto" and cfg.optimized_metric == "val/mIoU"
    assert cfg.model.num_classes == cfg.data.num_classes and cfg.loss.main.ignore_index == cfg.data.ignore_index


def test_unknown_option_lists_the_choices(compose_cfg) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(overrides=["loss=foo"])
    message = str(err.value)
    assert "foo" in message and all(name in message for name in options("loss"))


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_entry_configs_require_a_checkpoint(name: str, compose_cfg) -> None:
    assert OmegaConf.is_missing(compose_cfg(name), "ckpt_path")


def test_eval_and_predict_share_the_inference_settings(compose_cfg) -> None:
    assert compose_cfg("eval").inference == compose_cfg("predict").inference


def test_optional_package_check_survives_a_missing_parent_package() -> None:
    """An option whose plugin lives in an absent namespace package (hydra_plugins.* without any Hydra plugin)
    is skipped, not an error."""
    with pytest.raises(pytest.skip.Exception, match="no_such_parent_pkg.child"):
        skip_unless_importable("no_such_parent_pkg.child")
    skip_unless_importable("json.decoder")  # present: no skip
