"""A fast_dev_run training through the real entry point on each real dataset's fixture."""

from __future__ import annotations

import math

import pytest

from seg_template.data.class_weights import class_weights, pixel_statistics, save_weights
from seg_template.data.config import build_split, compose_data_config
from seg_template.train import train
from tests.fixtures import (
    FOLDER_COLORS,
    folder_class_names,
    make_ade20k,
    make_cityscapes,
    make_folder,
    make_voc,
)

# small crops and no worker processes: the recipes' 512x1024 crops would only be padding on a 32x64 fixture
FAST = ["data.train_transform.crop_size=[32,32]", "data.batch_size=2", "data.num_workers=0",
        "data.persistent_workers=false", "data.pin_memory=false", "++trainer.fast_dev_run=true"]


@pytest.fixture
def run(compose_cfg):
    """``run(tmp_path, overrides)``: the metrics of a fast_dev_run training with ``overrides``."""

    def _run(tmp_path, overrides: list[str]) -> dict:
        metrics, _ = train(compose_cfg(overrides=[*overrides, *FAST], output_dir=tmp_path / "out"))
        return metrics

    return _run


def assert_trained(metrics: dict) -> None:
    losses = [float(v) for k, v in metrics.items() if k.startswith("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses), metrics


@pytest.mark.slow
def test_train_cityscapes_label_ids_with_hrnet_weights(run, tmp_path) -> None:
    root = make_cityscapes(tmp_path / "cs", label_type="labelIds")
    assert_trained(run(tmp_path, ["data=cityscapes", f"data.root={root}", "loss=wce",
                                  "data/class_weights=cityscapes_hrnet"]))


@pytest.mark.slow
def test_train_voc_with_sbd(run, tmp_path) -> None:
    root = make_voc(tmp_path / "voc", sbd_extra=2)
    assert_trained(run(tmp_path, ["data=voc", f"data.root={root}", "data.train_set.use_aug=true"]))


@pytest.mark.slow
def test_train_ade20k(run, tmp_path) -> None:
    root = make_ade20k(tmp_path / "ade")
    assert_trained(run(tmp_path, ["data=ade20k", f"data.root={root}"]))


@pytest.mark.slow
def test_train_folder_rgb_masks_with_computed_weights(run, tmp_path) -> None:
    root = make_folder(tmp_path / "mine", num_classes=3, mask_format="rgb", split_mode="lists")
    data = [f"data.root={root}", "data.num_classes=3", f"data.class_names=[{','.join(folder_class_names(3))}]",
            "data.train_set.mask_format=rgb", "data.train_set.colors=[[0,0,0],[255,0,0],[0,255,0]]"]
    assert [list(c) for c in FOLDER_COLORS[:3]] == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    counts, present = pixel_statistics(build_split(
        compose_data_config(["+data=folder", f"+paths.data_dir={root}", *data], config_name=None), "train"))
    weights = save_weights(class_weights(counts, present, "median"), tmp_path / "weights.npy")
    assert_trained(run(tmp_path, ["data=folder", *data, "loss=wce", f"data.class_weights={weights}"]))
