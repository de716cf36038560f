"""Bad input gives errors that name the culprit: layout, file, colour or label value."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seg_template.data.ade20k import ADE20KDataset
from seg_template.data.cityscapes import CityscapesDataset
from seg_template.data.folder import FolderDataset
from seg_template.data.io import DatasetLayoutError
from seg_template.data.voc import VOCDataset
from seg_template.errors import DataError, MissingFileError
from tests.fixtures import FOLDER_COLORS, folder_class_names, make_cityscapes, make_folder, make_voc


@pytest.mark.parametrize(("cls", "kwargs", "layout_hint"), [
    (CityscapesDataset, {}, "leftImg8bit/{train,val,test}"),
    (VOCDataset, {}, "ImageSets/Segmentation"),
    (ADE20KDataset, {}, "ADEChallengeData2016/images"),
    (FolderDataset, {"class_names": ["a", "b"]}, "masks/<split>"),
])
def test_missing_root_prints_expected_layout(tmp_path, cls, kwargs, layout_hint) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingFileError) as err:
        cls(root=missing, split="train", **kwargs)
    assert str(missing) in str(err.value) and layout_hint in str(err.value)


def test_cityscapes_missing_split_folder_is_named(tmp_path) -> None:
    root = make_cityscapes(tmp_path, splits={"train": 1})
    with pytest.raises(DatasetLayoutError, match=r"leftImg8bit/val"):
        CityscapesDataset(root, "val")


def test_image_without_mask_is_named(tmp_path) -> None:
    root = make_cityscapes(tmp_path)
    mask = next((root / "gtFine" / "train").glob("*/*_labelTrainIds.png"))
    mask.unlink()
    image_name = mask.name.replace("_gtFine_labelTrainIds.png", "_leftImg8bit.png")
    with pytest.raises(DatasetLayoutError, match="image without mask") as err:
        CityscapesDataset(root, "train")
    assert image_name in str(err.value)


def test_mask_without_image_is_named(tmp_path) -> None:
    root = make_folder(tmp_path)
    image = root / "images" / "train" / "train_001.jpg"
    image.unlink()
    with pytest.raises(DatasetLayoutError, match=r"mask without image: .*train_001\.png"):
        FolderDataset(root, folder_class_names(3), "train")


def test_voc_listed_id_without_files_is_named(tmp_path) -> None:
    root = make_voc(tmp_path)
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").write_text("2007_train_0000\n2007_ghost\n")
    with pytest.raises(DatasetLayoutError, match="2007_ghost"):
        VOCDataset(root, "train")


def test_folder_list_naming_missing_image(tmp_path) -> None:
    root = make_folder(tmp_path, split_mode="lists")
    (root / "splits" / "train.txt").write_text("train_000\nnot_there\n")
    with pytest.raises(DatasetLayoutError, match="not_there"):
        FolderDataset(root, folder_class_names(3), "train")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named(tmp_path, damage) -> None:
    root = make_cityscapes(tmp_path)
    ds = CityscapesDataset(root, "train")
    image = ds.samples[1][0]
    data = image.read_bytes()
    image.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(OSError, match=image.name) as err:
        ds[1]
    assert isinstance(err.value, DataError)  # a user's file, reported as such


def test_unknown_colour_names_colour_and_file(tmp_path) -> None:
    root = make_folder(tmp_path, mask_format="rgb")
    ds = FolderDataset(root, folder_class_names(3), "train", mask_format="rgb", colors=FOLDER_COLORS[:3])
    mask_path = ds.samples[0][1]
    rgb = np.asarray(Image.open(mask_path)).copy()
    rgb[0, 0] = (7, 8, 9)
    Image.fromarray(rgb).save(mask_path)
    with pytest.raises(DataError, match=r"\(7, 8, 9\)") as err:
        ds[0]
    assert str(mask_path) in str(err.value)


def test_rgb_mask_needs_one_colour_per_class(tmp_path) -> None:
    root = make_folder(tmp_path, mask_format="rgb")
    with pytest.raises(ValueError, match="one colour per class"):
        FolderDataset(root, folder_class_names(3), "train", mask_format="rgb", colors=FOLDER_COLORS[:2])


def test_rgb_mask_read_as_index_is_explained(tmp_path) -> None:
    root = make_folder(tmp_path, mask_format="rgb")
    ds = FolderDataset(root, folder_class_names(3), "train")
    with pytest.raises(ValueError, match=r"data\.train_set\.mask_format=rgb with data\.train_set\.colors"):
        ds[0]


def test_label_out_of_range_names_value_and_file(tmp_path) -> None:
    root = make_folder(tmp_path, num_classes=3)
    ds = FolderDataset(root, folder_class_names(3), "train")
    mask_path = ds.samples[1][1]
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[3, 3] = 7
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(DataError, match=r"\[7\]") as err:
        ds[1]
    assert str(mask_path) in str(err.value)


def test_ade20k_without_reduce_zero_label_flags_150(tmp_path) -> None:
    from tests.fixtures import make_ade20k

    root = make_ade20k(tmp_path, seed=3)
    ds = ADE20KDataset(root, "train", reduce_zero_label=False)
    with pytest.raises(ValueError, match="150"):
        for i in range(len(ds)):
            ds[i]


def test_size_mismatch_names_both_files(tmp_path) -> None:
    root = make_folder(tmp_path)
    ds = FolderDataset(root, folder_class_names(3), "train")
    image_path, mask_path = ds.samples[0]
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(mask_path)
    with pytest.raises(DataError, match="size mismatch") as err:
        ds[0]
    assert str(image_path) in str(err.value) and str(mask_path) in str(err.value)
