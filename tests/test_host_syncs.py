"""The default training step does not wait for the device: no host read of a device tensor outside the
logging steps (``trainer.log_every_n_steps``), counted on the CPU by ``tests/host_syncs.py``."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from seg_template.train import train
from tests.host_syncs import SyncsPerStep, counting

STEPS = 20
QUIET = ["+trainer.max_steps=20", "+trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0", "test=false",
         "data.num_workers=0", "data.persistent_workers=false", "+callbacks.count._target_=tests.host_syncs.SyncsPerStep"]


def syncs_per_step(compose_cfg, *overrides: str) -> dict[int, list[str]]:
    cfg = compose_cfg("train", [*QUIET, *overrides])
    with counting():
        train(cfg)
    counter = SyncsPerStep.latest
    assert counter is not None and sorted(counter.steps) == list(range(STEPS))
    return counter.steps


@pytest.mark.parametrize("callbacks", ["default", "[default,ema]"])
def test_the_default_training_step_reads_nothing_from_the_device(compose_cfg, callbacks: str) -> None:
    """20 steps of the default run (model, loss, callbacks, logger of train.py), and with the EMA of the
    weights: no host read outside the logging steps 9 and 19. There, Lightning converts the logged values,
    the NaN guard and the label check read their verdicts and the progress bar its loss, a few reads in all."""
    steps = syncs_per_step(compose_cfg, f"callbacks={callbacks}")
    logging_steps = {9, 19}
    for step, calls in steps.items():
        if step in logging_steps:
            assert 0 < len(calls) <= 8, (step, collections.Counter(calls).most_common())
        else:
            assert calls == [], (step, collections.Counter(calls).most_common())
    reads = collections.Counter(call.split(" at ")[1].rsplit(":", 1)[0] for call in steps[9])
    assert {"callbacks/nan_guard.py", "losses/rules.py"} <= set(reads), reads  # the guarantees are still checked


def test_the_counter_sees_a_read_of_a_device_tensor(compose_cfg) -> None:
    """The counter itself: a guard that reads the loss every step, as the old one did, is counted at every step."""
    steps = syncs_per_step(compose_cfg, "+callbacks.reader._target_=tests.test_host_syncs.ReadsTheLoss")
    assert all(any("Tensor.__bool__" in c for c in calls) for calls in steps.values()), steps


class ReadsTheLoss(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        bool(torch.isfinite(outputs["loss"]))


def test_labels_out_of_range_still_stop_training_before_a_checkpoint(compose_cfg, monkeypatch) -> None:
    """A dataset of a forker's that lets label 9 through (of 6 classes): the loss leaves those pixels out on the
    device (no index out of range, which is a device-side assert on a GPU) and the run stops at the next check
    with the label named; no checkpoint holds those steps."""
    from seg_template.data.base import SegmentationDataset
    from seg_template.errors import DataError
    from tests.bad_input_files import raised_user_error

    original = SegmentationDataset.__getitem__

    def bad_label(self, index):  # noqa: ANN001, ANN202
        sample = original(self, index)
        sample["mask"][0, 0] = 9
        return sample

    monkeypatch.setattr(SegmentationDataset, "__getitem__", bad_label)
    cfg = compose_cfg("train", ["+trainer.max_steps=20", "+trainer.num_sanity_val_steps=0", "test=false",
                                "data.num_workers=0", "data.persistent_workers=false"])
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, DataError) and "outside [0, 6)" in str(err) and "9" in str(err), err
    assert "step 10" in str(err), err  # the first logging step's check
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))
