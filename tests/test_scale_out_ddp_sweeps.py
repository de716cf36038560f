"""Sweeps of DDP jobs (``python train.py -m ... trainer=ddp_cpu``): the sweep runs each job in its own process
as rank 0, and Lightning starts rank 1 as a child of it (seg_template/launched_ranks.py, jobs.py, cli.py).

- a user error found by rank 1 of one job fails that job, printed once with its rank; the sweep goes on (a
  basic sweep and an Optuna study), lists the job as failed with that error, and leaves no process behind;
- every rank of an Optuna trial trains with the trial's sampled parameters.

The fast tests check the rank watcher on plain processes; the ``slow`` ones run real sweeps on 32x32 images.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from seg_template.cli import user_error_of_other_ranks
from seg_template.errors import DataError
from seg_template.launched_ranks import RankWatcher, end_ranks, watch_launched_ranks
from tests.bad_input_files import FOLDER
from tests.fixtures import make_folder
from tests.test_bad_inputs_signals import Run, _rank1_fault
from tests.test_scale_out_optuna import skip_without_optuna, study_trials

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

#: a DDP job on a folder dataset (rank 1 reads val images 1, 3, ...), one epoch; no pre-flight, which would
#: find the bad mask on every rank before the ranks start
DDP_FOLDER = [*FOLDER, "data.preflight=none", "trainer=ddp_cpu", "trainer.max_epochs=1"]
#: what Lightning's own observer logs before it kills rank 0 (and with it the sweep)
LIGHTNING_KILL = "Forcefully terminating all other processes"
#: the user error block, as the rank that found it prints it
BLOCK = "(found by DDP rank 1; a problem with the config, data or checkpoint"
#: a seed whose first two random Optuna proposals of ``data.root=choice(bad,good)`` (after the learning rate
#: and the weight decay) are bad, then good (Optuna 2.10's TPE: random proposals for its first 10 trials)
BAD_THEN_GOOD_SEED = 0


# ------------------------------------------------------------------------- test-only callback (-> +callbacks.x)
class RecordOptimisation(pl.Callback):
    """Writes what this rank trains with to ``<run folder>/trained_with_rank<k>.json`` when training starts:
    each parameter group's base learning rate and weight decay, the loss's class and its threshold/gamma."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = [{"lr": g.get("initial_lr", g["lr"]), "weight_decay": g["weight_decay"]}
                  for g in trainer.optimizers[0].param_groups]
        main = pl_module.loss.main
        record = {"groups": groups, "loss": type(main).__name__,
                  "loss_params": {k: getattr(main, k) for k in ("thresh", "gamma") if hasattr(main, k)}}
        path = Path(trainer.default_root_dir) / f"trained_with_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record, default=float))


RECORD = ["+callbacks.record._target_=tests.test_scale_out_ddp_sweeps.RecordOptimisation"]


# ------------------------------------------------------------------------------------------------- helpers
def read_summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def processes_mentioning(text: str) -> list[str]:
    """The command lines of this machine's processes (other than this one) that contain ``text``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(proc.name) != os.getpid():
            found.append(cmdline)
    return found


def assert_nothing_left(run: Run, tmp_path: Path) -> None:
    """No process of the sweep's session (ranks, loader workers) and no rank of its jobs is running."""
    assert run.session_ends(timeout=5), "a process of the sweep outlived it"
    assert not processes_mentioning(str(tmp_path)), processes_mentioning(str(tmp_path))


def assert_rank_1_error_printed_once(text: str, mask: Path) -> None:
    """The user error block once (by rank 1), rank 0's one line once, no gloo traceback, no kill."""
    assert text.count(BLOCK) == 1, text[-4000:]
    assert text.count(f"{mask.name}: label value(s) [9]") >= 1
    assert text.count("Rank 0 stopped because rank 1 ended first (DataError, printed above)") == 1, text[-4000:]
    assert text.count("Connection closed by peer") <= 1  # in rank 0's line, not in a traceback
    assert LIGHTNING_KILL not in text


def good_and_bad_roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A folder dataset, the same with a bad val mask that rank 1 alone reads, and that mask."""
    good = make_folder(tmp_path / "good", splits={"train": 8, "val": 4}, size=(32, 32))
    mask = _rank1_fault(tmp_path / "bad")
    return good, tmp_path / "bad", mask


# ------------------------------------------------------------------------------ the rank watcher, in-process
def _sleeper(seconds: float = 60, ignore_term: bool = False) -> subprocess.Popen:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += f"print('ready', flush=True)\ntime.sleep({seconds})\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its handler is in place
    return proc


def test_lightning_launches_our_watcher_while_a_job_runs() -> None:
    from pytorch_lightning.strategies.launchers import subprocess_script

    lightning_observer = subprocess_script._launch_process_observer  # the name Lightning's launcher calls
    with watch_launched_ranks():
        assert subprocess_script._launch_process_observer is not lightning_observer
    assert subprocess_script._launch_process_observer is lightning_observer


def test_a_failed_rank_stops_the_others_and_rank_0_only_after_the_grace_period(caplog) -> None:
    rank0 = _sleeper()  # stands for this process
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    failed.wait()
    other = _sleeper()
    watcher = RankWatcher([failed, other], main_pid=rank0.pid, period_s=0.05, grace_s=1.0)
    assert not watcher.check()  # the failure seen: the other rank stopped, rank 0 left to fail on its own
    assert other.wait(timeout=10) == -signal.SIGTERM and rank0.poll() is None
    assert not watcher.check()
    time.sleep(1.0)
    assert watcher.check()  # rank 0 still running after the grace period: killed, with a line saying why
    assert rank0.wait(timeout=10) == -signal.SIGKILL
    assert f"DDP rank 1 ended (exit status 3) 1 s ago and rank 0 (process {rank0.pid}) is still waiting" in caplog.text


def test_a_stopped_watcher_kills_nothing() -> None:
    rank0 = _sleeper()
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    watcher = RankWatcher([failed], main_pid=rank0.pid, period_s=0.05, grace_s=0.2)
    watcher.start()
    failed.wait()
    time.sleep(0.1)
    watcher.stop()  # the job ended (rank 0 failed in its collective) before the grace period
    watcher.join(timeout=5)
    time.sleep(0.3)
    assert not watcher.is_alive() and rank0.poll() is None
    end_ranks([rank0], wait_s=0)


def test_ranks_that_outlive_their_job_are_stopped_and_reaped() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    stubborn = _sleeper(ignore_term=True)
    started = time.monotonic()
    end_ranks([done, stubborn], wait_s=0.5, terminate_wait_s=0.5)
    assert done.returncode == 0 and stubborn.returncode == -signal.SIGKILL  # SIGTERM ignored
    assert time.monotonic() - started < 5


def test_a_job_whose_rank_0_lost_its_peer_fails_with_the_peer_s_user_error() -> None:
    found = user_error_of_other_ranks({2: "DataError: mask m.png has label 9", 1: "RuntimeError: Connection closed"})
    assert isinstance(found, DataError) and str(found) == "mask m.png has label 9 (found by DDP rank 2)"
    assert user_error_of_other_ranks({1: "RuntimeError: Connection closed"}) is None  # no user error: rank 0's line


# --------------------------------------------------------------------------------------------- real sweeps
@pytest.mark.slow
def test_a_rank_1_error_fails_its_job_and_the_sweep_goes_on(tmp_path: Path) -> None:
    good, bad, mask = good_and_bad_roots(tmp_path)
    run = Run(["train.py", "-m", *DDP_FOLDER, f"data.root={bad},{good}", f"paths.log_dir={tmp_path / 'logs'}"],
              tmp_path / "sweep.log")
    assert run.finish() == 1, run.text[-4000:]  # the basic sweeper's status for a failed job, not 137
    text = run.text
    assert_nothing_left(run, tmp_path)
    assert_rank_1_error_printed_once(text, mask)
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    rows = {Path(r["overrides"].removeprefix("data.root=")).name: r for r in read_summary(sweep)}
    assert rows["good"]["status"] == "completed" and rows["good"]["best val/mIoU %"], rows
    assert rows["bad"]["status"] == "failed", rows
    assert rows["bad"]["error"].startswith(f"DataError: mask file {mask}: label value(s) [9]"), rows["bad"]
    assert rows["bad"]["error"].endswith("(found by DDP rank 1)")


@pytest.mark.slow
def test_an_optuna_study_goes_on_past_a_failed_rank_and_each_rank_trains_with_the_trial_s_parameters(
        tmp_path: Path) -> None:
    """Trial 0's rank 1 fails on its data: the trial is recorded failed and the study goes on. Trial 1 trains
    on both ranks with the parameters the study drew for it (other templates let each rank draw its own)."""
    skip_without_optuna()
    from optuna.trial import TrialState

    good, bad, mask = good_and_bad_roots(tmp_path)
    run = Run(["train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"seed={BAD_THEN_GOOD_SEED}",
               "loss=ce", *DDP_FOLDER, *RECORD, f"data.root=choice({bad},{good})",
               f"paths.log_dir={tmp_path / 'logs'}"], tmp_path / "study.log")
    assert run.finish() == 0, run.text[-4000:]  # a failed trial is recorded, the study completes
    text = run.text
    assert_nothing_left(run, tmp_path)
    assert_rank_1_error_printed_once(text, mask)
    sweep = tmp_path / "logs" / "train" / "optuna" / "optuna"
    trials = study_trials(sweep)
    assert [t.params["data.root"] for t in trials] == [str(bad), str(good)], "the seed's proposals changed"
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    rows = {r["job"]: r for r in read_summary(sweep)}
    assert rows["0"]["status"] == "failed" and rows["0"]["error"].startswith("DataError: mask file"), rows
    assert rows["1"]["status"] == "completed", rows
    job = sweep / str(trials[1].number)
    rank0, rank1 = (json.loads((job / f"trained_with_rank{k}.json").read_text()) for k in (0, 1))
    assert rank0 == rank1, (trials[1].params, rank0, rank1)
    check_trained_with(rank0, trials[1].params)


def check_trained_with(record: dict[str, Any], params: dict[str, Any]) -> None:
    """``record`` (:class:`RecordOptimisation`) holds the trial's learning rate, weight decay and loss parameter."""
    decay, no_decay = record["groups"]
    assert decay["lr"] == pytest.approx(params["optimizer.lr"]) and no_decay["lr"] == decay["lr"]
    assert decay["weight_decay"] == pytest.approx(params["optimizer.weight_decay"])
    assert no_decay["weight_decay"] == 0.0
    for key in ("thresh", "gamma"):
        if f"loss.main.{key}" in params:
            assert record["loss_params"][key] == pytest.approx(params[f"loss.main.{key}"])
