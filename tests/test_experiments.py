"""Published recipes in configs/experiment: each one's network builds for its dataset, and each one trains a
fast_dev_run step on a tiny fixture of its dataset through the real entry point (slow). Their values are
pinned against the upstream sources in tests/test_recipes.py."""

from __future__ import annotations

import math

import pytest
import torch

from seg_template.build import build_net
from tests.fixtures import make_ade20k, make_cityscapes, make_voc
from tests.helpers import skip_unless_builder_importable

#: experiment -> the builder of a tiny fixture of its dataset (the recipe values: tests/test_recipes.py)
RECIPES = {
    "cityscapes_hrnet_w48_ohem": (make_cityscapes,),
    "ade20k_hrnet_w48": (make_ade20k,),
    "voc_deeplabv3_resnet101": (lambda root: make_voc(root, sbd_extra=2),),  # trainaug: SBD masks too
    "ade20k_segformer_b0": (make_ade20k,),
}
# small crops (padded: the fixtures are 32 px tall; at 32 px HRNet's stride-32 branch is 1x1, its batch norm
# sees 2 values per channel and one step blows the weights up), no workers, no downloads (no ImageNet weights)
FAST = ["data.train_transform.crop_size=[64,64]", "data.batch_size=2", "data.num_workers=0",
        "data.persistent_workers=false", "data.pin_memory=false", "model.pretrained=null",
        "++trainer.fast_dev_run=true",
        # the recipes' sizes of reference at a fixture's scale (520 / 2048 px would resize 48 px images to
        # thousands of pixels, and evaluate ResNet-101 on 512 x 683 on the CPU): still resized, just small
        "data.train_transform.short_side=null", "data.train_transform.long_side=96",
        "data.val_transform.short_side=null", "data.val_transform.long_side=96"]


def select(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


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
        assert "train/loss/aux" in losses  # the aux head is trained (weight 0.4)
    assert objects["module"].net.__class__.__name__ in ("HRNetSegmentation", "NativeStrideSegmenter",
                                                         "PaddedSegformer")
