"""scripts/check_dataset.py finds planted faults; scripts/compute_class_weights.py gives known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_template.data.class_weights import class_weights, pixel_statistics, save_weights
from seg_template.data.config import build_split
from seg_template.data.doctor import check_dataset
from seg_template.losses import load_class_weights
from tests.fixtures import FOLDER_COLORS, folder_class_names, make_cityscapes, make_folder, make_voc
from tests.helpers import data_cfg, load_script, run_script, skip_unless_importable

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def folder_overrides(num_classes: int) -> list[str]:
    names = ",".join(folder_class_names(num_classes))
    return [f"data.num_classes={num_classes}", f"data.class_names=[{names}]"]


# ---- the doctor ------------------------------------------------------------------------------------------------

def test_doctor_clean_dataset(tmp_path) -> None:
    root = make_voc(tmp_path, splits={"train": 3, "val": 2})
    reports = check_dataset(data_cfg("voc", root))
    assert [r.split for r in reports] == ["train", "val", "test"]  # test = val in the VOC config
    assert all(not r.errors for r in reports)
    train = reports[0]
    assert (train.num_images, train.num_masks, train.num_pairs, train.num_checked) == (3, 3, 3, 3)
    masks = [np.asarray(Image.open(m)) for m in sorted((root / "VOCdevkit/VOC2012/SegmentationClass").glob("2007_train*"))]
    expected = np.bincount(np.concatenate([m[m != 255] for m in masks]), minlength=21)
    assert np.array_equal(train.class_pixels, expected)
    assert train.ignore_pixels == sum(int((m == 255).sum()) for m in masks)


def plant_faults(root: Path) -> dict[str, Path]:
    """Break a 3-class RGB folder fixture in every way the doctor should notice; return the culprits."""
    images, masks = root / "images" / "train", root / "masks" / "train"
    culprits = {
        "orphan_image": images / "train_000.jpg", "orphan_mask": masks / "train_001.png",
        "corrupt": images / "train_002.jpg", "size": masks / "train_003.png",
        "colour": masks / "train_004.png", "fine": masks / "train_005.png",
    }
    (masks / "train_000.png").unlink()
    (images / "train_001.jpg").unlink()
    culprits["corrupt"].write_bytes(b"\xff\xd8\xff garbage")
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(culprits["size"])
    rgb = np.asarray(Image.open(culprits["colour"])).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(culprits["colour"])
    return culprits


def test_doctor_finds_planted_faults(tmp_path) -> None:
    root = make_folder(tmp_path, splits={"train": 6, "val": 1}, mask_format="rgb")
    culprits = plant_faults(root)
    cfg = data_cfg("folder", root, *folder_overrides(3), "data.train_set.mask_format=rgb",
                   f"data.train_set.colors={[list(c) for c in FOLDER_COLORS[:3]]}".replace(" ", ""))
    train, val, test = check_dataset(cfg)
    assert not val.errors and not test.errors
    assert (train.num_images, train.num_masks, train.num_pairs) == (5, 5, 4)
    errors = "\n".join(train.errors)
    assert f"image without mask: {culprits['orphan_image']}" in errors
    assert f"mask without image: {culprits['orphan_mask']}" in errors
    assert f"unreadable image: cannot read image file {culprits['corrupt']}" in errors
    assert "size mismatch" in errors and str(culprits["size"]) in errors
    assert "(1, 2, 3)" in errors and str(culprits["colour"]) in errors
    assert str(culprits["fine"]) not in errors and len(train.errors) == 5
    # read by two worker processes: the same findings, in the same order
    parallel = check_dataset(cfg, splits=["train"], workers=2)[0]
    assert parallel.errors == train.errors and np.array_equal(parallel.class_pixels, train.class_pixels)


def test_doctor_flags_out_of_range_labels(tmp_path) -> None:
    root = make_cityscapes(tmp_path, splits={"train": 2, "val": 1})
    bad = sorted((root / "gtFine" / "val").glob("*/*_labelTrainIds.png"))[0]
    mask = np.asarray(Image.open(bad)).copy()
    mask[0, :3] = [19, 42, 200]
    Image.fromarray(mask).save(bad)
    reports = check_dataset(data_cfg("cityscapes", root), splits=["train", "val"])
    assert not reports[0].errors
    assert reports[1].errors == [f"label value(s) [19, 42, 200] outside [0, 19) and not the ignore index 255: {bad}"]


def test_doctor_missing_root_reports_layout(tmp_path) -> None:
    reports = check_dataset(data_cfg("ade20k", tmp_path / "missing"), splits=["train"])
    assert len(reports[0].errors) == 1
    assert "ADE20K root not found" in reports[0].errors[0] and "annotations/{training,validation}" in reports[0].errors[0]


# ---- class weights --------------------------------------------------------------------------------------------

def write_known_distribution(root: Path) -> None:
    """Two 4x4 masks: A = 12 px class 0 + 4 px class 1; B = 6 px class 0 + 8 px class 2 + 2 ignored.
    Class 3 never appears."""
    a = np.zeros((4, 4), dtype=np.uint8)
    a[3] = 1
    b = np.full((4, 4), 2, dtype=np.uint8)
    b[:2, :3] = 0
    b[3, 3] = b[3, 2] = 255
    for name, mask in (("a", a), ("b", b)):
        for sub, arr in (("images", np.zeros((4, 4, 3), dtype=np.uint8)), ("masks", mask)):
            (root / sub / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / "train" / f"{name}.png")


def test_class_weights_on_a_known_distribution(tmp_path) -> None:
    write_known_distribution(tmp_path)
    cfg = data_cfg("folder", tmp_path, *folder_overrides(4))
    counts, present = pixel_statistics(build_split(cfg, "train"))
    assert counts.tolist() == [18, 4, 8, 0]
    assert present.tolist() == [30, 16, 14, 0]  # valid pixels of the images each class appears in
    np.testing.assert_allclose(class_weights(counts, present, "inverse"), [30 / 54, 30 / 12, 30 / 24, 0])
    freq = np.array([18 / 30, 4 / 16, 8 / 14])
    np.testing.assert_allclose(class_weights(counts, present, "median"), [*(8 / 14) / freq, 0])
    np.testing.assert_allclose(class_weights(counts, present, "enet"),
                               1 / np.log(1.02 + np.array([18, 4, 8, 0]) / 30))
    with pytest.raises(ValueError, match="unknown class-weight method"):
        class_weights(counts, present, "sqrt")


@pytest.mark.parametrize("suffix", [".json", ".npy", ".txt"])
def test_weight_files_load_in_the_loss(tmp_path, suffix) -> None:
    weights = [0.5, 2.25, 1.0]
    path = save_weights(weights, tmp_path / f"w{suffix}", ["a", "b", "c"])
    np.testing.assert_allclose(load_class_weights(str(path)).numpy(), weights)


# ---- the command lines (compose configs/train.yaml like the entry points) ------------------------------------

def test_check_dataset_cli_exit_codes(tmp_path, capsys) -> None:
    check = load_script("check_dataset")
    root = make_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 1}, label_type="labelIds")
    assert check.main(["data=cityscapes", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "[train] images: 2  masks: 2  pairs: 2" in out and "OK: no problems found" in out and "road" in out
    broken = next((root / "leftImg8bit" / "val").glob("*/*.png"))
    broken.write_bytes(b"")
    assert check.main(["data=cityscapes", f"data.root={root}", "--splits", "val"]) == 1
    out = capsys.readouterr().out
    assert str(broken) in out and "FAILED" in out


def test_check_dataset_cli_missing_root(tmp_path, capsys) -> None:
    check = load_script("check_dataset")
    assert check.main(["data=voc", f"data.root={tmp_path / 'nope'}"]) == 1
    out = capsys.readouterr().out
    assert "VOC root not found" in out and "JPEGImages" in out


def test_compute_class_weights_cli(tmp_path, capsys) -> None:
    weights_script = load_script("compute_class_weights")
    write_known_distribution(tmp_path / "data")
    args = ["data=folder", f"data.root={tmp_path / 'data'}", *folder_overrides(4)]
    out_file = tmp_path / "w" / "enet.json"
    assert weights_script.main([*args, "--method", "enet", "--out", str(out_file)]) == 0
    np.testing.assert_allclose(json.loads(out_file.read_text()), 1 / np.log(1.02 + np.array([18, 4, 8, 0]) / 30))
    printed = capsys.readouterr().out
    assert "class_3" in printed and "no pixels of ['class_3']" in printed and str(out_file) in printed
    txt = tmp_path / "median.txt"
    assert weights_script.main([*args, "--out", str(txt)]) == 0
    np.testing.assert_allclose(load_class_weights(str(txt)).numpy(),
                               [*(8 / 14) / np.array([18 / 30, 4 / 16, 8 / 14]), 0], rtol=1e-5)


def test_prepare_cityscapes_with_cityscapesscripts(tmp_path) -> None:
    pytest.importorskip("cityscapesscripts.preparation.json2labelImg")
    from seg_template.data.cityscapes import CityscapesDataset

    prepare = load_script("prepare_cityscapes")
    root = make_cityscapes(tmp_path, splits={"train": 2, "val": 1}, size=(32, 64), label_type="polygons")
    assert prepare.main([str(root)]) == 0
    mask = CityscapesDataset(root, "train")[0]["mask"].numpy()
    assert (mask[:8] == 10).all()                              # sky, drawn over road
    assert mask[20, 5] == 13 and mask[28, 6] == 13             # car; its licence plate (id -1) is not drawn
    assert mask[20, 40] == 13                                  # 'cargroup' drawn as car
    assert mask[20, 25] == 0 and mask[31, 0] == 0              # road
    assert len(prepare.prepare(root)) == 0                     # existing files are kept


def test_prepare_cityscapes_without_the_package(tmp_path, monkeypatch) -> None:
    prepare = load_script("prepare_cityscapes")
    monkeypatch.setitem(__import__("sys").modules, "cityscapesscripts", None)
    monkeypatch.setitem(__import__("sys").modules, "cityscapesscripts.preparation", None)
    monkeypatch.setitem(__import__("sys").modules, "cityscapesscripts.preparation.json2labelImg", None)
    with pytest.raises(SystemExit, match="pip install cityscapesscripts"):
        prepare.main([str(make_cityscapes(tmp_path, label_type="polygons"))])


def test_compute_class_weights_on_generated_data(tmp_path) -> None:
    """Datasets without files (the synthetic one) are counted from their generated masks."""
    from seg_template.data.synthetic import SyntheticShapes

    weights_script = load_script("compute_class_weights")
    out_file = tmp_path / "w.json"
    assert weights_script.main(["data=synthetic", "--limit", "20", "--method", "inverse", "--out", str(out_file)]) == 0
    masks = [SyntheticShapes(split="train", length=20, image_size=[64, 64]).load(i)[1] for i in range(20)]
    labelled = np.concatenate([m[m != 255] for m in masks])
    counts = np.bincount(labelled, minlength=6)
    np.testing.assert_allclose(json.loads(out_file.read_text()), labelled.size / (6 * counts), rtol=1e-6)


@pytest.mark.parametrize("script, args, culprit", [
    ("compute_class_weights", ["data=folder", "data.root={tmp}/nope"], r"DatasetLayoutError: folder dataset root "
                                                                       r"not found: .*nope"),
    ("compute_class_weights", ["data=bogus"], r"MissingConfigException: .*'data/bogus'.*folder"),
    ("check_dataset", ["data=voc", "data.batch_size=[oops"], r"OverrideParseException: .*\[oops"),
    ("prepare_cityscapes", ["{tmp}/nope"], r"DatasetLayoutError: Cityscapes gtFine folder not found"),
])
def test_tools_print_a_user_error_as_one_block(tmp_path, capsys, script, args, culprit) -> None:
    """A user's mistake given to a dataset tool prints one block naming it on stderr and exits 1 (no traceback,
    no Hydra search path), as the entry points do."""
    import re

    from seg_template.errors import run_tool

    if script == "prepare_cityscapes":  # without it, the tool says which package to install first
        skip_unless_importable("cityscapesscripts")
    tool = load_script(script)
    argv = [a.format(tmp=tmp_path) for a in args]
    assert run_tool(lambda: tool.main(argv)) == 1
    err = capsys.readouterr().err
    assert re.search(culprit, err, re.S), err
    assert "Traceback" not in err and "Config search path" not in err and len(err.splitlines()) <= 12, err


@pytest.mark.slow
def test_loss_parity_table_every_term_within_rounding() -> None:
    """scripts/loss_parity.py: one row per term, every difference at float64 rounding, every gradcheck passing
    (rows needing segmentation_models_pytorch say they were skipped when it is missing)."""
    result = run_script("scripts/loss_parity.py", "--seeds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines()[2:] if " | " in line]
    assert len(rows) == 11, result.stdout
    for row in rows:
        if "skipped" in row[2]:
            continue
        assert all(float(cell) < 1e-12 for cell in row[2:6]), row
        assert row[6].strip() == "pass", row
