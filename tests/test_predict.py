"""predict.py's parts: same-size batches, progress lines, official submission ids, the overlay and legend."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from seg_template.data.ade20k import ADE20KDataset
from seg_template.data.cityscapes import LABEL_ID_TO_TRAIN_ID, CityscapesDataset
from seg_template.data.synthetic import SyntheticShapes
from seg_template.errors import ConfigError
from seg_template.predict_inputs import ImageFiles, SameSizeBatches, image_loader, input_files
from seg_template.predict_outputs import OutputWriter, ProgressReport, check_writable, submission_table
from seg_template.visualize import add_legend, colorize, legend_entries, overlay


def test_batches_group_images_of_one_size() -> None:
    sizes = [(64, 48), (32, 32), (64, 48), None, (64, 48), (32, 32), (64, 48)]
    assert list(SameSizeBatches(sizes, batch_size=3)) == [[0, 2, 4], [6], [1, 5], [3]]


def test_loader_batches_and_reports_unreadable_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (20, 30)), ("b.png", (20, 30)), ("sub/c.png", (10, 12))):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "sub" / "bad.png").write_text("no image")
    files = input_files(str(tmp_path))
    batches = list(image_loader(files, lambda image: {"image": image / 255.0}, batch_size=4, num_workers=0))
    shapes = [tuple(b["image"].shape) for b in batches if "image" in b]
    assert shapes == [(2, 3, 20, 30), (1, 3, 10, 12)]
    assert [b["name"] for b in batches if "image" in b] == [["a.png", "b.png"], ["sub/c.png"]]
    (errors,) = [b["errors"] for b in batches if b["errors"]]
    assert errors[0][0].endswith("bad.png") and "cannot read image file" in errors[0][1]


def test_images_reach_the_network_as_in_training(tmp_path) -> None:
    """A val_transform without Normalize leaves uint8 pixels: they are scaled to [0, 1], as the datasets do."""
    Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    (item,) = [ImageFiles(input_files(str(tmp_path)), lambda image: {"image": image})[0]]
    assert item["image"].dtype == torch.float32 and float(item["image"].max()) == 1.0


def test_plain_progress_lines(caplog) -> None:
    progress = ProgressReport(total=10, every_s=0.0, live=False)
    with caplog.at_level(logging.INFO, logger="seg_template"):
        progress.update(4)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("predict: 4/10 images") and "ETA" in lines[0]
    assert lines[-1].startswith("predict: 4/10 images in")


def test_submission_ids() -> None:
    cityscapes = submission_table(CityscapesDataset, 19)
    assert all(cityscapes[train] == label for label, train in LABEL_ID_TO_TRAIN_ID.items())
    assert cityscapes[0] == 7 and cityscapes[18] == 33  # road, bicycle
    ade = submission_table(ADE20KDataset, 150)
    assert ade[0] == 1 and ade[149] == 150  # 0 is "other" in the benchmark's ids
    with pytest.raises(ConfigError, match="SyntheticShapes"):
        submission_table(SyntheticShapes, 6)

    class Benchmark(SyntheticShapes):  # a forker's dataset: its official ids are its own attribute
        submission_ids = (10, 20, 30, 40, 50, 60)

    assert list(submission_table(Benchmark, 6)[:7]) == [10, 20, 30, 40, 50, 60, 0]
    with pytest.raises(ConfigError, match="holds 6 ids for 5 classes"):
        submission_table(Benchmark, 5)


def test_writer_outputs(tmp_path) -> None:
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    writer = OutputWriter(tmp_path, palette, ["bg", "red", "green"], alpha=0.5,
                          submission=submission_table(CityscapesDataset, 19))
    rgb = np.full((8, 10, 3), 100, np.uint8)
    labels = np.zeros((4, 5), np.uint8)  # a resizing transform: labels at half the size
    labels[:, 3:] = 2
    writer.write("x/y.png", rgb, labels)
    mask = np.asarray(Image.open(tmp_path / "masks" / "x" / "y.png"))
    assert mask.shape == (8, 10) and (mask[:, 6:] == 2).all() and (mask[:, :6] == 0).all()
    assert np.asarray(Image.open(tmp_path / "submission" / "x" / "y.png"))[0, 9] == 11  # train id 2 (building): labelId 11
    assert np.asarray(Image.open(tmp_path / "overlay" / "x" / "y.png")).shape[1] > 10  # the legend beside it
    with pytest.raises(ConfigError, match="overlay_alpha"):
        OutputWriter(tmp_path, palette, ["a", "b", "c"], alpha=2)


def test_output_folder_that_cannot_be_written(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"output_dir=.*file/sub cannot be written"):
        check_writable(tmp_path / "file" / "sub")
    assert check_writable(tmp_path / "new" / "dir").is_dir()


def test_overlay_and_legend() -> None:
    palette = np.array([[0, 0, 0], [200, 0, 0]], np.uint8)
    image = np.full((40, 30, 3), 100, np.uint8)
    labels = np.zeros((40, 30), np.int64)
    labels[:, 20:] = 1
    labels[0, 0] = 255  # ignore: the image shows through, also in the colour mask it is the ignore colour
    blended = overlay(image, labels, palette, alpha=0.5)
    assert tuple(blended[5, 25]) == (150, 50, 50) and tuple(blended[0, 0]) == (100, 100, 100)
    assert tuple(colorize(labels, palette)[0, 0]) == (0, 0, 0)
    assert [text for text, _ in legend_entries(labels, ["road", "car"], palette)] == ["road 67%", "car 33%"]
    drawn = add_legend(blended, labels, ["road", "car"], palette)
    assert drawn.shape[0] == 40 and drawn.shape[1] > 30
    assert np.array_equal(drawn[:, :30], blended)
    panel = drawn[:, 30:].reshape(-1, 3)
    assert (panel == palette[1]).all(1).any() and (panel == palette[0]).all(1).any()  # one swatch per class
