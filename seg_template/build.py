"""What the train / eval / predict tasks share: building the module, callbacks and loggers from the config,
the checkpoint a task needs, and what a task reports back to Hydra.

Heavy imports (torch, Lightning) stay inside the functions so that ``python train.py --help`` answers before
any of them is loaded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from seg_template.errors import ConfigError
from seg_template.options import require

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning import Callback
    from pytorch_lightning.loggers import Logger

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule | None = None,
                 training: bool = True) -> pl.LightningModule:
    """The ``SegmentationModule`` from ``cfg.model``, ``cfg.loss`` and, when ``training``, ``cfg.optimizer``
    and ``cfg.scheduler`` (eval needs neither). Class count, ignore index and names come from the datamodule
    when given, else from ``cfg.data``."""
    from hydra.utils import instantiate

    from seg_template.module import SegmentationModule
    from seg_template.optim import NO_DECAY_KINDS

    num_classes = int(datamodule.num_classes if datamodule is not None else cfg.data.num_classes)
    model_classes = cfg.model.get("num_classes")
    if model_classes is not None and model_classes != num_classes:
        raise ConfigError(f"model.num_classes={model_classes} but data.num_classes={num_classes}: "
                          "leave model.num_classes at ${data.num_classes}")
    if datamodule is not None:
        ignore_index, class_names = datamodule.ignore_index, list(datamodule.class_names)
    else:
        ignore_index, class_names = int(cfg.data.ignore_index), list(cfg.data.get("class_names") or [])
    optimizer = scheduler = None
    no_weight_decay: tuple[str, ...] = NO_DECAY_KINDS
    if training:
        optimizer, no_weight_decay = build_optimizer(cfg.optimizer)
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    net, align_corners = build_net(cfg.model)
    loss = instantiate(cfg.loss)
    check_loss_settings(loss, align_corners, ignore_index)
    return SegmentationModule(
        net=net,
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        num_classes=num_classes,
        ignore_index=ignore_index,
        class_names=class_names,
        align_corners=align_corners,
        channels_last=bool(cfg.model.get("channels_last", False)),
        no_weight_decay=no_weight_decay,
    )


def build_optimizer(optimizer_cfg: DictConfig) -> tuple[Any, tuple[str, ...]]:
    """``(partial, no_weight_decay)`` from ``cfg.optimizer``: the optimiser's partial, to be called on
    ``optim.param_groups(net, no_weight_decay)``. ``no_weight_decay`` is ours (which parameter kinds do not
    decay), so the optimiser's constructor never sees it."""
    from hydra.utils import instantiate

    from seg_template.optim import NO_DECAY_KINDS, check_no_weight_decay

    factory_cfg = optimizer_cfg.copy()
    with open_dict(factory_cfg):
        no_weight_decay = factory_cfg.pop("no_weight_decay", NO_DECAY_KINDS)
    if OmegaConf.is_config(no_weight_decay):
        no_weight_decay = OmegaConf.to_container(no_weight_decay, resolve=True)
    return instantiate(factory_cfg), check_no_weight_decay(no_weight_decay)


def check_loss_settings(loss: Any, align_corners: bool, ignore_index: int) -> None:
    """The loss's terms upsample with the model's convention (``model.align_corners``) and ignore the data's
    label (``data.ignore_index``), as the metrics and inference do; a ``ConfigError`` naming both keys when a
    term says otherwise (typed over the interpolation the loss configs write, or a forker's loss config)."""
    terms = loss.terms() if hasattr(loss, "terms") and callable(loss.terms) else [("loss.main", loss)]
    settings = (("align_corners", align_corners, "model.align_corners", "upsample the logits unlike the model"),
                ("ignore_index", ignore_index, "data.ignore_index", "ignore another label than the metrics"))
    for key, term in terms:
        for name, expected, source, effect in settings:
            value = getattr(term, name, None)
            if value is not None and value != expected:
                raise ConfigError(f"{key}.{name}={value} but {source}={expected}: the loss would {effect}; "
                                  f"leave it at ${{{source}}} (the loss configs' default)")


def build_net(model_cfg: DictConfig) -> tuple[Any, bool]:
    """``(net, align_corners)`` from a model config. ``align_corners`` is the model's upsampling convention
    (HRNet-OCR: true): the loss, the metrics and inference all read it from here, never from each other.

    ``model.channels_last: true`` (every model config has the key; the builders never see it) stores the
    net's 4-D weights channels-last (NHWC), which tensor cores and cuDNN prefer; the module feeds it
    channels-last images (``SegmentationModule.channels_last``). Parameter names and values are unchanged, so
    checkpoints load either way."""
    import torch
    from hydra.utils import instantiate

    channels_last = model_cfg.get("channels_last", False)
    if channels_last not in (True, False):
        raise ConfigError(f"model.channels_last={channels_last!r}: true or false")
    builder_cfg = model_cfg.copy()
    with open_dict(builder_cfg):
        builder_cfg.pop("channels_last", None)
    net = instantiate(builder_cfg)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, bool(model_cfg.get("align_corners", False))


def require_ckpt_path(cfg: DictConfig, script: str) -> str:
    """``cfg.ckpt_path``, or a ``ConfigError`` that shows how to pass it."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError(f"ckpt_path is required: python {script} "
                          "ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt")
    return str(cfg.ckpt_path)


def instantiate_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> pl.Trainer:
    """The Trainer of ``cfg.trainer``. Lightning's own checks of its options (``max_epochs=-2``,
    ``precision=bogus``) become a ``ConfigError`` naming them, and options Lightning accepts but then
    fails on mid-fit are refused first."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ProgressBar

    # Lightning accepts check_val_every_n_epoch=0 and fails mid-fit: the option check refuses it first
    require("trainer.check_val_every_n_epoch", cfg.get("check_val_every_n_epoch"))
    extra = {}
    if cfg.get("enable_progress_bar") is None and not any(isinstance(c, ProgressBar) for c in callbacks):
        # callbacks.rich_progress_bar=null means no bar: Lightning would add its own (a live bar in a log file)
        extra["enable_progress_bar"] = False
    try:
        return instantiate(cfg, callbacks=callbacks, logger=loggers or False, **extra)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"trainer: {cause} (check the trainer.* options)") from err


def instantiate_group(cfg: DictConfig | None, kind: type, group: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, logger).

    Raises ``ConfigError`` naming the entry when it is not a dict with ``_target_`` or builds the wrong type.
    """
    from hydra.utils import instantiate

    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config group '{group}' must be a mapping of name -> {{_target_: ...}}, got {cfg!r}")
    for name, entry in cfg.items():
        if entry is None:  # `callbacks.rich_progress_bar=null` switches one entry off
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ConfigError(f"{group}.{name} has no _target_: {entry!r}")
        obj = instantiate(entry)
        if not isinstance(obj, kind):
            raise ConfigError(f"{group}.{name} built a {type(obj).__name__}, expected a {kind.__name__}")
        objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    from pytorch_lightning import Callback

    return instantiate_group(cfg, Callback, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    from pytorch_lightning.loggers import Logger

    return instantiate_group(cfg, Logger, "logger")


def log_hyperparameters(cfg: DictConfig, module: pl.LightningModule, trainer: pl.Trainer) -> None:
    """Send the resolved recipe, the options chosen (``choices``: ``{"loss": "ohem", ...}``, in a Hydra run) and
    the parameter counts to every logger (hparams.yaml for CSV, MLflow params, W&B config); TensorBoard also
    gets :func:`comparable_hparams` for its HParams tab. Rank 0."""
    if not trainer.loggers or trainer.global_rank != 0:
        return
    from seg_template.tracking_loggers import TensorBoardLogger

    resolved = OmegaConf.to_container(cfg, resolve=True)
    hparams: dict[str, Any] = {
        key: resolved.get(key)
        for key in ("data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks",
                    "task_name", "seed", "ckpt_path")
    }
    choices = hydra_choices()
    if choices:
        hparams["choices"] = choices
    params = list(module.parameters())
    hparams["model/params/total"] = sum(p.numel() for p in params)
    hparams["model/params/trainable"] = sum(p.numel() for p in params if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
        if isinstance(logger, TensorBoardLogger):
            logger.log_hparams_view(comparable_hparams(cfg))


#: keys every run's HParams row shows (a sweep's own keys are added: :func:`comparable_hparams`)
COMPARED_KEYS = ("optimizer.lr", "optimizer.weight_decay", "data.batch_size", "trainer.max_epochs", "seed")
#: config groups that pick no part of the recipe
_NOT_RECIPE_GROUPS = ("paths", "callbacks", "logger", "launcher", "hparams_search", "debug")


def hydra_choices() -> dict[str, str]:
    """The option of each config group of this Hydra run (``{"loss": "ohem", "model": "small", ...}``; groups
    left unset, Hydra's own and those that do not shape the recipe left out); empty outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {str(k): str(v) for k, v in HydraConfig.get().runtime.choices.items()
            if v is not None and not str(k).startswith("hydra") and k not in _NOT_RECIPE_GROUPS}


def comparable_hparams(cfg: DictConfig) -> dict[str, int | float | str | bool]:
    """Flat scalars to compare runs by (TensorBoard's HParams tab takes nothing else): the options chosen
    (:func:`hydra_choices`), :data:`COMPARED_KEYS`, and each ``key=value`` of this job's command line (a
    sweep's swept keys: ``optimizer.lr``, ``loss.main.thresh``) with its resolved value; a list or a mapping as
    its text. Keys whose value is null are left out."""
    from hydra.core.hydra_config import HydraConfig

    found: dict[str, int | float | str | bool] = dict(hydra_choices())
    keys = list(COMPARED_KEYS)
    if HydraConfig.initialized():
        groups = HydraConfig.get().runtime.choices  # `loss=ohem` picks a file: its choice is in already
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if "=" in override and key not in groups and not key.startswith(("hydra.", "paths.", "logger.")):
                keys.append(key)
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if OmegaConf.is_config(value):
            value = str(OmegaConf.to_container(value, resolve=True))
        if value is not None:
            found[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return found


def metric_value(metrics: dict[str, Any], name: str | None, required: bool = False) -> float | None:
    """``metrics[name]`` as a float (what a sweeper optimises); None when no name is configured.

    A metric that was not logged (e.g. a run without validation) gives None with a warning, or a
    ``ConfigError`` when ``required`` (a sweeper needs the value to compare jobs).
    """
    if not name:
        return None
    if name not in metrics:
        message = (f"optimized_metric={name!r} was not logged (no validation run?); "
                   f"logged metrics: {sorted(metrics) or 'none'}")
        if required:
            raise ConfigError(message)
        log.warning(message)
        return None
    value = metrics[name]
    return float(value.item() if hasattr(value, "item") else value)


def choices_summary() -> str:
    """One line naming the chosen option of every config group, e.g. ``data=synthetic model=small ...``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    choices = HydraConfig.get().runtime.choices
    return " ".join(f"{k}={v}" for k, v in choices.items()
                    if not k.startswith("hydra/") and k not in ("hydra", "paths") and v is not None)
