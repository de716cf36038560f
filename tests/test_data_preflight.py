"""Pre-flight before fitting: bad data stops the run with a DataError naming split, file and cause; bad
loader options stop it with a ConfigError naming the key and value."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_template.data.datamodule import SegDataModule
from seg_template.data.folder import FolderDataset
from seg_template.data.preflight import preflight_split, sample_indices
from seg_template.data.synthetic import CLASS_NAMES, SyntheticShapes
from seg_template.data.transforms import eval_transform
from seg_template.errors import ConfigError, DataError, MissingFileError
from tests.fixtures import folder_class_names, make_folder


def _folder_dm(root: Path, preflight: str = "sample", **overrides) -> SegDataModule:
    names = folder_class_names(3)
    split = functools.partial(FolderDataset, root=root, class_names=names)
    kwargs = dict(train_set=functools.partial(split, split="train"), val_set=functools.partial(split, split="val"),
                  train_transform=eval_transform(), val_transform=eval_transform(), num_classes=3,
                  class_names=names, batch_size=1, preflight=preflight)
    kwargs.update(overrides)
    return SegDataModule(**kwargs)


def _rewrite_mask(path: Path, change) -> None:
    mask = np.asarray(Image.open(path)).copy()
    change(mask)
    Image.fromarray(mask).save(path)


def _masks(root: Path, split: str) -> list[Path]:
    return sorted((root / "masks" / split).glob("*.png"))


def test_sample_indices_spread_over_the_split() -> None:
    assert sample_indices(3) == [0, 1, 2]
    picked = sample_indices(20)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 19
    assert sample_indices(0) == []


def test_synthetic_preflight_reads_a_sample_and_keeps_the_datasets() -> None:
    dm = SegDataModule(train_set=functools.partial(SyntheticShapes, split="train", length=50, image_size=32),
                       val_set=functools.partial(SyntheticShapes, split="val", length=5, image_size=32),
                       test_set=functools.partial(SyntheticShapes, split="test", length=5, image_size=32),
                       val_transform=eval_transform(), num_classes=6, class_names=list(CLASS_NAMES))
    dm.preflight()
    assert set(dm.datasets) == {"train", "val", "test"}
    assert preflight_split(dm.datasets["train"], "train") == 8  # a sample, not the 50
    assert preflight_split(dm.datasets["val"], "val", mode="full") == 5


def test_all_ignore_masks_stop_before_training(tmp_path) -> None:
    root = make_folder(tmp_path, splits={"train": 12, "val": 2})
    for path in _masks(root, "train"):
        _rewrite_mask(path, lambda m: m.fill(255))
    dm = _folder_dm(root)
    with pytest.raises(DataError, match=r"data.train_set \(FolderDataset\): none of its 12 masks has a labelled "
                                         r"pixel.*ignore index 255"):
        dm.preflight()
    _folder_dm(root, preflight="none").preflight()  # `none` skips the check


def test_sample_mode_reads_on_until_a_labelled_pixel(tmp_path) -> None:
    """Sampled masks all ignore but one unsampled mask labelled: the split is fine."""
    root = make_folder(tmp_path, splits={"train": 12, "val": 2})
    sampled = set(sample_indices(12))
    for index, path in enumerate(_masks(root, "train")):
        if index != 4 or index in sampled:
            _rewrite_mask(path, lambda m: m.fill(255))
    assert 4 not in sampled
    _folder_dm(root).preflight(["train"])


def test_out_of_range_label_names_split_file_and_value(tmp_path) -> None:
    root = make_folder(tmp_path, splits={"train": 2, "val": 3})
    bad = _masks(root, "val")[2]
    _rewrite_mask(bad, lambda m: m.__setitem__((0, 0), 9))
    with pytest.raises(DataError, match=r"(?s)data.val_set .*\[9\] outside \[0, 3\)") as err:
        _folder_dm(root).preflight()
    assert str(bad) in str(err.value)


def test_full_mode_scans_every_file_in_worker_processes(tmp_path) -> None:
    root = make_folder(tmp_path, splits={"train": 20, "val": 2})
    assert 1 not in sample_indices(20)
    bad = _masks(root, "train")[1]
    _rewrite_mask(bad, lambda m: m.__setitem__((3, 3), 7))
    _folder_dm(root).preflight(["train"])  # a sample of 8 in 20 does not read index 1
    with pytest.raises(DataError, match=r"\[7\]") as err:
        _folder_dm(root, preflight="full", num_workers=2).preflight(["train"])
    assert str(bad) in str(err.value)


def test_truncated_image_is_a_data_error_naming_the_file(tmp_path) -> None:
    root = make_folder(tmp_path, splits={"train": 2, "val": 2})
    image = root / "images" / "train" / "train_001.jpg"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(DataError, match="unreadable image") as err:
        _folder_dm(root).preflight()
    assert str(image) in str(err.value)
    with pytest.raises(DataError, match="train_001.jpg") as err:  # and when a batch reads it
        FolderDataset(root, folder_class_names(3), "train")[1]
    assert isinstance(err.value, OSError)


def test_size_mismatch_names_both_files(tmp_path) -> None:
    root = make_folder(tmp_path, splits={"train": 2, "val": 2})
    mask = _masks(root, "train")[0]
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"size mismatch: image .*train_000.jpg is 48x32 .*7x5"):
        _folder_dm(root).preflight()


def test_missing_root_is_a_missing_file_error_with_the_layout(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingFileError, match="expected this layout") as err:
        _folder_dm(missing).preflight()
    assert str(missing) in str(err.value)


@pytest.mark.parametrize(("key", "value"), [
    ("batch_size", "abc"), ("batch_size", 0), ("batch_size", -2), ("batch_size", 2.5),
    ("num_workers", -1), ("num_workers", "two"), ("eval_batch_size", 0), ("eval_batch_size", "x"),
    ("num_classes", "six"),
])
def test_bad_loader_option_names_key_and_value(key: str, value) -> None:
    kwargs = dict(train_set=functools.partial(SyntheticShapes, split="train", length=4), val_set=None,
                  num_classes=6)
    kwargs[key] = value
    # the key and the value, whatever the wording of seg_template/options.py
    with pytest.raises(ConfigError, match=rf"data\.{key}\b.*{re.escape(repr(value))}" if isinstance(value, str)
                       else rf"data\.{key}\b.*{re.escape(str(value))}"):
        SegDataModule(**kwargs)


def test_unknown_preflight_mode_is_named() -> None:
    with pytest.raises(ConfigError, match=r"data\.preflight\b.*'fast'"):
        SegDataModule(train_set=None, val_set=None, num_classes=2, preflight="fast")
