"""Compose the project's data config the way the entry points do, and build split datasets from it.

Used by the dataset tools (``scripts/check_dataset.py``, ``scripts/compute_class_weights.py``), which need
the datasets but neither a model nor a trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from seg_template.data.base import SegmentationDataset
from seg_template.data.paired import PairedFilesDataset
from seg_template.errors import ConfigError
from seg_template.paths import CONFIG_DIR, export_project_root, register_resolvers

SPLITS = ("train", "val", "test")


def compose_data_config(overrides: Sequence[str] = (), config_name: str | None = "train",
                        config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The resolved ``data`` node of ``configs/<config_name>.yaml`` with command-line style ``overrides``.

    ``config_name=None`` composes no primary config: the overrides must then add the data group
    (``+data=voc``) and anything it interpolates (``+paths.data_dir=...``).
    """
    # configs/paths/default.yaml roots everything at $PROJECT_ROOT
    export_project_root()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    # `${hydra:...}` interpolations (e.g. paths.root_dir from hydra.runtime.cwd) need the global HydraConfig:
    # set while the data node is resolved, then put back (a caller's own Hydra run, or none, is left as it was)
    holder = HydraConfig.instance()
    before = holder.cfg
    holder.set_config(cfg)
    try:
        data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    finally:
        holder.cfg = before
    assert isinstance(data, DictConfig)
    return data


def split_config(data_cfg: DictConfig, split: str) -> DictConfig | None:
    """``data.<split>_set`` (a partial dataset config) or None if the config has no such split."""
    node = data_cfg.get(f"{split}_set")
    return node if node is not None else None


def build_split(data_cfg: DictConfig, split: str, strict: bool = True,
                files_only: bool = True) -> SegmentationDataset:
    """Instantiate ``data.<split>_set`` without transforms (raw images and masks).

    ``files_only``: only file-backed datasets (``PairedFilesDataset``) qualify (the dataset doctor reads
    files on disk); otherwise any ``SegmentationDataset`` (e.g. the synthetic one, for class weights).
    ``strict=False`` records unpaired files on the dataset instead of raising.
    """
    node = split_config(data_cfg, split)
    if node is None:
        raise KeyError(f"the data config has no {split}_set")
    target = node.get("_target_")
    cls = get_class(target) if target else None
    if not files_only and cls is not None and issubclass(cls, SegmentationDataset) \
            and not issubclass(cls, PairedFilesDataset):
        kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
        return cls(**kwargs, transform=None, ignore_index=data_cfg.get("ignore_index", 255))
    if cls is None or not issubclass(cls, PairedFilesDataset):
        raise ConfigError(f"data.{split}_set ({target}) is not a file-backed dataset (images + masks on disk); "
                          "the dataset tools need one such as data=cityscapes|voc|ade20k|folder")
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
    kwargs.update(transform=None, ignore_index=data_cfg.get("ignore_index", 255), strict=strict)
    # called directly rather than through hydra.utils.instantiate so that layout errors reach the user
    # unwrapped (InstantiationException would bury the expected-layout message in a repr)
    return cls(**kwargs)
