"""Validation prediction grids (seg_template/callbacks/visuals.py): display maths, the grid's layout, and a
short fit that writes one PNG per validation and hands the same picture to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_template.callbacks.visuals import (
    GAP,
    IGNORE_COLOUR,
    ValidationImages,
    header_height,
    prediction_grid,
    to_display,
)
from seg_template.data.preflight import sample_indices as spread_indices  # the grid's fixed samples
from seg_template.data.synthetic import CLASS_NAMES, PALETTE
from seg_template.data.transforms import eval_transform
from seg_template.train import train
from tests.helpers import TINY, skip_unless_importable


def test_samples_are_spread_and_fixed() -> None:
    assert spread_indices(200, 4) == [0, 66, 133, 199]
    assert spread_indices(200, 4) == spread_indices(200, 4)
    assert spread_indices(3, 8) == [0, 1, 2]  # never more than the split holds
    assert spread_indices(1, 4) == [0]


def test_display_undoes_the_imagenet_normalisation() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    transform = eval_transform()
    normalised = torch.from_numpy(transform(image=image)["image"].transpose(2, 0, 1).copy())
    assert np.abs(to_display(normalised, transform).astype(int) - image).max() <= 1
    # no Normalize in the pipeline: the dataset scaled the pixels to [0, 1]
    assert np.array_equal(to_display(torch.from_numpy(image.transpose(2, 0, 1) / 255.0), None), image)


def test_grid_layout_and_ignored_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    target = rng.integers(0, 6, (32, 48))
    target[:4] = 255
    rows = [(image, target, rng.integers(0, 6, (32, 48))) for _ in range(3)]
    grid = prediction_grid(rows, np.array(PALETTE, np.uint8), CLASS_NAMES, 255, title="epoch 0", tile_size=96)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    # 48 -> 96 wide, so 32 -> 64 high: each row is as tall as its tiles, no blank band under them
    assert grid.shape[0] == header_height(96, True) + 3 * (64 + GAP)
    assert grid.shape[1] > 3 * (96 + GAP)  # three tiles and the legend at the right
    # the ground-truth tile (second column) shows the ignored band (top rows of the mask) in the void colour
    top = header_height(96, True)
    # 48 -> 96 wide, so 32 -> 64 high: the 4 ignored rows become 8
    band = grid[top:top + 8, GAP + 96 + GAP:GAP + 2 * 96 + GAP]
    assert (band == IGNORE_COLOUR).all()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="num_images"):
        ValidationImages("x", num_images=0)


@pytest.mark.slow
def test_a_short_fit_writes_one_grid_per_validation(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    skip_unless_importable("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    calls = []
    original = SummaryWriter.add_image

    def spy(self, tag, img_tensor, *args, **kwargs):
        calls.append((tag, np.asarray(img_tensor).shape, kwargs.get("global_step")))
        return original(self, tag, img_tensor, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_image", spy)
    cfg = compose_cfg(overrides=[*TINY, "trainer.max_epochs=2", "test=false", "logger=many",
                                 "callbacks.reports=null", "callbacks.val_images.num_images=3",
                                 "callbacks.val_images.tile_size=64"],
                      output_dir=tmp_path)
    _, objects = train(cfg)
    pictures = sorted((tmp_path / "images").iterdir())
    assert [p.name for p in pictures] == ["val_epoch_0.png", "val_epoch_1.png"]  # no sanity-check picture
    width, height = Image.open(pictures[-1]).size
    assert height == header_height(64, True) + 3 * (64 + GAP)  # 3 rows of 32x32 images enlarged to 64
    assert width > 3 * (64 + GAP)
    assert [(tag, shape) for tag, shape, _ in calls] == [("val/predictions", (height, width, 3))] * 2
    assert [step for *_, step in calls] == [2, 4]  # 2 steps per epoch (8 images, batch 4)
    callback = next(c for c in objects["callbacks"] if isinstance(c, ValidationImages))
    assert callback.indices == [0, 2, 3]  # the same samples both epochs, from all over the split
    assert objects["module"].net.training  # train mode restored
