"""Colours for class maps: the Pascal VOC colour scheme and the palette a data config's dataset declares.

``predict.py`` colours its masks with these; the VOC dataset takes its palette from the same function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig


def default_palette(num_classes: int) -> np.ndarray:
    """``uint8[num_classes, 3]``: Pascal VOC's colour map, distinct colours for any class count.

    The bits of the class index are spread over R, G, B from the high bit down (class 1 -> (128, 0, 0)).
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        label, shift = index, 7
        while label:
            for channel in range(3):
                palette[index, channel] |= ((label >> channel) & 1) << shift
            label >>= 3
            shift -= 1
    return palette


def dataset_palette(data_cfg: DictConfig) -> np.ndarray:
    """``uint8[num_classes, 3]``: the ``palette`` of the data config's dataset class, else ``default_palette``.

    The class is the ``_target_`` of ``data.val_set`` (or ``data.train_set``); a dataset whose palette has
    fewer colours than ``data.num_classes`` (or none, like the folder dataset) gets the VOC colours.
    """
    from hydra.utils import get_class  # only here: importing a dataset must not pull in Hydra

    num_classes = int(data_cfg.num_classes)
    split = data_cfg.get("val_set") or data_cfg.get("train_set")
    palette = getattr(get_class(split._target_), "palette", None) if split is not None else None
    if palette is None or len(palette) < num_classes:
        return default_palette(num_classes)
    return np.asarray(palette, dtype=np.uint8)[:num_classes]
