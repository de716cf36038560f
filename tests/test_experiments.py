"""Published recipes in configs/experiment: their values compose as published, and each one trains a
fast_dev_run step on a tiny fixture of its dataset through the real entry point (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from seg_template.build import build_net
from tests.fixtures import make_ade20k, make_cityscapes, make_voc
from tests.helpers import skip_unless_builder_importable

CITYSCAPES_HRNET_WEIGHTS = [0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                            0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507]
#: experiment -> (dataset fixture builder, recipe values that must come out of the composed config)
RECIPES = {
    "cityscapes_hrnet_w48_ohem": (make_cityscapes, {
        "data.num_classes": 19, "data.batch_size": 3, "data.train_transform.crop_size": [512, 1024],
        "model.variant": "hrnet_w48", "model.align_corners": False,
        "loss.main._target_": "seg_template.losses.OhemCrossEntropy", "loss.main.thresh": 0.9,
        "loss.main.min_kept": 131072, "loss.main.weight": CITYSCAPES_HRNET_WEIGHTS,
        "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.01, "optimizer.momentum": 0.9,
        "optimizer.weight_decay": 5e-4, "scheduler.power": 0.9, "scheduler.warmup_steps": 0,
        "trainer.max_epochs": 484}),
    "ade20k_hrnet_w48": (make_ade20k, {
        "data.num_classes": 150, "data.batch_size": 4, "data.train_transform.crop_size": [520, 520],
        "model.variant": "hrnet_w48", "model.align_corners": True, "loss.main.align_corners": True,
        "loss.main._target_": "seg_template.losses.OhemCrossEntropy", "loss.main.thresh": 0.9,
        "loss.main.min_kept": 131072, "optimizer.lr": 0.02, "optimizer.weight_decay": 1e-4,
        "scheduler.power": 0.9, "scheduler.warmup_steps": 0, "trainer.max_epochs": 120}),
    "voc_deeplabv3_resnet101": (make_voc, {
        "data.num_classes": 21, "data.batch_size": 4, "data.train_transform.crop_size": [480, 480],
        "model.arch": "deeplabv3_resnet101", "model.aux": True, "model.pretrained": "IMAGENET1K_V1",
        "loss.main._target_": "seg_template.losses.CrossEntropy", "loss.aux_weight": 0.5,
        "optimizer.lr": 0.02, "optimizer.momentum": 0.9, "optimizer.weight_decay": 1e-4,
        "scheduler.power": 0.9, "scheduler.warmup_steps": 0, "trainer.max_epochs": 30}),
    "ade20k_segformer_b0": (make_ade20k, {
        "data.num_classes": 150, "data.batch_size": 2, "data.train_transform.crop_size": [512, 512],
        "data.train_transform.scale_range": [0.5, 2.0], "model._target_": "seg_template.models.smp.smp_model",
        "model.arch": "segformer", "model.encoder": "mit_b0", "model.pretrained": "mit_b0.imagenet",
        "model.align_corners": False, "loss.main._target_": "seg_template.losses.CrossEntropy",
        "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 6e-5, "optimizer.betas": [0.9, 0.999],
        "optimizer.weight_decay": 0.01, "scheduler.power": 1.0, "scheduler.warmup_steps": 1500,
        "scheduler.warmup_ratio": 1e-6, "trainer.max_steps": 160000, "trainer.max_epochs": -1}),
}
# small crops (padded: the fixtures are 32 px tall; at 32 px HRNet's stride-32 branch is 1x1, its batch norm
# sees 2 values per channel and one step blows the weights up), no workers, no downloads (no ImageNet weights)
FAST = ["data.train_transform.crop_size=[64,64]", "data.batch_size=2", "data.num_workers=0",
        "data.persistent_workers=false", "data.pin_memory=false", "model.pretrained=null",
        "++trainer.fast_dev_run=true"]


def select(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_values(name, compose_cfg, tmp_path):
    cfg = compose_cfg(overrides=[f"experiment={name}"], output_dir=tmp_path)
    for key, expected in RECIPES[name][1].items():
        value = select(cfg, key)
        value = list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
        assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected, key


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_model_builds_for_its_dataset(name, compose_cfg, tmp_path):
    cfg = compose_cfg(overrides=[f"experiment={name}", "model.pretrained=null"], output_dir=tmp_path)
    skip_unless_builder_importable(cfg.model._target_)  # smp's SegFormer: the `.[smp]` extra
    with torch.device("meta"):
        outputs = build_net(cfg.model)[0].train()(torch.empty(2, 3, 64, 64))
    out = outputs["out"] if isinstance(outputs, dict) else outputs
    assert out.shape[1] == cfg.data.num_classes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_fast_dev_run_on_fixture(name, compose_cfg, tmp_path):
    from seg_template.train import train

    root = RECIPES[name][0](tmp_path / "data")
    cfg = compose_cfg(overrides=[f"experiment={name}", f"data.root={root}", *FAST], output_dir=tmp_path / "out")
    skip_unless_builder_importable(cfg.model._target_)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core box: OpenMP spin-waits make 2 threads far slower under load
    try:
        metrics, objects = train(cfg)
    finally:
        torch.set_num_threads(threads)
    losses = {k: float(v) for k, v in metrics.items() if k.startswith("train/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), metrics
    if name.startswith("voc"):
        assert "train/loss/aux" in losses  # the aux head is trained with weight 0.5
    assert objects["module"].net.__class__.__name__ in ("HRNetSegmentation", "NativeStrideSegmenter",
                                                         "PaddedSegformer")
