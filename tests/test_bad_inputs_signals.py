"""Catalogue family "signals" (issue 17): a stopped run says so, and an error on any DDP rank is printed once.

What must happen (``seg_template/signals.py``, ``callbacks/stop_on_signal.py``, ``loggers.py``, ``cli.py``):

- SIGTERM / SIGINT / SIGHUP / SIGUSR1 end every entry point with status 128 + the signal's number
  (143 / 130 / 129 / 138) and one line, never a traceback, also when it arrives in the middle of an import;
  during fit after the current training step, with a complete ``last.ckpt`` and the command that resumes it;
- a second signal while stopping stops at once: the previous ``last.ckpt`` stays whole, no partial file;
- a resumed run's ``metrics.csv`` holds each epoch (and each step's values) once, whatever the earlier
  attempt logged after its checkpoint (signal, ``kill -9``);
- under ``trainer=ddp_cpu`` every rank stops at the same step; a user error found by rank 1 alone is printed
  once, naming the file and the rank, and rank 0's lost connection is one short line; a config error every
  rank hits is printed once.

The fast tests check the pieces in-process; the ``slow`` ones run ``python train.py`` / ``eval.py`` /
``predict.py`` and signal them at known points (a line in their output, a step, the middle of a save).
The table: ``pytest tests/test_bad_inputs_signals.py -v`` (add ``-m "not slow"`` for the fast part).
"""

from __future__ import annotations

import collections
import csv
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from seg_template.callbacks.checkpoint import AtomicCheckpointIO
from seg_template.callbacks.checkpoint_io import logging_step
from seg_template.callbacks.stop_on_signal import stop_line
from seg_template.cli import peer_failure_line, user_error_in_text
from seg_template.errors import DataError
from seg_template.jobs import (
    LAUNCH_ENV,
    _records_folder,
    claim_message,
    failures_of_other_ranks,
    is_peer_failure,
    record_failure,
)
from seg_template.loggers import CSVLogger, drop_rows_from_step
from seg_template.paths import PROJECT_ROOT
from seg_template.signals import StoppedBySignal, as_stop, exit_on_signals
from seg_template.train import train
from tests.bad_input_files import FOLDER, TRAIN, Workspace
from tests.fixtures import make_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

#: 50 training steps per epoch (batch 4): long enough to signal in the middle of one
SIG = [*TRAIN, "data.train_set.length=200", "trainer.max_epochs=3"]
STEPS_PER_EPOCH = 50
TIMING = re.compile(r"time|speed|per_s|_s$")
STOP = re.compile(r"Stopped by (SIGTERM|SIGINT|SIGHUP|SIGUSR1) (?:in|after) epoch (\d+)/(\d+) at step (\d+) \(exit status (\d+)\); "
                  r"last\.ckpt holds that state: resume with (.+)")


# ------------------------------------------------------------------------- test-only callbacks (-> +callbacks.x)
class SendSignal(pl.Callback):
    """Sends ``signum`` to its own process when training step ``at_step`` starts, on global rank ``rank``: a
    signal at a known point, as a scheduler would send it."""

    def __init__(self, signum: int, at_step: int, rank: int = 0) -> None:
        self.signum, self.at_step, self.rank, self.sent = int(signum), int(at_step), int(rank), False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at_step and trainer.global_rank == self.rank and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class SendSignalInTheTest(pl.Callback):
    """Sends ``signum`` to its own process when the test after fit starts its first batch."""

    def __init__(self, signum: int) -> None:
        self.signum, self.sent = int(signum), False

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class _Midway:
    """Pickled as the last entry of a checkpoint: sends ``signals`` while the atomic writer's partial file
    is open and half written, leaving each one time to be handled."""

    def __init__(self, signals: list[int]) -> None:
        self.signals = signals

    def __reduce__(self):
        for signum in self.signals:
            os.kill(os.getpid(), signum)
            time.sleep(0.5)  # the first sets StopOnSignal's flag; a second one raises here, inside torch.save
        return collections.OrderedDict, ()  # what the file holds if the save goes on: readable, weights_only


class _SignallingIO(AtomicCheckpointIO):
    def __init__(self, owner: SignalDuringSave) -> None:
        super().__init__()
        self.owner = owner

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        owner = self.owner
        if Path(path).name == "last.ckpt" and checkpoint.get("epoch") == owner.epoch and not owner.done:
            owner.done = True
            checkpoint = {**checkpoint, "zz_midway": _Midway(owner.signals)}
        super().save_checkpoint(checkpoint, path, storage_options)


class SignalDuringSave(pl.Callback):
    """Sends ``signals`` to its own process in the middle of writing ``last.ckpt`` at the end of ``epoch``."""

    def __init__(self, epoch: int, signals: list[int]) -> None:
        self.epoch, self.signals, self.done = int(epoch), [int(s) for s in signals], False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # before BestAndLastCheckpoint.setup, which keeps a writer that is already atomic
            trainer.strategy.checkpoint_io = _SignallingIO(self)


#: this module as the subprocesses import it (pytest may import it as ``test_bad_inputs_signals``)
HERE = "tests.test_bad_inputs_signals"


def send_at(signum: int, step: int, rank: int = 0) -> list[str]:
    return [f"+callbacks.send._target_={HERE}.SendSignal", f"+callbacks.send.signum={int(signum)}",
            f"+callbacks.send.at_step={step}", f"+callbacks.send.rank={rank}"]


def during_save(epoch: int, *signals: int) -> list[str]:
    return [f"+callbacks.midway._target_={HERE}.SignalDuringSave", f"+callbacks.midway.epoch={epoch}",
            f"+callbacks.midway.signals=[{','.join(str(int(s)) for s in signals)}]"]


# ------------------------------------------------------------------------------------------------- helpers
class Run:
    """``python <args>`` from the repository root in a session of its own, output to ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env=full_env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"ended (status {self.proc.returncode}) before {what}:\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{self.text[-3000:]}"
            time.sleep(0.1)

    def wait_line(self, pattern: str, timeout: float = 300) -> None:
        self.wait_for(lambda: re.search(pattern, self.text) is not None, repr(pattern), timeout)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def session_ends(self, timeout: float = 60) -> bool:
        """Whether every process of its session (DDP ranks, loader workers) is gone within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        os.killpg(self.proc.pid, signal.SIGKILL)
        return False


def wait_mid_epoch(run: Run, log_dir: Path, first_step: int = STEPS_PER_EPOCH + 9) -> None:
    """Until metrics.csv has a row of step ``first_step`` or later: epoch 1 (from 0) is well under way, with
    some 40 steps to go (rows come every 10 steps)."""

    def logged() -> bool:
        found = list(log_dir.rglob("metrics.csv"))
        try:
            return bool(found) and any(int(r["step"]) >= first_step for r in metrics(found[0]))
        except (ValueError, TypeError, KeyError):  # a row being written
            return False

    run.wait_for(logged, f"a metrics.csv row at step {first_step}")


def run_folder(log_dir: Path) -> Path:
    (run,) = (log_dir / "train" / "runs").iterdir()
    return run


def checkpoint_state(path: Path) -> tuple[int, int]:
    """(epoch, global_step) of a checkpoint, read as a resume reads it (weights_only)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt["epoch"]), int(ckpt["global_step"])


def metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_each_epoch_once(path: Path, epochs: int) -> None:
    """Epoch-level rows once per epoch, 0..epochs-1 in order; steps in order; no value logged twice at a step."""
    rows = metrics(path)
    for key in ("val/mIoU", "train/loss_epoch"):
        assert [int(r["epoch"]) for r in rows if r.get(key)] == list(range(epochs)), (key, path.read_text()[-2000:])
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps), steps
    logged = collections.Counter((r["step"], k) for r in rows for k, v in r.items() if v and k not in ("step", "epoch"))
    assert max(logged.values()) == 1, [k for k, n in logged.items() if n > 1][:5]


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Error executing job" not in text, text[-4000:]


def resume_args(text: str) -> list[str]:
    """The command the stop line gives, as arguments for this interpreter (``python`` dropped)."""
    found = STOP.search(text)
    assert found, text[-3000:]
    command = shlex.split(found.group(6))
    assert command[:2] == ["python", "train.py"], command
    return command[1:]


# =================================================================================================== fast
def test_rows_logged_after_the_checkpoint_are_dropped_atomically(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/mIoU\n0,9,1.0,\n0,9,,0.5\n1,19,0.8,\n1,19,,0.6\n1,29,0.7,\n,x,,\n")
    assert drop_rows_from_step(path, 19) == 3  # step 19 (an epoch the checkpoint does not hold) and 29
    assert [r["step"] for r in metrics(path)] == ["9", "9", "x"]  # an unreadable step is kept, not guessed
    assert drop_rows_from_step(path, 19) == 0
    assert not list(tmp_path.glob(".*partial"))


def test_a_resumed_csv_logger_drops_the_stale_rows_before_appending(tmp_path: Path, caplog) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,step,val/mIoU\n0,49,0.5\n1,99,0.6\n2,120,\n")
    logger = CSVLogger(save_dir=tmp_path, name="", version="")
    with caplog.at_level("INFO"):
        logger.log_metrics({"train/loss": 0.3, "epoch": 1}, step=100)  # resumed at the end of epoch 1
        logger.save()
    assert "dropped 1 row(s) at step >= 100" in caplog.text
    assert [(r["step"], r["val/mIoU"], r["train/loss"]) for r in metrics(tmp_path / "metrics.csv")] == [
        ("49", "0.5", ""), ("99", "0.6", ""), ("100", "", "0.3")]


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)


class _SaveAt(pl.Callback):
    """Saves ``batch_end.ckpt`` in on_train_batch_end of step 5 (as a signal's stop does) and ``epoch_end.ckpt``
    at the end of epoch 0; records the step the fit logs first."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.first_logged_step = folder, None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.first_logged_step is None:
            self.first_logged_step = trainer.fit_loop.epoch_loop._batches_that_stepped

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == 6 and not (self.folder / "batch_end.ckpt").exists():
            trainer.save_checkpoint(self.folder / "batch_end.ckpt")

    def on_train_epoch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.folder / "epoch_end.ckpt")


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.parametrize("saved", ["batch_end", "epoch_end"])
def test_the_logging_step_of_a_checkpoint_is_where_lightning_resumes_logging(tmp_path: Path, saved: str) -> None:
    """A checkpoint written in on_train_batch_end (a signal's stop) resumes logging at the step after the saved
    one: the resumed fit drops rows from there, so the saved step's own row stays (a CI run lost it)."""
    def fit(callback: _SaveAt, ckpt_path: Path | None = None) -> None:
        pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[callback]).fit(_Tiny(), ckpt_path=ckpt_path)

    fit(_SaveAt(tmp_path))
    path = tmp_path / f"{saved}.ckpt"
    resumed = _SaveAt(tmp_path)
    fit(resumed, path)
    assert logging_step(torch.load(path, weights_only=True)) == resumed.first_logged_step == (6 if saved == "batch_end" else 4)


@pytest.mark.parametrize("slurm", [False, True])
def test_a_signal_stops_with_143_or_130_and_no_traceback(monkeypatch, slurm: bool) -> None:
    # SIGUSR1 too, in a SLURM job as well (its time-limit signal: the default action would end the process
    # without a word; during fit StopOnSignal requeues the job)
    if slurm:
        monkeypatch.setenv("SLURM_JOB_ID", "77")
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGUSR1, 138)):
        previous = signal.getsignal(signum)
        with pytest.raises(StoppedBySignal) as stopped, exit_on_signals():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # interrupted at once
        assert stopped.value.code == status and isinstance(stopped.value, SystemExit)
        assert signal.getsignal(signum) is previous  # the entry point's handlers are gone after it
    wrapped = RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated.")
    wrapped.__context__ = StoppedBySignal(signal.SIGTERM)
    assert as_stop(wrapped).code == 143
    assert as_stop(ValueError("a bug")) is None


IMPORTED_MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.{name})   # a signal while this module is being imported
time.sleep(0.3)                       # the import goes on, as torch's would
DONE = True
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_an_import_stops_once_the_import_is_over(name: str, tmp_path: Path, monkeypatch) -> None:
    """Raised in the middle of ``import torch`` the stop left torch half-initialised: a 190-line traceback from
    its cleanup or a segmentation fault (exit 139). The module is now imported whole, then the run stops."""
    (tmp_path / f"imported_{name.lower()}.py").write_text(IMPORTED_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(StoppedBySignal) as stopped, exit_on_signals():
        module = __import__(f"imported_{name.lower()}")
        assert module.DONE  # the import finished
        time.sleep(5)  # the signal is delivered again and stops here
    assert stopped.value.code == 128 + signal.Signals[name]


def test_the_stop_line_gives_the_resume_command(monkeypatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))  # an earlier test may set one
    line = stop_line(signal.SIGTERM, 2, 15, 57, "/runs/a b/checkpoints/last.ckpt")
    assert STOP.search(line).groups()[:5] == ("SIGTERM", "2", "14", "57", "143")  # epochs from 0
    assert line.endswith("python train.py \"ckpt_path='/runs/a b/checkpoints/last.ckpt'\"")
    # a job folder of an earlier sweep (1_loss=ohem) or any path Hydra's grammar does not take as it is: quoted
    # for Hydra, then for the shell, and the command resumes in place (seg_template/cli.py)
    command = stop_line(signal.SIGTERM, 0, 2, 3, "/s/1_loss=ohem/checkpoints/last.ckpt").split("resume with ")[1]
    argv = shlex.split(command)[1:]
    assert argv == ["train.py", "ckpt_path='/s/1_loss=ohem/checkpoints/last.ckpt'"]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_overrides(argv[1:])[0].value() == "/s/1_loss=ohem/checkpoints/last.ckpt"
    assert "no last.ckpt to resume from (this run keeps none" in stop_line(signal.SIGINT, 0, 15, 3, None)
    assert stop_line(signal.SIGINT, 0, 15, 0, None, mid_epoch=False) == (
        "Stopped by SIGINT before the first training step (exit status 130); no last.ckpt to resume from "
        "(nothing trained yet)")
    assert "after epoch 2/14 at step 60" in stop_line(signal.SIGINT, 3, 15, 60, "last.ckpt", mid_epoch=False)
    assert "in epoch 3/14 at step 61" in stop_line(signal.SIGINT, 3, 15, 61, "last.ckpt")  # from 0, as everywhere


def test_in_process_fit_stops_after_the_step_with_last_ckpt(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=[*SIG, *send_at(signal.SIGTERM, step=7)], output_dir=tmp_path)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedBySignal) as stopped:
        train(cfg)
    assert stopped.value.code == 143 and stopped.value.reported
    assert checkpoint_state(tmp_path / "checkpoints" / "last.ckpt") == (0, 8)  # the step in progress finished
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_signal_during_the_test_after_fit_says_the_fit_is_complete(compose_cfg, tmp_path: Path, caplog) -> None:
    """It said only "Stopped by SIGTERM (exit status 143)": nothing told that fit had finished and best.ckpt was
    there, nor how to run the test alone."""
    overrides = [*TRAIN, "trainer.max_epochs=1", "test=true", f"+callbacks.send._target_={HERE}.SendSignalInTheTest",
                 f"+callbacks.send.signum={int(signal.SIGTERM)}"]
    cfg = compose_cfg(overrides=overrides, output_dir=tmp_path)
    with pytest.raises(StoppedBySignal) as stopped, exit_on_signals(), caplog.at_level("WARNING"):
        train(cfg)
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert stopped.value.code == 143 and stopped.value.reported and best.is_file()
    (line,) = [r.getMessage() for r in caplog.records if "during the test after fit" in r.getMessage()]
    assert line == (f"Stopped by SIGTERM during the test after fit (exit status 143); the fit is complete and "
                    f"best.ckpt holds its best weights: test them with python eval.py ckpt_path={best} split=test")


def test_rank_errors_are_claimed_once_and_found_by_the_others(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(LAUNCH_ENV, f"test-{tmp_path.name}")
    monkeypatch.chdir(tmp_path)
    assert claim_message("DataError: mask a.png has label 9")
    assert not claim_message("DataError: mask a.png has label 9")  # the same error on another rank
    assert claim_message("DataError: mask b.png has label 9")
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    record_failure("DataError: mask a.png has label 9")
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert failures_of_other_ranks(wait_s=0) == {1: "DataError: mask a.png has label 9"}
    shutil.rmtree(_records_folder())


def test_a_lost_peer_is_one_line_naming_the_rank_that_failed() -> None:
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:7588\n" * 30)
    assert is_peer_failure(gloo) and not is_peer_failure(RuntimeError("shape mismatch"))
    line = peer_failure_line(0, gloo, {1: "DataError: mask val_001.png: label value(s) [9]"})
    assert "rank 1 ended first (DataError, printed above)" in line and "\n" not in line and len(line) < 300
    assert "another process of this DDP run ended first" in peer_failure_line(1, gloo, {})


def test_a_user_error_in_a_spawned_process_traceback_is_found() -> None:
    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
            '  File "x.py", line 3, in f\n    raise DataError(msg)\n'
            "seg_template.errors.DataError: mask val_001.png: label value(s) [9] outside [0, 3)\n")
    err = user_error_in_text(text)
    assert isinstance(err, DataError) and str(err) == "mask val_001.png: label value(s) [9] outside [0, 3)"
    assert user_error_in_text("builtins.ValueError: x") is None


# =================================================================================================== slow
@pytest.mark.slow
def test_sigterm_mid_epoch_exits_143_and_the_printed_command_resumes(tmp_path: Path) -> None:
    run = Run(["train.py", *SIG, f"paths.log_dir={tmp_path}"], tmp_path / "first.log")
    wait_mid_epoch(run, tmp_path)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143
    text = run.text
    assert_no_traceback(text)
    stop = STOP.search(text)
    assert stop and stop.group(1) == "SIGTERM" and text.count("Stopped by") == 1, text[-3000:]
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    epoch, step = checkpoint_state(last)  # complete and loadable as a resume loads it
    assert step == int(stop.group(4)) and epoch == int(stop.group(2)) and step % STEPS_PER_EPOCH
    assert not list(last.parent.glob(".*partial"))

    resumed = Run(resume_args(text), tmp_path / "resumed.log")
    assert resumed.finish() == 0, resumed.text[-3000:]
    assert checkpoint_state(last) == (2, 3 * STEPS_PER_EPOCH)
    assert_each_epoch_once(run_folder(tmp_path) / "metrics.csv", epochs=3)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGHUP", 129)])  # SIGHUP: the terminal closed
def test_sigint_and_sighup_exit_with_a_complete_last_ckpt(name: str, status: int, tmp_path: Path) -> None:
    run = Run(["train.py", *SIG, f"paths.log_dir={tmp_path}"], tmp_path / "run.log")
    wait_mid_epoch(run, tmp_path)
    run.proc.send_signal(signal.Signals[name])
    assert run.finish() == status
    assert_no_traceback(run.text)
    assert STOP.search(run.text).group(1) == name
    epoch, step = checkpoint_state(run_folder(tmp_path) / "checkpoints" / "last.ckpt")
    assert epoch >= 1 and step > STEPS_PER_EPOCH


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "where"), [(0, "epoch end"), (2, "mid-epoch")])
def test_a_stopped_run_resumes_to_the_same_metrics(tmp_path: Path, workers: int, where: str) -> None:
    """SIGTERM during the epoch-end save (the save completes, the run stops before the next epoch) or in the
    middle of epoch 1: the resumed run ends exactly where an uninterrupted run of the same seed ends, also
    with loader workers. Lightning builds the resumed epoch's loader, whose workers prefetch, before it calls
    set_epoch (the DataModule sets the epoch itself); after a mid-epoch stop it would replay the epoch's
    first batches, where the training loader resumes after the batches the checkpoint had taken. The stopped
    epoch's mean training loss covers only the steps after the resume (Lightning keeps no running means)."""
    sig = [*SIG, f"data.num_workers={workers}"]
    whole = Run(["train.py", *sig, f"paths.log_dir={tmp_path / 'whole'}"], tmp_path / "whole.log")
    assert whole.finish() == 0, whole.text[-3000:]
    # mid-epoch: a logging step (rows every 10 steps), whose row Lightning logs only after the batch-end hooks
    stop = during_save(0, signal.SIGTERM) if where == "epoch end" else send_at(signal.SIGTERM, STEPS_PER_EPOCH + 29)
    run = Run(["train.py", *sig, *stop, f"paths.log_dir={tmp_path / 'cut'}"], tmp_path / "cut.log")
    assert run.finish() == 143, run.text[-3000:]
    assert_no_traceback(run.text)
    last = run_folder(tmp_path / "cut") / "checkpoints" / "last.ckpt"
    assert checkpoint_state(last) == ((0, STEPS_PER_EPOCH) if where == "epoch end" else (1, STEPS_PER_EPOCH + 30))
    resumed = Run(["train.py", *sig, f"paths.log_dir={tmp_path / 'cut'}", f"ckpt_path={last}"],
                  tmp_path / "resumed.log")
    assert resumed.finish() == 0, resumed.text[-3000:]
    assert "not resumable" not in resumed.text  # Lightning's warning for a loader that replays the epoch

    def values(log_dir: Path) -> list[dict[str, str]]:
        rows = [{k: v for k, v in r.items() if not TIMING.search(k)} for r in metrics(run_folder(log_dir) / "metrics.csv")]
        if where == "mid-epoch":  # the stopped epoch's mean training loss: Lightning keeps no running means
            rows = [{k: v for k, v in r.items() if not (r["epoch"] == "1" and k.endswith("_epoch"))} for r in rows]
        return rows

    assert values(tmp_path / "cut") == values(tmp_path / "whole")
    weights = [torch.load(run_folder(tmp_path / d) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for d in ("cut", "whole")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


@pytest.mark.slow
def test_a_second_sigint_during_a_save_keeps_the_previous_last_ckpt(tmp_path: Path) -> None:
    run = Run(["train.py", *SIG, *during_save(1, signal.SIGINT, signal.SIGINT), f"paths.log_dir={tmp_path}"],
              tmp_path / "run.log")
    assert run.finish() == 130, run.text[-3000:]
    assert_no_traceback(run.text)
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    assert checkpoint_state(last) == (0, STEPS_PER_EPOCH)  # epoch 1's save was abandoned: epoch 0's stays whole
    assert not list(last.parent.glob(".*partial"))
    assert [r["epoch"] for r in metrics(last.parent.parent / "metrics.csv") if r.get("val/mIoU")] == ["0", "1"]

    resumed = Run(["train.py", *SIG, f"paths.log_dir={tmp_path}", f"ckpt_path={last}"], tmp_path / "resumed.log")
    assert resumed.finish() == 0, resumed.text[-3000:]
    assert re.search(r"metrics\.csv: dropped \d+ row\(s\) at step >= 5\d", resumed.text), resumed.text[-3000:]
    assert_each_epoch_once(last.parent.parent / "metrics.csv", epochs=3)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_logs_each_epoch_once(tmp_path: Path) -> None:
    run = Run(["train.py", *SIG, *send_at(signal.SIGKILL, step=STEPS_PER_EPOCH + 30), f"paths.log_dir={tmp_path}"],
              tmp_path / "run.log")
    assert run.finish() == -signal.SIGKILL
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    assert checkpoint_state(last) == (0, STEPS_PER_EPOCH)
    resumed = Run(["train.py", *SIG, f"paths.log_dir={tmp_path}", f"ckpt_path={last}"], tmp_path / "resumed.log")
    assert resumed.finish() == 0, resumed.text[-3000:]
    assert "metrics.csv: dropped" in resumed.text  # epoch 1's first 30 steps, logged before the kill
    assert_each_epoch_once(last.parent.parent / "metrics.csv", epochs=3)


@pytest.mark.slow
@pytest.mark.parametrize(("rank", "how"), [(0, "external"), (1, "rank 1 only")])
def test_sigterm_under_ddp_cpu_stops_every_rank(rank: int, how: str, tmp_path: Path) -> None:
    signalled = send_at(signal.SIGTERM, step=30, rank=1) if rank else []
    run = Run(["train.py", *SIG, "trainer=ddp_cpu", *signalled, f"paths.log_dir={tmp_path}"], tmp_path / "run.log")
    if not rank:
        run.wait_line(r"epoch 0/2 \|")  # 25 steps per rank and epoch
        run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.text[-3000:]
    assert run.session_ends(), "a DDP rank outlived the run"
    assert_no_traceback(run.text)
    assert run.text.count("Stopped by SIGTERM") == 1
    epoch, step = checkpoint_state(run_folder(tmp_path) / "checkpoints" / "last.ckpt")
    # the ranks agree at logging steps (every 10): rank 1's signal at step 30 stops them all after step 39
    assert step == int(STOP.search(run.text).group(4)) and (not rank or step == 40)


@pytest.mark.slow
def test_sigterm_under_slurm_ends_resumable_by_the_requeued_job(tmp_path: Path) -> None:
    from tests.slurm_cluster import skip_where_a_cluster_runs

    skip_where_a_cluster_runs("test_preempted_jobs_resume_to_the_metrics_of_an_uninterrupted_one")
    env = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost",
           "SLURM_JOB_NAME": "train"}
    args = ["train.py", "trainer=cpu", *SIG, f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path}"]
    run = Run(args, tmp_path / "first.log", env)
    wait_mid_epoch(run, tmp_path)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.text[-3000:]
    assert "should SLURM requeue the job, it resumes from hpc_ckpt_1.ckpt" in run.text
    assert checkpoint_state(tmp_path / "run" / "hpc_ckpt_1.ckpt") == checkpoint_state(
        tmp_path / "run" / "checkpoints" / "last.ckpt")  # the same step, mid-epoch
    again = Run(args, tmp_path / "second.log", env)  # what SLURM runs when it requeues the job
    assert again.finish() == 0, again.text[-3000:]
    assert f"Restoring states from the checkpoint path at {tmp_path / 'run' / 'hpc_ckpt_1.ckpt'}" in again.text
    assert_each_epoch_once(tmp_path / "run" / "metrics.csv", epochs=3)


@pytest.mark.slow
def test_sigterm_during_eval_exits_143_without_traceback(compose_cfg, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    run = Run(["eval.py", *[o for o in TRAIN if not o.startswith(("callbacks.", "test="))],
               f"ckpt_path={workspace['good']}", "data.val_set.length=20000", f"paths.log_dir={tmp_path}"],
              tmp_path / "eval.log")
    run.wait_line(r"Evaluating ")
    time.sleep(2)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.text[-3000:]
    assert_no_traceback(run.text)
    assert "Stopped by SIGTERM (exit status 143)" in run.text


@pytest.mark.slow
def test_sigint_during_predict_exits_130_without_traceback(compose_cfg, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(images / f"img{i:03d}.png")
    run = Run(["predict.py", *[o for o in TRAIN if not o.startswith(("callbacks.", "test="))], "device=cpu",
               f"ckpt_path={workspace['good']}", f"input={images}", f"output_dir={tmp_path / 'out'}",
               f"paths.log_dir={tmp_path}"], tmp_path / "predict.log")
    run.wait_line(r"Predicting 400 images")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.text[-3000:]
    assert_no_traceback(run.text)
    assert "Stopped by SIGINT (exit status 130)" in run.text


def _rank1_fault(root: Path) -> Path:
    """A folder dataset whose val mask 1 (read by rank 1 only: ranks read r, r + 2, ...) has label 9."""
    make_folder(root, splits={"train": 8, "val": 4}, size=(32, 32))
    mask = root / "masks" / "val" / "val_001.png"
    labels = np.asarray(Image.open(mask)).copy()
    labels[5, 5] = 9
    Image.fromarray(labels).save(mask)
    return mask


@pytest.mark.slow
def test_a_data_error_on_rank_1_is_printed_once_and_rank_0_says_why_it_stopped(tmp_path: Path) -> None:
    mask = _rank1_fault(tmp_path / "data")
    run = Run(["train.py", *FOLDER, f"data.root={tmp_path / 'data'}", "data.preflight=none", "trainer=ddp_cpu",
               "trainer.max_epochs=1", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path / "run.log")
    assert run.finish() == 1
    text = run.text
    assert_no_traceback(text)
    assert text.count("DataError") == 2 and text.count(mask.name) == 1, text[-3000:]  # the block, and rank 0's line
    assert re.search(rf"DataError: mask file \S*{mask.name}: label value\(s\) \[9\].*\n.*found by DDP rank 1", text)
    assert "Rank 0 stopped because rank 1 ended first (DataError, printed above)" in text
    assert text.count("Connection closed by peer") <= 1  # in rank 0's line at most, not in a traceback
    assert run.session_ends()


@pytest.mark.slow
def test_a_config_error_every_rank_hits_is_printed_once(tmp_path: Path) -> None:
    run = Run(["train.py", *TRAIN, "trainer=ddp_cpu", "trainer.max_epochs=1",
               "callbacks.model_checkpoint.monitor=val/nope", f"paths.log_dir={tmp_path}"], tmp_path / "run.log")
    assert run.finish() == 1
    assert_no_traceback(run.text)
    assert run.text.count("ConfigError: callbacks.model_checkpoint.monitor='val/nope'") == 1, run.text[-3000:]
