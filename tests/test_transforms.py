"""Training / evaluation pipelines: output shapes and dtypes, mask padded with the ignore index, flips."""

from __future__ import annotations

import numpy as np
import pytest

from seg_template.data.base import IMAGENET_MEAN, IMAGENET_STD
from seg_template.data.transforms import ScaleOfReference, eval_transform, train_transform
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


def _shapes_after(transform, height: int, width: int, draws: int = 1) -> set[tuple[int, int]]:
    image, mask = np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint8)
    shapes = set()
    for _ in range(draws):
        out = transform(image=image, mask=mask)
        assert out["image"].shape[:2] == out["mask"].shape
        shapes.add(out["mask"].shape)
    return shapes


def test_hrnet_scale_sampling_sets_the_long_side_in_steps() -> None:
    """HRNet's ADE20K recipe: long side = BASE_SIZE 520 x (0.5 + randint(0, 11) / 10), whatever the image's size."""
    scale = ScaleOfReference(0.5, 1.6, long_side=520, step=0.1)
    for height, width in ((512, 683), (1200, 900)):
        longs = {max(s) for s in _shapes_after(scale, height, width, draws=400)}
        assert longs == {int(520 * (5 + k) / 10 + 0.5) for k in range(12)}


def test_short_and_long_side_take_the_smaller_factor_as_mmseg_keep_ratio() -> None:
    """MMSeg's Resize(scale=(2048, 512), keep_ratio=True): the short side becomes 512 unless the long side
    would pass 2048 (a 5:1 panorama)."""
    scale = ScaleOfReference(1.0, 1.0, short_side=512, long_side=2048)
    assert _shapes_after(scale, 375, 500) == {(512, 683)}  # a VOC image
    assert _shapes_after(scale, 200, 1000) == {(410, 2048)}  # capped by the long side
    uniform = ScaleOfReference(0.5, 2.0, short_side=512)
    shorts = {min(s) for s in _shapes_after(uniform, 375, 500, draws=200)}
    assert min(shorts) >= 256 and max(shorts) <= 1024 and len(shorts) > 50  # uniform, not in steps


def test_train_transform_with_a_size_of_reference_crops_as_before() -> None:
    t = train_transform([64, 64], scale_range=(0.5, 1.6), long_side=100, scale_step=0.1)
    assert _shapes_after(t, 30, 400, draws=20) == {(64, 64)}


def test_eval_transform_resizes_the_image_but_not_the_mask() -> None:
    """HRNet's ADE20K testval (long side 520) and MMSeg's test Resize: scores stay at the label's resolution."""
    image, mask = np.zeros((512, 683, 3), np.uint8), np.zeros((512, 683), np.uint8)
    out = eval_transform(long_side=520)(image=image, mask=mask)
    assert out["image"].shape[:2] == (390, 520) and out["mask"].shape == (512, 683)
    out = eval_transform(short_side=512, long_side=2048)(image=image[:375, :500], mask=mask[:375, :500])
    assert out["image"].shape[:2] == (512, 683) and out["mask"].shape == (375, 500)
    assert eval_transform()(image=image, mask=mask)["image"].shape[:2] == (512, 683)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: train_transform([8, 8], long_side=0), r"data\.train_transform\.long_side=0"),
    (lambda: train_transform([8, 8], scale_step=-0.1), r"data\.train_transform\.scale_step=-0\.1"),
    (lambda: eval_transform(short_side=1.5), r"data\.val_transform\.short_side=1\.5"),
    (lambda: train_transform([8, 8], scale_range=(0.5, 2.0), scale_step=0.4),
     r"scale_step=0\.4 does not divide scale_range \[0\.5, 2\] into whole steps"),
    (lambda: train_transform([8, 8], scale_range=(0.5, 2.0), scale_step=5), r"scale_step=5 does not divide"),
    (lambda: train_transform([8, 8], long_side=30000), r"data\.train_transform\.long_side=30000: expected"),
    (lambda: train_transform([8, 8], scale_range=(0.5, 2.0), long_side=8000),
     r"long_side=8000 with scale_range max 2 resizes images to 16000 px a side \(at most 8192"),
    (lambda: eval_transform(short_side=1), r"data\.val_transform\.short_side=1: expected"),
])
def test_bad_sizes_of_reference_name_the_key(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()
