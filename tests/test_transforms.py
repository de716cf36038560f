"""Training / evaluation pipelines: output shapes and dtypes, mask padded with the ignore index, flips."""

from __future__ import annotations

import numpy as np
import pytest

from seg_template.data.base import IMAGENET_MEAN, IMAGENET_STD
from seg_template.data.transforms import eval_transform, train_transform
from seg_template.errors import ConfigError


def _sample(h: int = 40, w: int = 50) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 200, np.uint8)
    mask = np.zeros((h, w), np.uint8)  # all class 0: any 255 in the output must come from padding
    return image, mask


def test_small_image_is_padded_with_ignore_index_never_zero() -> None:
    image, mask = _sample()
    t = train_transform([64, 80], scale_range=(1.0, 1.0), hflip=False, ignore_index=255)
    out = t(image=image, mask=mask)
    assert out["image"].shape == (64, 80, 3) and out["image"].dtype == np.float32
    assert out["mask"].shape == (64, 80)
    values, counts = np.unique(out["mask"], return_counts=True)
    assert values.tolist() == [0, 255]
    assert counts.tolist() == [40 * 50, 64 * 80 - 40 * 50]
    # padded image pixels are black before normalisation: (0 - mean) / std
    corner = out["image"][0, 0]
    np.testing.assert_allclose(corner, [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
                               atol=1e-5)


def test_other_ignore_index_is_used_for_padding() -> None:
    image, mask = _sample(10, 10)
    out = train_transform([16, 16], scale_range=(1.0, 1.0), ignore_index=7)(image=image, mask=mask)
    assert set(np.unique(out["mask"]).tolist()) == {0, 7}


def test_random_scale_keeps_labels_nearest_and_crop_size() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (60, 60), dtype=np.uint8)
    t = train_transform([32, 48], scale_range=(0.5, 2.0), color_jitter=0.3)
    for _ in range(10):
        out = t(image=image, mask=mask)
        assert out["image"].shape == (32, 48, 3) and out["mask"].shape == (32, 48)
        # nearest-neighbour resize: no interpolated label values appear
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2, 3, 255}


def test_hflip_mirrors_image_and_mask_together() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 1
    t = train_transform([8, 8], scale_range=(1.0, 1.0), hflip=True)
    seen = set()
    for _ in range(30):
        out = t(image=image, mask=mask)
        left_bright = out["image"][0, 0, 0] > 0
        assert (out["mask"][0, 0] == 1) == left_bright
        seen.add(bool(left_bright))
    assert seen == {True, False}


def test_eval_transform_only_normalises() -> None:
    image, mask = _sample(33, 47)
    out = eval_transform()(image=image, mask=mask)
    assert out["image"].shape == (33, 47, 3)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_allclose(out["image"][0, 0, 0], (200 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"crop_size": [0, 8]}, "crop_size"),
    ({"crop_size": [8, 8, 8]}, "crop_size"),
    ({"crop_size": [8, 8], "scale_range": (2.0, 1.0)}, "scale_range"),
    ({"crop_size": [8, 8], "color_jitter": -1}, "color_jitter"),
    ({"crop_size": [8, 8], "scale_range": (0.0, 1.0)}, r"scale_range=\[0\.0, 1\.0\]: expected a list of 2 finite "
                                                        r"numbers > 0, got 0\.0"),
    ({"crop_size": [8, 8], "scale_range": [0.5]}, r"scale_range=\[0\.5\]: expected a list of 2"),
    # a cv2.error in the middle of the first epoch, before
    ({"crop_size": [64, 64], "scale_range": (0.001, 0.002)}, r"scale_range=\[0\.001, 0\.002\]: a 64x64 image "
                                                             r"\(the crop's size\) scaled by 0\.001 keeps no pixel"),
])
def test_bad_arguments_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=rf"data\.train_transform\.{match}"):
        train_transform(**kwargs)


def test_an_image_far_smaller_than_the_crop_keeps_one_pixel() -> None:
    """OpenCV refuses to resize to 0 pixels: a 3-pixel-high strip at an accepted scale of 0.1 keeps 1 row."""
    image, mask = _sample(3, 200)
    t = train_transform([16, 16], scale_range=(0.1, 0.1), hflip=False)  # 0.1 * 16 >= 1: accepted
    out = t(image=image, mask=mask)
    assert out["image"].shape == (16, 16, 3)
    assert (out["mask"] == 0).sum() == 16, "one row of the strip, as wide as the crop; the rest is padding"
