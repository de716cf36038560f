"""``callbacks=[default,ema]`` and resuming: a fit stopped (mid-epoch by a signal, or at an epoch end) and resumed
ends with the average, raw weights and validation of an uninterrupted fit of the same seed; adding or removing
``ema`` on resuming is explained in one line, never a traceback (seg_template/callbacks/ema.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from seg_template.signals import StoppedBySignal
from tests.ema_helpers import HERE, Recorder, assert_same, ema_of, fit, read

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Recorder]:
    """An uninterrupted fit of 2 epochs of 4 steps; ``epoch0.ckpt``: its ``last.ckpt`` after epoch 0."""
    out = tmp_path_factory.mktemp("whole")
    recorder, _ = fit(out, "data.train_set.length=16", "trainer.max_epochs=2",
                      f"+callbacks.keep._target_={HERE}.KeepEpochEnd")
    return out, recorder


def assert_same_end(run: Path, recorder: Recorder, whole: tuple[Path, Recorder]) -> None:
    """``run`` ends with the average, raw weights, averaging state and last validation of the whole fit."""
    ends = [read(folder / "checkpoints" / "last.ckpt") for folder in (run, whole[0])]
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert all(torch.equal(ends[0][key][k], ends[1][key][k]) for k in ends[1][key]), key
    assert ends[0]["callbacks"]["EMAWeights"] == ends[1]["callbacks"]["EMAWeights"]
    assert recorder.metrics[1] == whole[1].metrics[1]


def test_a_run_stopped_mid_epoch_resumes_to_the_same_average(whole, tmp_path) -> None:
    """The stop's last.ckpt is written by StopOnSignal, before the EMA callback's own update of that step."""
    overrides = ["data.train_set.length=16", "trainer.max_epochs=2"]
    with pytest.raises(StoppedBySignal):
        fit(tmp_path, *overrides, f"+callbacks.signal._target_={HERE}.SignalAt", "+callbacks.signal.at_step=5")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (read(last)["global_step"], read(last)["callbacks"]["EMAWeights"]) == (6, {"latest_update_step": 6})
    recorder, _ = fit(tmp_path, *overrides, f"ckpt_path={last}")
    assert_same_end(tmp_path, recorder, whole)


def test_a_run_resumed_from_an_epoch_end_ends_with_the_same_average(whole, tmp_path) -> None:
    (tmp_path / "checkpoints").mkdir()
    last = shutil.copy(whole[0] / "epoch0.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    recorder, _ = fit(tmp_path, "data.train_set.length=16", "trainer.max_epochs=2", f"ckpt_path={last}")
    assert_same_end(tmp_path, recorder, whole)


def test_resuming_without_ema_continues_the_raw_weights(whole, tmp_path, caplog, recwarn) -> None:
    (tmp_path / "checkpoints").mkdir()
    last = shutil.copy(whole[0] / "epoch0.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    written = read(last)
    with caplog.at_level(logging.WARNING):
        recorder, _ = fit(tmp_path, "data.train_set.length=16", "trainer.max_epochs=2", f"ckpt_path={last}",
                          ema=False)
    assert_same(recorder.started, written["current_model_state"])  # not the average in state_dict
    assert any("without it: training continues from its raw weights" in r.getMessage() for r in caplog.records)
    assert not [w for w in recwarn if "callbacks used to create the checkpoint" in str(w.message)]
    assert "current_model_state" not in read(tmp_path / "checkpoints" / "last.ckpt")


def test_resuming_with_ema_a_checkpoint_written_without_it(whole, tmp_path, caplog) -> None:
    (tmp_path / "checkpoints").mkdir()
    written = read(whole[0] / "epoch0.ckpt")  # made into what a fit without callbacks.ema writes
    written["state_dict"] = written.pop("current_model_state")
    del written["averaging_state"], written["callbacks"]["EMAWeights"]
    torch.save(written, tmp_path / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.INFO):
        recorder, _ = fit(tmp_path, "data.train_set.length=16", "trainer.max_epochs=2",
                          f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    assert any("written without weight averaging" in r.getMessage() for r in caplog.records)
    end = read(tmp_path / "checkpoints" / "last.ckpt")
    assert_same(end["state_dict"], ema_of(recorder.steps))  # the average of the steps after the resume
    assert end["callbacks"]["EMAWeights"] == {"latest_update_step": 8}
