"""SyntheticShapes: determinism, class statistics (shape classes, rare class, ignore band), the disk writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_template.data.synthetic import CLASS_NAMES, RARE_CLASS, SyntheticShapes
from seg_template.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_same_index_seed_split_gives_same_pixels() -> None:
    a = SyntheticShapes("train", 8, image_size=64, cache=False)
    b = SyntheticShapes("train", 8, image_size=64, cache=True)
    for i in (0, 5):
        ia, ma, na = a.load(i)
        ib, mb, nb = b.load(i)
        assert na == nb == f"train_{i:06d}"
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    # a second read from the cache is identical and a copy (transforms may write into it)
    ic, mc, _ = b.load(5)
    np.testing.assert_array_equal(ic, b.load(5)[0])
    ic[:] = 0
    assert b.load(5)[0].any()


def test_other_seed_split_or_index_differ() -> None:
    base = SyntheticShapes("train", 4, image_size=64).load(1)[0]
    assert not np.array_equal(base, SyntheticShapes("train", 4, image_size=64, seed=1).load(1)[0])
    assert not np.array_equal(base, SyntheticShapes("val", 4, image_size=64).load(1)[0])
    assert not np.array_equal(base, SyntheticShapes("train", 4, image_size=64).load(2)[0])


def test_sample_contract_and_size() -> None:
    ds = SyntheticShapes("val", 3, image_size=[48, 80])
    assert len(ds) == 3 and ds.num_classes == len(CLASS_NAMES) == 6
    image, mask, _ = ds.load(0)
    assert image.shape == (48, 80, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 80)
    item = ds[0]
    assert item["image"].shape == (3, 48, 80) and item["mask"].dtype.is_floating_point is False
    with pytest.raises(IndexError, match="3 samples"):
        ds.load(3)


def test_split_statistics_rare_class_and_ignore_band() -> None:
    ds = SyntheticShapes("val", 150, image_size=96, cache=False)
    counts = np.zeros(256, np.int64)
    colour_of_class: dict[int, list[np.ndarray]] = {c: [] for c in range(1, 6)}
    for i in range(len(ds)):
        image, mask, _ = ds.load(i)
        counts += np.bincount(mask.ravel(), minlength=256)
        for c in np.unique(mask):
            if 1 <= c <= 5:
                colour_of_class[int(c)].append(image[mask == c].mean(0))
    labelled = counts[:6].sum()
    share = counts[:6] / labelled
    assert set(np.nonzero(counts)[0]) <= {0, 1, 2, 3, 4, 5, 255}
    assert (share[1:] > 0).all(), f"every foreground class appears: {share}"
    assert share[RARE_CLASS] <= 0.05, f"rare class {CLASS_NAMES[RARE_CLASS]} is {share[RARE_CLASS]:.3f} of labels"
    assert share[RARE_CLASS] < 0.5 * min(share[c] for c in range(1, 6) if c != RARE_CLASS)
    ignore = counts[255] / counts.sum()
    assert 0.01 < ignore < 0.2, f"ignore band covers {ignore:.3f} of the pixels"
    # colour does not give the class away: each class's mean colours spread over most of the range
    for c, colours in colour_of_class.items():
        spread = np.ptp(np.stack(colours), axis=0)
        assert (spread > 120).all(), f"class {CLASS_NAMES[c]} colours span only {spread}"


def test_ignore_band_lies_on_boundaries() -> None:
    ds = SyntheticShapes("train", 1, image_size=96, boundary_width=1)
    _, mask, _ = ds.load(0)
    ignored = mask == 255
    assert ignored.any()
    # every ignored pixel has two different labels (or ignore) in its 3x3 neighbourhood in the clean mask
    clean = SyntheticShapes("train", 1, image_size=96, boundary_width=0).load(0)[1]
    assert not (clean == 255).any()
    ys, xs = np.nonzero(ignored)
    for y, x in zip(ys, xs, strict=True):
        window = clean[max(0, y - 1): y + 2, max(0, x - 1): x + 2]
        assert len(np.unique(window)) > 1


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 8}, "image_size"),
    ({"objects": (3, 2)}, "objects"),
    ({"radius": (0.3, 0.9)}, "radius"),
    ({"length": -1}, "length"),
    ({"ignore_index": 3}, "ignore_index"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SyntheticShapes("train", **{"length": 4, **kwargs})


def test_write_synthetic_writes_folder_layout(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "write_synthetic.py"), "--out", str(out),
                    "--split", "val", "--length", "3", "--image-size", "40", "48"], check=True, cwd=ROOT)
    images = sorted((out / "images" / "val").glob("*.png"))
    masks = sorted((out / "masks" / "val").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks] == [f"val_{i:06d}.png" for i in range(3)]
    mask = np.asarray(Image.open(masks[1]))
    assert mask.shape == (40, 48) and mask.dtype == np.uint8
    _, expected, _ = SyntheticShapes("val", 3, image_size=[40, 48]).load(1)
    np.testing.assert_array_equal(mask, expected)
    assert np.asarray(Image.open(images[1]).convert("RGB")).shape == (40, 48, 3)
