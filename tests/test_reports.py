"""Run reports (seg_template/callbacks/reports.py): the confusion CSV counts every labelled pixel once, the
pictures exist after fit and test, and missing inputs skip a report with a log line instead of failing."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seg_template.callbacks.reports import (
    Reports,
    plot_confusion,
    plot_curves,
    read_metrics_csv,
    write_confusion_csv,
)
from seg_template.train import train
from tests.helpers import TINY


def csv_counts(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header[1:] == [r[0] for r in rows]  # the same class names on both axes
    return header[1:], np.array([[int(v) for v in r[1:]] for r in rows])


def test_confusion_csv_keeps_raw_counts(tmp_path: Path) -> None:
    counts = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    write_confusion_csv(counts, ["a", "b", "c"], tmp_path / "cm.csv")
    names, read = csv_counts(tmp_path / "cm.csv")
    assert names == ["a", "b", "c"] and np.array_equal(read, counts)
    plot_confusion(counts, names, tmp_path / "cm.png", "t")  # an empty row (class c absent) must not fail
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_curves_from_metrics_csv(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss_step,lr-AdamW,val/mIoU\n"
                       "0,9,1.5,0.01,\n0,19,1.2,0.009,\n0,19,,,0.4\n")
    series = read_metrics_csv(metrics)
    assert series["train/loss_step"] == [(9.0, 0.0, 1.5), (19.0, 0.0, 1.2)]
    assert series["val/mIoU"] == [(19.0, 0.0, 0.4)]
    assert plot_curves(series, tmp_path / "curves.png") == ["val loss"]  # the one panel without data
    assert (tmp_path / "curves.png").is_file()


def test_missing_inputs_skip_with_a_log_line(tmp_path: Path, caplog) -> None:
    reports = Reports(tmp_path / "reports")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], sanity_checking=False)
    module = SimpleNamespace(last_confmat={}, class_names=("a", "b"))
    with caplog.at_level(logging.INFO, logger="seg_template"):
        reports.on_fit_end(trainer, module)  # no validation ran, no CSV logger
        reports.on_test_end(trainer, module)  # the module kept no test matrix
    text = caplog.text
    assert "no validation ran" in text and "no CSV logger" in text and "no test confusion matrix" in text
    assert not (tmp_path / "reports").exists()


def labelled_pixels(dataset, ignore_index: int) -> int:
    return sum(int((dataset[i]["mask"] != ignore_index).sum()) for i in range(len(dataset)))


@pytest.mark.slow
def test_reports_after_a_short_fit_and_test(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=[*TINY, "trainer.max_epochs=1", "callbacks.val_images=null"],
                      output_dir=tmp_path)
    _, objects = train(cfg)
    reports = tmp_path / "reports"
    assert sorted(p.name for p in reports.iterdir()) == [
        "confusion_test.csv", "confusion_test.png", "confusion_val.csv", "confusion_val.png", "curves.png",
        "iou_test.png", "iou_val.png"]
    datamodule, module = objects["datamodule"], objects["module"]
    for stage in ("val", "test"):
        names, counts = csv_counts(reports / f"confusion_{stage}.csv")
        assert names == list(datamodule.class_names)
        assert counts.sum() == labelled_pixels(datamodule.datasets[stage], datamodule.ignore_index)
        assert torch.equal(torch.from_numpy(counts), module.last_confmat[stage].long())


def test_validate_alone_writes_the_validation_reports(tmp_path: Path) -> None:
    """eval.py's ``trainer.validate``: no fit end follows, so the reports come at the validation's end."""
    trainer = SimpleNamespace(is_global_zero=True, state=SimpleNamespace(fn="validate"))
    module = SimpleNamespace(last_confmat={"val": torch.tensor([[3, 1], [0, 4]])}, class_names=("a", "b"))
    Reports(tmp_path).on_validation_end(trainer, module)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_val.csv", "confusion_val.png", "iou_val.png"]
    assert csv_counts(tmp_path / "confusion_val.csv")[1].sum() == 8
