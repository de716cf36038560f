"""The plain progress lines and the line per epoch (seg_template/callbacks/progress.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from seg_template.callbacks.progress import EpochLog, PlainProgressBar, RichBar


@pytest.mark.parametrize("resumed_mid_epoch", [False, True])
def test_the_epoch_line_times_the_epoch_also_after_a_mid_epoch_resume(caplog, resumed_mid_epoch: bool) -> None:
    """Lightning does not call on_train_epoch_start for the epoch a fit resumes in the middle of: the epoch
    clock starts with the fit then (it printed hours: the monotonic clock since boot)."""
    trainer = SimpleNamespace(global_rank=0, sanity_checking=False, callback_metrics={"val/mIoU": 0.5},
                              max_epochs=4, current_epoch=2)
    epoch_log = EpochLog()
    epoch_log.on_fit_start(trainer, None)
    if not resumed_mid_epoch:
        epoch_log.on_train_epoch_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="seg_template"):
        epoch_log.on_train_epoch_end(trainer, None)
    (line,) = [r.getMessage() for r in caplog.records if "epoch 2/3" in r.getMessage()]
    assert "0:00 / epoch" in line and "ETA 0:00" in line, line


def test_plain_lines_rate_after_a_mid_epoch_resume(caplog, monkeypatch) -> None:
    """The batch rate of the first plain line after a mid-epoch resume counts from the fit's start."""
    clock = iter([100.0, 131.0])
    monkeypatch.setattr("seg_template.callbacks.progress.time.monotonic", lambda: next(clock))
    bar = PlainProgressBar(every_s=30)
    trainer = SimpleNamespace(global_rank=0, progress_bar_metrics={}, max_epochs=4, current_epoch=2,
                              num_training_batches=100, _logger_connector=SimpleNamespace(should_update_logs=False))
    monkeypatch.setattr(PlainProgressBar, "total_train_batches", property(lambda self: 100))
    bar.on_fit_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="seg_template"):
        bar.on_train_batch_end(trainer, None, None, None, batch_idx=61)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("epoch 2/3: batch 62/100, 2.0 it/s"), line


def test_the_bars_read_the_loss_at_logging_steps_only(caplog, monkeypatch) -> None:
    """A host read of the loss waits for the GPU: the bars take it from the step's output at logging steps and
    show that value until the next one."""
    clock = iter([100.0, 101.0, 140.0])
    monkeypatch.setattr("seg_template.callbacks.progress.time.monotonic", lambda: next(clock))
    monkeypatch.setattr(PlainProgressBar, "total_train_batches", property(lambda self: 100))
    connector = SimpleNamespace(should_update_logs=True)
    trainer = SimpleNamespace(global_rank=0, max_epochs=4, current_epoch=0, _logger_connector=connector)
    bar = PlainProgressBar(every_s=30)
    bar.on_fit_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="seg_template"):
        bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.25)}, None, batch_idx=9)  # a logging step
        connector.should_update_logs = False
        bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(7.0)}, None, batch_idx=10)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.endswith("loss 0.2500"), line
    rich = RichBar()
    rich._loss = 0.25
    assert rich.get_metrics(SimpleNamespace(loggers=[], progress_bar_metrics={}), None)["train/loss"] == 0.25


def test_the_epoch_line_gives_val_miou_only_for_epochs_that_validated(caplog) -> None:
    """check_val_every_n_epoch=2: the epoch without validation shows no val/mIoU (it used to repeat the last
    one as if fresh); epochs count from 0 as Lightning's bar and metrics.csv do, scores in percent."""
    trainer = SimpleNamespace(global_rank=0, sanity_checking=False, callback_metrics={"val/mIoU": 0.5},
                              max_epochs=4, current_epoch=0)
    epoch_log = EpochLog()
    epoch_log.on_fit_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="seg_template"):
        for epoch, validates in [(0, False), (1, True), (2, False)]:
            trainer.current_epoch = epoch
            epoch_log.on_train_epoch_start(trainer, None)
            if validates:
                epoch_log.on_validation_epoch_end(trainer, None)
            epoch_log.on_train_epoch_end(trainer, None)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 0/3", "epoch 1/3", "epoch 2/3"]
    assert ["val/mIoU" in line for line in lines] == [False, True, False]
    assert "val/mIoU 50.00%" in lines[1]


@pytest.mark.parametrize("flops", [0, 2_500_000])
def test_the_model_summary_shows_flops_only_when_counted(flops: int) -> None:
    """Lightning counts FLOPs only with an example input: its table showed a FLOPs column of 0 and "Total
    FLOPs: 0" for every run."""
    from rich import get_console

    from seg_template.callbacks.summary import ModelSummary

    data = [(" ", ["0", "1"]), ("Name", ["net", "loss"]), ("Type", ["SmallSegNet", "SegmentationLoss"]),
            ("Params", ["174 K", "0"]), ("Mode", ["train", "train"]), ("FLOPs", [str(flops), "0"])]
    with get_console().capture() as captured:
        ModelSummary.summarize(data, 174_000, 174_000, 0.7, {"train": 48, "eval": 0}, flops)
    text = captured.get()
    assert "SmallSegNet" in text and "Total params: 174 K" in text
    assert ("FLOPs" in text) == bool(flops) and ("Total FLOPs: 2.5 M" in text) == bool(flops)


def test_no_progress_bar_entry_means_no_bar(compose_cfg, tmp_path) -> None:
    """``callbacks.rich_progress_bar=null`` switches the bar off: Lightning would otherwise add its own live bar,
    whose frames end up in a redirected log."""
    from seg_template.build import instantiate_trainer

    cfg = compose_cfg(overrides=["callbacks.rich_progress_bar=null"], output_dir=tmp_path)
    assert instantiate_trainer(cfg.trainer, [], []).progress_bar_callback is None
