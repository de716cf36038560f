"""SegDataModule: batches (shapes, dtypes), loader options, and the errors a wrong data config gets."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch

from seg_template.data.datamodule import SegDataModule
from seg_template.data.synthetic import CLASS_NAMES, SyntheticShapes
from seg_template.data.transforms import eval_transform, train_transform
from seg_template.errors import ConfigError
from tests.helpers import data_cfg, options


def _dm(**overrides) -> SegDataModule:
    kwargs = dict(
        train_set=functools.partial(SyntheticShapes, split="train", length=6, image_size=40),
        val_set=functools.partial(SyntheticShapes, split="val", length=3, image_size=[40, 48]),
        test_set=None,
        train_transform=train_transform([32, 32], scale_range=(0.75, 1.25)),
        val_transform=eval_transform(),
        num_classes=6, ignore_index=255, class_names=list(CLASS_NAMES), batch_size=4, num_workers=0,
        pin_memory=False, persistent_workers=True,
    )
    kwargs.update(overrides)
    return SegDataModule(**kwargs)


def test_train_and_val_batches() -> None:
    dm = _dm()
    dm.setup("fit")
    assert dm.num_classes == 6 and dm.ignore_index == 255 and dm.class_names == CLASS_NAMES
    train = list(dm.train_dataloader())
    assert len(train) == 1  # 6 samples, batch 4, drop_last
    batch = train[0]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.int64
    assert len(batch["name"]) == 4
    val = list(dm.val_dataloader())
    assert [b["image"].shape[0] for b in val] == [3]  # no drop_last: every val image counts
    assert val[0]["image"].shape == (3, 3, 40, 48)
    assert set(val[0]["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}


def test_persistent_workers_only_with_workers() -> None:
    assert _dm(num_workers=0, persistent_workers=True).persistent_workers is False
    dm = _dm(num_workers=1, persistent_workers=True)
    dm.setup("fit")
    loader = dm.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1


def test_class_count_mismatch_names_both_numbers() -> None:
    dm = _dm(num_classes=7, class_names=[])
    with pytest.raises(ValueError, match=r"6 classes.*data.num_classes is 7"):
        dm.setup("fit")


def test_class_names_length_must_match() -> None:
    with pytest.raises(ValueError, match="3 names.*6"):
        _dm(class_names=["a", "b", "c"])


def test_dataset_instead_of_partial_is_explained() -> None:
    dm = _dm(train_set=SyntheticShapes("train", 4, image_size=32))
    with pytest.raises(ConfigError, match=r"data.train_set.*_partial_: true"):
        dm.setup("fit")


def test_factory_with_wrong_arguments_names_the_split() -> None:
    dm = _dm(val_set=functools.partial(SyntheticShapes, split="val", length=3, no_such_option=1))
    with pytest.raises(ConfigError, match=r"data.val_set could not be built.*no_such_option"):
        dm.setup("fit")


def test_dataset_errors_keep_their_type_and_name_the_split() -> None:
    dm = _dm(val_set=functools.partial(SyntheticShapes, split="val", length=3, image_size=4))
    with pytest.raises(ValueError, match="image_size") as info:
        dm.setup("validate")
    assert "data.val_set" in "".join(getattr(info.value, "__notes__", ["data.val_set"]))


def test_missing_test_split_only_fails_when_testing() -> None:
    dm = _dm()
    dm.setup(None)  # builds train and val, skips the absent test split
    with pytest.raises(ValueError, match="data.test_set is null"):
        dm.setup("test")


def test_train_set_smaller_than_batch_is_an_error() -> None:
    dm = _dm(batch_size=8)
    dm.setup("fit")
    with pytest.raises(ValueError, match="fewer than data.batch_size=8"):
        dm.train_dataloader()


def test_synthetic_config_instantiates() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from seg_template.paths import CONFIG_DIR

    cfg = OmegaConf.create({"data": OmegaConf.load(CONFIG_DIR / "data" / "synthetic.yaml")})
    cfg.data.train_set.length, cfg.data.val_set.length = 4, 2
    dm = instantiate(cfg.data)
    dm.setup("fit")
    size = tuple(cfg.data.train_set.image_size)
    assert next(iter(dm.val_dataloader()))["image"].shape[-2:] == size
    assert dm.class_names == CLASS_NAMES


def test_eval_batch_size_applies_to_val_only() -> None:
    dm = _dm(eval_batch_size=1)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape[0] == 4
    assert [b["image"].shape[0] for b in dm.val_dataloader()] == [1, 1, 1]
    with pytest.raises(ValueError, match="eval_batch_size"):
        _dm(eval_batch_size=0)


@pytest.mark.parametrize("data", ["voc", "ade20k"])
def test_varied_size_val_images_load_with_the_dataset_config(tmp_path, compose_tmp, data) -> None:
    """VOC / ADE20K val images differ in size: their configs evaluate them one by one (no stack error)."""
    from hydra.utils import instantiate

    from tests.fixtures import make_ade20k, make_voc

    root = (make_voc if data == "voc" else make_ade20k)(tmp_path / "data", splits={"train": 2, "val": 3},
                                                        varied_sizes=True)
    cfg = compose_tmp(f"data={data}", f"data.root={root}")
    dm = instantiate(cfg.data)
    dm.setup("validate")
    sizes = {tuple(b["image"].shape[-2:]) for b in dm.val_dataloader()}
    assert len(sizes) == 3


def test_a_datasets_own_keys_reach_it_through_the_data_node(compose_cfg, tmp_path) -> None:
    """A dataset option (``data.csv``) sits in the data node beside the DataModule's own and reaches the split
    datasets through ``${data.csv}``; the DataModule keeps it and needs no subclass (docs/extending.md)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    dm = _dm(csv="lists/train.csv", label_map={11: 255})
    assert dm.dataset_options == {"csv": "lists/train.csv", "label_map": {11: 255}}
    cfg = compose_cfg(output_dir=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.data.extra_seed = 5  # a new key, read by a split through interpolation
    cfg.data.train_set.seed = "${data.extra_seed}"
    datamodule = instantiate(cfg.data)
    assert datamodule.dataset_options == {"extra_seed": 5} and datamodule.build("train").seed == 5


def test_a_required_value_left_unset_is_named(compose_cfg, tmp_path) -> None:
    """``???`` in a data config (a forker's ``csv: ???``) is one config error naming the key, before anything
    is built, instead of OmegaConf's MissingMandatoryValue from deep inside instantiate."""
    from seg_template.options import problems

    cfg = compose_cfg(overrides=["data.train_set.seed=???"], output_dir=tmp_path)
    assert problems(cfg) == ["data.train_set.seed: a required value ('???' in its config) that is not set: "
                             "give it, e.g. data.train_set.seed=<value>"]
    assert problems(compose_cfg("eval", output_dir=tmp_path)) == []  # ckpt_path: eval.py asks for it itself


def test_class_names_that_differ_from_the_datasets_own_are_named(caplog) -> None:
    """data.class_names label every table; names written for another class order are said, not trusted."""
    swapped = [CLASS_NAMES[1], CLASS_NAMES[0], *CLASS_NAMES[2:]]
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        _dm(class_names=swapped).setup("fit")
    assert f"data.class_names[0] is '{CLASS_NAMES[1]}', but data.train_set (SyntheticShapes) calls class 0 " \
           f"'{CLASS_NAMES[0]}'" in caplog.text and "the same names in another order" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        _dm().setup("fit")
        _dm(class_names=[]).setup("fit")  # none given: numbered, nothing to compare
    assert "data.class_names" not in caplog.text


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_name_the_classes_as_their_datasets_do(name) -> None:
    """A dataset class that names its classes (VOC, Cityscapes, ADE20K, synthetic) and its config agree name
    by name, not only in number (the names are written in Python and in YAML)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    data = data_cfg(name, Path("/nonexistent"))
    target = OmegaConf.select(data, "train_set._target_", default=None)
    own = tuple(getattr(get_class(target), "class_names", ())) if isinstance(target, str) else ()
    if not own or not isinstance(own[0], str):  # names given by the config (folder), or none
        pytest.skip(f"{target} takes its class names from the config")
    assert tuple(data.class_names) == own
