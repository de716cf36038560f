"""Each real dataset on a tiny fixture in its official layout: class mapping, ignore handling, shapes, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from seg_template.data.ade20k import ADE20K_CLASSES, ADE20K_PALETTE, ADE20KDataset
from seg_template.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    LABEL_ID_TO_TRAIN_ID,
    CityscapesDataset,
    label_id_lut,
)
from seg_template.data.folder import FolderDataset
from seg_template.data.transforms import train_transform
from seg_template.data.voc import VOC_CLASSES, VOC_PALETTE, VOCDataset
from tests.fixtures import (
    FOLDER_COLORS,
    folder_class_names,
    make_ade20k,
    make_cityscapes,
    make_folder,
    make_voc,
)


def raw(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def assert_sample_contract(sample: dict, size: tuple[int, int]) -> None:
    assert sample["image"].dtype == torch.float32 and tuple(sample["image"].shape) == (3, *size)
    assert sample["mask"].dtype == torch.int64 and tuple(sample["mask"].shape) == size
    assert isinstance(sample["name"], str)


# ---- Cityscapes ----------------------------------------------------------------------------------------------

def test_cityscapes_table_spot_checks() -> None:
    lut = label_id_lut(255)
    # evaluated ids, in train-id order, and a few that must be ignored (void, parking, guard rail, caravan, trailer)
    assert [lut[i] for i in (7, 8, 11, 24, 26, 33)] == [0, 1, 2, 11, 13, 18]
    assert all(lut[i] == 255 for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255))
    assert sorted(LABEL_ID_TO_TRAIN_ID.values()) == list(range(19))
    assert len(CITYSCAPES_CLASSES) == len(CITYSCAPES_PALETTE) == 19
    preset = OmegaConf.load(Path(__file__).parents[1] / "configs/data/class_weights/cityscapes_hrnet.yaml")
    assert len(preset.class_weights) == 19 and min(preset.class_weights) > 0


def test_cityscapes_table_matches_cityscapesscripts() -> None:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    official = {lab.id: (lab.trainId if lab.trainId not in (-1, 255) else 255) for lab in labels.labels if lab.id >= 0}
    lut = label_id_lut(255)
    assert {i: int(lut[i]) for i in official} == official
    by_train = sorted((lab.trainId, lab.name, lab.color) for lab in labels.labels if 0 <= lab.trainId < 255)
    assert tuple(n for _, n, _ in by_train) == CITYSCAPES_CLASSES
    assert tuple(tuple(c) for _, _, c in by_train) == CITYSCAPES_PALETTE


def test_cityscapes_train_ids(tmp_path) -> None:
    root = make_cityscapes(tmp_path, splits={"train": 3, "val": 1}, size=(32, 64))
    train, val = CityscapesDataset(root, "train"), CityscapesDataset(root, "val")
    assert (len(train), len(val)) == (3, 1)
    assert train.num_classes == 19 and train.class_names == CITYSCAPES_CLASSES
    sample = train[0]
    assert_sample_contract(sample, (32, 64))
    assert sample["name"] == "aachen_000000_000019"
    expected = raw(train.samples[0][1])
    assert np.array_equal(sample["mask"].numpy(), expected)
    assert 255 in expected and set(np.unique(expected)) <= set(range(19)) | {255}


def test_cityscapes_label_ids_are_mapped(tmp_path) -> None:
    root = make_cityscapes(tmp_path, label_type="labelIds")
    ds = CityscapesDataset(root, "train")
    assert all(m.name.endswith("_gtFine_labelIds.png") for _, m in ds.samples)
    ids = raw(ds.samples[1][1])
    mask = ds[1]["mask"].numpy()
    assert np.array_equal(mask, label_id_lut(255)[ids])
    assert (mask[ids == 26] == 13).all() and (mask[ids == 9] == 255).all() and (mask[ids == 0] == 255).all()


def test_cityscapes_prefers_train_ids_and_both_agree(tmp_path) -> None:
    root = make_cityscapes(tmp_path, label_type="both")
    auto = CityscapesDataset(root, "train")
    assert all(m.name.endswith("_labelTrainIds.png") for _, m in auto.samples)
    from_ids = CityscapesDataset(root, "train", label_type="labelIds")
    for i in range(len(auto)):
        assert torch.equal(auto[i]["mask"], from_ids[i]["mask"])


def test_cityscapes_custom_ignore_index(tmp_path) -> None:
    root = make_cityscapes(tmp_path, label_type="labelIds")
    ds = CityscapesDataset(root, "train", ignore_index=250)
    ids = raw(ds.samples[0][1])
    assert (ds[0]["mask"].numpy()[ids == 0] == 250).all()


# ---- VOC -----------------------------------------------------------------------------------------------------

def test_voc_palette_masks_keep_indices_and_boundaries(tmp_path) -> None:
    root = make_voc(tmp_path, splits={"train": 2, "val": 2}, size=(32, 48))
    train, val = VOCDataset(root, "train"), VOCDataset(root, "val")
    assert (len(train), len(val), train.num_classes) == (2, 2, 21)
    assert VOC_PALETTE[15] == (192, 128, 128) and VOC_CLASSES[15] == "person"
    assert Image.open(train.samples[0][1]).mode == "P"
    sample = train[0]
    assert_sample_contract(sample, (32, 48))
    mask = sample["mask"].numpy()
    assert np.array_equal(mask, raw(train.samples[0][1]))  # palette index == class, not the colour
    assert 255 in mask and mask[mask != 255].max() < 21


@pytest.mark.parametrize("make", [make_voc, make_ade20k])
def test_varied_image_sizes_are_kept(tmp_path, make) -> None:
    root = make(tmp_path, splits={"train": 3, "val": 1}, size=(32, 48), varied_sizes=True)
    ds = VOCDataset(root, "train") if make is make_voc else ADE20KDataset(root, "train")
    assert [tuple(ds[i]["mask"].shape) for i in range(3)] == [(32, 48), (40, 56), (48, 48)]


def test_voc_root_may_be_the_voc2012_folder(tmp_path) -> None:
    root = make_voc(tmp_path)
    assert len(VOCDataset(root / "VOCdevkit" / "VOC2012", "train")) == 2


def test_voc_sbd_aug_is_concatenated_without_val(tmp_path) -> None:
    root = make_voc(tmp_path, splits={"train": 2, "val": 1}, sbd_extra=3)
    ds = VOCDataset(root, "train", use_aug=True)
    folders = [m.parent.name for _, m in ds.samples]
    assert len(ds) == 5 and folders.count("SegmentationClass") == 2 and folders.count("SegmentationClassAug") == 3
    assert not any("val" in str(img.name) for img, _ in ds.samples)
    assert len(VOCDataset(root, "val", use_aug=True)) == 1  # aug only extends train
    aug_index = folders.index("SegmentationClassAug")
    assert np.array_equal(ds[aug_index]["mask"].numpy(), raw(ds.samples[aug_index][1]))


# ---- ADE20K --------------------------------------------------------------------------------------------------

def test_ade20k_reduce_zero_label(tmp_path) -> None:
    root = make_ade20k(tmp_path, splits={"train": 2, "val": 1})
    train, val = ADE20KDataset(root, "train"), ADE20KDataset(root, "val")
    assert (len(train), len(val), train.num_classes) == (2, 1, 150)
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150
    sample = val[0]
    assert_sample_contract(sample, (32, 48))
    stored, mask = raw(val.samples[0][1]), sample["mask"].numpy()
    assert (mask[stored == 0] == 255).all()
    assert (mask[stored > 0] == stored[stored > 0] - 1).all()
    assert mask[stored == 150].size == 0 or (mask[stored == 150] == 149).all()


def test_ade20k_accepts_the_challenge_folder_as_root(tmp_path) -> None:
    root = make_ade20k(tmp_path)
    assert len(ADE20KDataset(root / "ADEChallengeData2016", "validation")) == 1


# ---- folder --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_format", ["index", "palette", "rgb"])
@pytest.mark.parametrize("split_mode", ["folders", "lists"])
def test_folder_formats_and_split_modes(tmp_path, mask_format, split_mode) -> None:
    root = make_folder(tmp_path, splits={"train": 3, "val": 2}, num_classes=4, mask_format=mask_format,
                       split_mode=split_mode, image_ext=".png" if mask_format == "palette" else ".jpg")
    kwargs = {"mask_format": "rgb", "colors": FOLDER_COLORS[:4]} if mask_format == "rgb" else {}
    train = FolderDataset(root, folder_class_names(4), "train", **kwargs)
    val = FolderDataset(root, folder_class_names(4), "val", **kwargs)
    assert (len(train), len(val), train.num_classes) == (3, 2, 4)
    sample = val[1]
    assert_sample_contract(sample, (32, 48))
    assert sample["name"] == "val_001"
    stored = np.asarray(Image.open(val.samples[1][1]))
    expected = np.argmax((stored[..., None, :] == np.asarray(FOLDER_COLORS[:4])).all(-1), -1) \
        if mask_format == "rgb" else stored
    assert np.array_equal(sample["mask"].numpy(), expected)


def test_folder_mixed_extensions_suffix_and_ignore_colours(tmp_path) -> None:
    images, masks = tmp_path / "images" / "train", tmp_path / "masks" / "train"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:4] = (255, 0, 0)
    rgb[6:] = (255, 255, 255)
    for i, ext in enumerate([".png", ".jpeg", ".BMP", ".tif"]):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(images / f"s{i}{ext}")
        Image.fromarray(rgb).save(masks / f"s{i}_mask.png")
    ds = FolderDataset(tmp_path, ["bg", "red"], "train", mask_suffix="_mask", mask_format="rgb",
                       colors=[[0, 0, 0], [255, 0, 0]], ignore_colors=[[255, 255, 255]])
    assert [ds[i]["name"] for i in range(len(ds))] == ["s0", "s1", "s2", "s3"]
    mask = ds[2]["mask"].numpy()
    assert (mask[:4] == 1).all() and (mask[4:6] == 0).all() and (mask[6:] == 255).all()


def test_folder_reduce_zero_label(tmp_path) -> None:
    root = make_folder(tmp_path, num_classes=4)
    ds = FolderDataset(root, folder_class_names(3), "train", reduce_zero_label=True)
    stored, mask = raw(ds.samples[0][1]), ds[0]["mask"].numpy()
    assert (mask[stored == 0] == 255).all() and (mask[stored == 3] == 2).all()


def test_recipe_transform_pads_masks_with_ignore(tmp_path) -> None:
    root = make_cityscapes(tmp_path, size=(32, 64))
    ds = CityscapesDataset(root, "train", transform=train_transform(crop_size=[48, 80], scale_range=(1.0, 1.0)))
    sample = ds[0]
    assert tuple(sample["image"].shape) == (3, 48, 80) and tuple(sample["mask"].shape) == (48, 80)
    mask = sample["mask"]
    assert set(mask.unique().tolist()) <= set(range(19)) | {255}
    # the 32x64 fixture fills at most 32x64 of the 48x80 crop: the rest must be ignore, never class 0
    assert int((mask == 255).sum()) >= 48 * 80 - 32 * 64


def _void_11_dataset(root):
    """A folder dataset of 3 classes whose masks mark void with 11 (a common convention)."""
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = np.zeros((16, 16), np.uint8)
            mask[:, 8:], mask[:4] = 2, 11
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")


def test_label_map_takes_a_datasets_own_label_values(tmp_path) -> None:
    """data=folder mapped nothing but reduce_zero_label: a void label of 11 meant rewriting every mask. With
    ``label_map`` the one reader maps the stored values, and the pre-flight checks what it gives."""
    import numpy as np

    from seg_template.data.folder import FolderDataset
    from seg_template.errors import ConfigError, DataError

    _void_11_dataset(tmp_path)
    names = ["a", "b", "c"]
    with pytest.raises(DataError, match=r"\[11\]"):  # without it: the label is named, nothing trains on it
        FolderDataset(tmp_path, names, split="train").load(0)
    dataset = FolderDataset(tmp_path, names, split="train", label_map=[[11, 255], [2, 1]])
    _, mask, _ = dataset.load(0)
    assert sorted(np.unique(mask).tolist()) == [0, 1, 255] and (mask[:4] == 255).all() and (mask[4:, 8:] == 1).all()
    for bad, culprit in (([[11, 7]], r"11 -> 7, but a class id is in \[0, 3\)"), ([[11]], "each entry is"),
                         ([[11, 255], [11, 0]], "mapped twice"), ([[70000, 1]], "not a mask value"),
                         (5, "a list of \\[stored value, class id\\] pairs")):
        with pytest.raises(ConfigError, match=culprit):
            FolderDataset(tmp_path, names, split="train", label_map=bad)


def test_label_map_from_the_command_line(tmp_path, compose_cfg) -> None:
    from hydra.utils import instantiate

    from seg_template.options import problems

    _void_11_dataset(tmp_path)
    cfg = compose_cfg(overrides=["data=folder", f"data.root={tmp_path}", "data.num_classes=3",
                                 "data.class_names=[a,b,c]", "data.train_set.label_map=[[11,255]]"],
                      output_dir=tmp_path / "out")
    assert problems(cfg) == []
    datamodule = instantiate(cfg.data)
    datamodule.preflight()  # every split's masks read through the map: 11 is void, not an unknown class
    assert datamodule.datasets["val"].label_map == [(11, 255)]
