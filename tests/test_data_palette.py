"""Class colours: the VOC colour map for any class count, and the palette a data config's dataset declares."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from seg_template.data.cityscapes import CITYSCAPES_PALETTE
from seg_template.data.palette import dataset_palette, default_palette


def test_default_palette_is_the_voc_colour_map() -> None:
    palette = default_palette(256)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette.tolist()}) == 256  # distinct for every byte-sized class count
    # published VOC colours: background, aeroplane, person, tvmonitor
    assert [tuple(palette[i]) for i in (0, 1, 15, 20)] == [(0, 0, 0), (128, 0, 0), (192, 128, 128), (0, 64, 128)]


def _data(target: str, num_classes: int):
    return OmegaConf.create({"num_classes": num_classes, "val_set": {"_target_": target}})


def test_dataset_palette_prefers_the_dataset_class() -> None:
    palette = dataset_palette(_data("seg_template.data.cityscapes.CityscapesDataset", 19))
    assert palette.dtype == np.uint8 and palette.tolist() == [list(c) for c in CITYSCAPES_PALETTE]


def test_dataset_palette_falls_back_to_voc_colours() -> None:
    # the folder dataset declares no class palette; a palette shorter than num_classes is not used either
    assert np.array_equal(dataset_palette(_data("seg_template.data.folder.FolderDataset", 4)), default_palette(4))
    assert np.array_equal(dataset_palette(_data("seg_template.data.synthetic.SyntheticShapes", 9)),
                          default_palette(9))
