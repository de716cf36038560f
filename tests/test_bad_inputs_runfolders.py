"""Catalogue of bad inputs, family "run-folder ownership" (issue 17, section 3): run folders and checkpoints
that always mean what they say.

- A run folder moved or copied, then resumed: no ``-v1`` files, ``last.ckpt`` the newest state, ``best.ckpt``
  the best one (its score kept), and the test after fit uses this folder's ``best.ckpt``.
- One live run per folder (``seg_template/run_folder.py``): a fresh run whose folder exists gets ``_2``; a
  resume into a folder held by a live run is refused naming it; a lock left by a run that is gone is taken
  over with a notice; DDP ranks > 0 and a requeued SLURM job are never refused. Ranks > 0 that torchrun or srun
  started wait until rank 0 holds the folder, then write only their own log (``<task>_rank<k>.log``); without
  ``hydra.run.dir=`` they join the timestamped folder rank 0 took.
- Resume with changed optimisation options (``seg_template/resume.py``): applied from the resumed step with one
  notice line naming each ``key: old -> new``; another optimiser class is one short message naming both.
- Nothing a run writes destroys what a folder holds: a fresh run, eval / predict / export or another folder's
  checkpoint typed into a folder with results (``hydra.run.dir=``) is refused before Hydra writes; ``train=false``
  in a run folder appends its test (only a resumed fit drops rows, those after its checkpoint); a resume in
  place from a checkpoint older than ``last.ckpt``, or from a link to another run's file, is refused; ``name=``
  is one folder-name word; ``callbacks.model_checkpoint.dirpath=<another run>/checkpoints`` is refused; a
  ``metrics.csv`` that cannot be continued and a checkpoint folder that cannot be written are named up front.

Fast cases run in-process on tiny data; ``slow`` ones start real ``train.py`` processes. The table:
``pytest tests/test_bad_inputs_runfolders.py -m "slow or not slow" -rxX -v``.
"""

from __future__ import annotations

import csv
import errno
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from seg_template.cli import user_message
from seg_template.errors import CheckpointError, ConfigError
from seg_template.optim import poly_factor
from seg_template.paths import PROJECT_ROOT
from seg_template.run_folder import LOCK_FILE, RunFolderBusy, RunFolderClaim, claim_run_folder
from seg_template.train import train
from tests.bad_input_files import TRAIN, assert_short_named, raised_user_error

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

#: the tiny data and model, without the figures written after each validation
BASE = [*TRAIN, "callbacks.val_images=null", "callbacks.reports=null"]
PROBE = "+callbacks.lr_probe._target_=tests.test_bad_inputs_runfolders.LrProbe"
LR, POWER, TOTAL, STEP = 3e-3, 0.9, 6, 4  # adamw's lr, poly's power; 3 epochs of 2 steps, stopped after 2


class StopAfterEpoch(pl.Callback):
    """Ends fit after epoch ``epoch`` (0-based), once ``last.ckpt`` is written: a run interrupted there."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True


class LrProbe(pl.Callback):
    """Records ``(global_step, learning rate of the first parameter group)`` before each training step."""

    def __init__(self) -> None:
        self.lrs: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.lrs.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


_RUNS: dict[str, Path] = {}


@pytest.fixture
def interrupted(compose_cfg, tmp_path_factory) -> Path:
    """A run of ``trainer.max_epochs=3`` (AdamW, poly) stopped after 2 epochs (step 4); shared, never resumed
    itself (each case copies it)."""
    if "run" not in _RUNS:
        run = tmp_path_factory.mktemp("interrupted")
        train(compose_cfg(overrides=[*BASE, "trainer.max_epochs=3",
                                     "+callbacks.stop._target_=tests.test_bad_inputs_runfolders.StopAfterEpoch",
                                     "+callbacks.stop.epoch=1"], output_dir=run))
        _RUNS["run"] = run
    return _RUNS["run"]


def copy_of(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def resume(compose_cfg, run: Path, *overrides: str, ckpt: str = "last.ckpt") -> tuple[dict, dict]:
    cfg = compose_cfg(overrides=[*BASE, "trainer.max_epochs=3", f"ckpt_path={run / 'checkpoints' / ckpt}", PROBE,
                                 *overrides], output_dir=run)
    return train(cfg)


def lr_at(objects: dict, step: int) -> float:
    probe = next(c for c in objects["callbacks"] if type(c).__name__ == "LrProbe")  # Hydra imported its own copy
    return dict(probe.lrs)[step]


def epoch_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def val_scores(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["epoch"]): float(r["val/mIoU"]) for r in csv.DictReader(f) if r.get("val/mIoU")}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- moved and copied run folders
@pytest.mark.parametrize("how", ["moved", "copied"])
def test_resume_a_moved_or_copied_run_folder(compose_cfg, interrupted, tmp_path, how):
    original = copy_of(interrupted, tmp_path / "original")
    here = tmp_path / "here"
    if how == "moved":
        original.rename(here)
    else:
        shutil.copytree(original, here)
    before = files(original) if how == "copied" else {}
    _, objects = resume(compose_cfg, here, "trainer.max_epochs=4", "test=true")
    folder = here / "checkpoints"
    assert sorted(os.listdir(folder)) == ["best.ckpt", "last.ckpt"]  # Lightning alone added best-v1, last-v1
    assert epoch_of(folder / "last.ckpt") == 3  # the newest state; Lightning alone left it at epoch 1
    scores = val_scores(here)
    best_epoch = max(sorted(scores), key=lambda e: scores[e])  # the first epoch with the highest score
    assert epoch_of(folder / "best.ckpt") == best_epoch
    assert objects["trainer"].ckpt_path == str(folder / "best.ckpt")  # what the test after fit used
    if how == "copied":
        assert files(original) == before  # the original folder is left alone


# ---------------------------------------------------------------- one live run per folder
HOLDER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from seg_template.run_folder import claim_run_folder
    claim_run_folder(Path(sys.argv[1]), fresh=False)
    print("ready", flush=True)
    if sys.argv[2] == "vanish":
        os._exit(0)  # as after kill -9: no clean-up, the lock file stays behind
    sys.stdin.read()
""")


def hold(folder: Path, how: str = "live", env: dict | None = None) -> subprocess.Popen:
    """Another process holding ``folder`` (``live`` until its stdin closes; ``vanish``: gone at once)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), how], cwd=PROJECT_ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
    assert proc.stdout.readline().strip() == "ready"
    if how == "vanish":
        proc.wait(timeout=30)
    return proc


def test_resume_into_a_folder_held_by_a_live_run_is_refused(tmp_path):
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        lock = (folder / LOCK_FILE).read_bytes()
        with pytest.raises(RunFolderBusy) as err:
            claim_run_folder(folder, fresh=False)
        assert_short_named(user_message(err.value), rf"RunFolderBusy: run folder {re.escape(str(folder))} is in use "
                                                    rf"by another run \(pid {holder.pid} on {socket.gethostname()}, "
                                                    r"started .*python -c.*resume_in_place=false")
        assert (folder / LOCK_FILE).read_bytes() == lock  # the live run's lock is untouched
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (folder / LOCK_FILE).exists()  # released at its exit
    assert claim_run_folder(folder, fresh=False) == (folder, [])  # free again, no notice


def test_a_lock_left_by_a_run_that_is_gone_is_taken_over_with_a_notice(tmp_path):
    folder = tmp_path / "run"
    gone = hold(folder, "vanish")
    assert (folder / LOCK_FILE).exists()
    claimed, notices = claim_run_folder(folder, fresh=False)
    assert claimed == folder and len(notices) == 1
    assert re.search(rf"took over the lock left by pid {gone.pid} on .*no longer holds it", notices[0])
    assert f'"pid": {os.getpid()}' in (folder / LOCK_FILE).read_text()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # some network filesystems

    live, gone = tmp_path / "live", tmp_path / "gone"
    holder = hold(live)
    vanished = hold(gone, "vanish")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    try:
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid} on {re.escape(socket.gethostname())}"):
            claim_run_folder(live, fresh=False)
        claimed, notices = claim_run_folder(gone, fresh=False)
        assert claimed == gone and f"took over the lock left by pid {vanished.pid}" in notices[0]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_requeued_slurm_job_is_not_refused_by_its_earlier_start(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    holder = hold(folder, env={"SLURM_JOB_ID": "4242"})
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        assert claim_run_folder(folder, fresh=False)[0] == folder
        monkeypatch.setenv("SLURM_JOB_ID", "4343")  # another job is refused
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            claim_run_folder(folder, fresh=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def hydra_config(run_dir: Path, *typed: str, **task: object) -> OmegaConf:
    """The part of the composed config the claim reads: the run folder, the hydra overrides typed and the task's
    own keys (``task_name``, ``ckpt_path``, ``name``)."""
    return OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}, "overrides": {"hydra": list(typed)}}, **task})


def test_a_fresh_run_whose_folder_exists_gets_its_own(tmp_path, caplog):
    folder = tmp_path / "2026-01-01_00-00-00_exp"
    first, second = RunFolderClaim(), RunFolderClaim()
    first.on_run_start(hydra_config(folder))
    config = hydra_config(folder)  # the second run, started in the same second with the same name
    second.on_run_start(config)
    assert config.hydra.run.dir == f"{folder}_2" and first.folder == folder and second.folder == Path(f"{folder}_2")
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        second.on_job_start(config)
    assert f"{folder} already exists (another run of this name started in the same second?): this run writes " \
           f"to {folder}_2" in caplog.text
    for claim in (first, second):
        claim.on_run_end(config)
    assert not list(tmp_path.rglob("run.lock"))


def test_resume_in_place_claims_the_folder_itself(tmp_path, capsys):
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        config = hydra_config(folder, f"hydra.run.dir={folder}")  # what resume in place adds
        with pytest.raises(SystemExit) as exit_:  # Hydra would turn an exception into a warning
            RunFolderClaim().on_run_start(config)
        assert exit_.value.code == 1
        assert_short_named(capsys.readouterr().err, rf"RunFolderBusy: run folder {re.escape(str(folder))} is in use "
                                                    rf"by another run \(pid {holder.pid}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_resume_in_place_keeps_the_folder_record(tmp_path):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("the earlier run's config")
    config = hydra_config(folder, f"hydra.run.dir={folder}", task_name="train",
                          ckpt_path=str(folder / "checkpoints" / "last.ckpt"))
    config.hydra.output_subdir = ".hydra"
    claim = RunFolderClaim()
    claim.on_run_start(config)
    claim.on_run_end(config)
    assert re.fullmatch(r"\.hydra/resumed_[0-9_-]+", config.hydra.output_subdir)  # Hydra wrote over it before


def test_a_run_folder_that_cannot_be_created_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        RunFolderClaim().on_run_start(hydra_config(tmp_path / "file" / "run"))
    assert exit_.value.code == 1  # was: Hydra's warning about the callback, then a traceback from its mkdir
    assert_short_named(capsys.readouterr().err, r"ConfigError: the run folder .*file/run cannot be created or "
                                                r"written \(File exists\).*paths\.log_dir=")


#: the variables of a process that torchrun / srun / Lightning's DDP launcher started as rank 1 of 2
RANK_1 = {"torchrun": {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"},
          "srun": {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "77"},
          "lightning": {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "NODE_RANK": "0"}}
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID",
                  "SLURM_NTASKS", "SLURM_JOB_ID", "JSM_NAMESPACE_RANK")


def as_rank(monkeypatch, launcher: str, **changes: str) -> None:
    """This process's environment as that of rank 1 (``changes``: other values) started by ``launcher``."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**RANK_1[launcher], **changes}.items():
        monkeypatch.setenv(name, value)


def eval_config(tmp_path: Path, *hydra_overrides: str):
    """eval's composed config, Hydra's node included and read-only (as Hydra hands it to the callback)."""
    from tests.conftest import _compose

    config = _compose("eval", [f"paths.log_dir={tmp_path / 'logs'}", *hydra_overrides], return_hydra_config=True)
    OmegaConf.set_readonly(config.hydra, True)
    return config


@pytest.mark.parametrize("env", [{}, {"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}], ids=["plain", "in_srun_task_0"])
def test_ddp_ranks_lightning_starts_write_into_the_claimed_folder(tmp_path, monkeypatch, env):
    """Lightning's DDP launcher re-launches rank k > 0 with rank 0's folder, no record and its own log: the claim
    leaves it as it is and waits for nothing (rank 0 holds the folder since before it started the rank)."""
    folder = tmp_path / "run"
    as_rank(monkeypatch, "lightning", **env)
    config = eval_config(tmp_path, f'hydra.run.dir="{folder}"', "hydra.job.name=train_ddp_process_1",
                         "hydra.output_subdir=null")  # lightning_fabric's _hydra_subprocess_cmd
    RunFolderClaim().on_run_start(config)
    assert (config.hydra.run.dir, config.hydra.job.name, config.hydra.output_subdir) == \
        (str(folder), "train_ddp_process_1", None)
    assert not folder.exists()  # nothing claimed, nothing made


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_ranks_torchrun_or_srun_start_share_rank_0s_timestamped_folder(tmp_path, monkeypatch, launcher):
    """Without hydra.run.dir= each process resolves the folder's time stamp itself (``srun python train.py``),
    seconds apart: rank 0 names the folder it took, rank 1 waits for that and joins it; the note goes when rank
    0's run ends."""
    import threading

    monkeypatch.setattr("seg_template.run_folder._RANK_POLL_S", 0.05)
    as_rank(monkeypatch, launcher)
    rank_1_config = eval_config(tmp_path, "hydra.run.dir=" + str(tmp_path / "logs" / "eval" / "runs" / "later"))
    OmegaConf.set_readonly(rank_1_config.hydra, False)
    rank_1_config.hydra.overrides.hydra = []  # not typed: the time stamp this process resolved
    OmegaConf.set_readonly(rank_1_config.hydra, True)
    rank_1 = threading.Thread(target=RunFolderClaim().on_run_start, args=(rank_1_config,), daemon=True)
    rank_1.start()
    time.sleep(0.3)
    assert rank_1.is_alive() and not (tmp_path / "logs" / "eval" / "runs" / "later").exists()

    as_rank(monkeypatch, launcher, **({"RANK": "0"} if launcher == "torchrun" else {"SLURM_PROCID": "0"}))
    rank_0 = RunFolderClaim()
    rank_0.on_run_start(rank_0_config := eval_config(tmp_path))
    rank_1.join(timeout=30)
    assert not rank_1.is_alive()
    assert rank_1_config.hydra.run.dir == str(rank_0.folder) != str(tmp_path / "logs" / "eval" / "runs" / "later")
    assert (rank_1_config.hydra.output_subdir, rank_1_config.hydra.job.name) == (None, "eval_rank1")
    rank_0.on_run_end(rank_0_config)
    assert not list(rank_0.folder.parent.glob(".rank0_folder_*"))


def test_rank_0_of_srun_claims_a_timestamped_folder(tmp_path, monkeypatch):
    """srun's variables are also those of a batch script's one process in a multi-task job: rank 0 runs."""
    as_rank(monkeypatch, "srun", SLURM_PROCID="0")
    claim = RunFolderClaim()
    claim.on_run_start(config := eval_config(tmp_path))
    claim.on_run_end(config)
    assert claim.folder is not None and claim.folder.parent == tmp_path / "logs" / "eval" / "runs"


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_a_rank_torchrun_or_srun_starts_waits_for_rank_0s_claim(tmp_path, monkeypatch, launcher):
    """Rank 1 writes nothing into the folder until rank 0 holds it (anything there would make rank 0 refuse the
    folder as another run's), then writes only its own log: no .hydra/ record, job name eval_rank1."""
    import threading

    folder = tmp_path / "run"
    as_rank(monkeypatch, launcher)
    monkeypatch.setattr("seg_template.run_folder._RANK_POLL_S", 0.05)
    config = eval_config(tmp_path, f"hydra.run.dir={folder}")
    rank_1 = threading.Thread(target=RunFolderClaim().on_run_start, args=(config,), daemon=True)
    rank_1.start()
    time.sleep(0.5)
    assert rank_1.is_alive() and not folder.exists()  # waiting, nothing written
    holder = hold(folder)  # rank 0 claims the folder
    try:
        rank_1.join(timeout=30)
        assert not rank_1.is_alive()
        assert (config.hydra.run.dir, config.hydra.output_subdir, config.hydra.job.name) == \
            (str(folder), None, "eval_rank1")
        assert f'"pid": {holder.pid}' in (folder / LOCK_FILE).read_text()  # rank 0's claim, untouched
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_rank_whose_rank_0_never_claims_the_folder_is_refused(tmp_path, monkeypatch, capsys):
    """A lock record older than the wait is an earlier run's: it is not rank 0's claim."""
    folder = tmp_path / "run"
    (folder / LOCK_FILE).parent.mkdir(parents=True)
    (folder / LOCK_FILE).write_text('{"pid": 1, "host": "x", "started": "2020-01-02 03:04:05", "command": "python"}')
    as_rank(monkeypatch, "torchrun")
    monkeypatch.setattr("seg_template.run_folder.RANK_WAIT_S", 1.0)
    with pytest.raises(SystemExit) as exit_:
        RunFolderClaim().on_run_start(eval_config(tmp_path, f"hydra.run.dir={folder}"))
    assert exit_.value.code == 1
    assert_short_named(capsys.readouterr().err, rf"ConfigError: rank 1 \(started by torchrun\) waited 1 s for rank 0 "
                                                rf"to claim hydra\.run\.dir={re.escape(str(folder))} .*in vain")
    assert sorted(os.listdir(folder)) == [".hydra"]


# ---------------------------------------------------------------- nothing a run writes destroys what is there
def a_run_folder(interrupted: Path, to: Path) -> dict[str, bytes]:
    """A copy of the interrupted run at ``to``; returns its files (to compare with afterwards)."""
    copy_of(interrupted, to)
    return files(to)


def refused_claim(config, capsys) -> str:
    """What the claim prints when it refuses ``config`` (exit status 1, before any folder is made)."""
    with pytest.raises(SystemExit) as exit_:
        RunFolderClaim().on_run_start(config)
    assert exit_.value.code == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(("task", "ckpt"), [
    ("train", None),                   # a fresh run typed into an earlier run's folder
    ("train", "elsewhere"),            # resuming another folder's checkpoint here
    ("eval", "own"), ("predict", "own"), ("export", "own"),
])
def test_a_run_typed_into_a_folder_with_results_is_refused(interrupted, tmp_path, capsys, task, ckpt):
    run = tmp_path / "run"
    before = a_run_folder(interrupted, run)
    path = {None: None, "own": str(run / "checkpoints" / "best.ckpt"),
            "elsewhere": str(interrupted / "checkpoints" / "last.ckpt")}[ckpt]
    err = refused_claim(hydra_config(run, f"hydra.run.dir={run}", task_name=task, ckpt_path=path), capsys)
    # was: exit 0, best/last.ckpt replaced, metrics.csv mixed or wiped, the old .hydra/config.yaml kept
    assert_short_named(err, rf"ConfigError: hydra\.run\.dir={re.escape(str(run))} already holds checkpoints/, "
                            rf".*metrics\.csv.*this {task} run would write over or mix with them.*new or empty folder")
    assert files(run) == before and not (run / LOCK_FILE).exists()


def test_a_decoy_folder_is_never_written_into(tmp_path, capsys):
    decoy = tmp_path / "decoy"
    (decoy / "checkpoints").mkdir(parents=True)
    for name, text in (("metrics.csv", "my,own,numbers\n1,2,3\n"), ("train.log", "my notes\n"),
                       ("checkpoints/last.ckpt", "precious")):
        (decoy / name).write_text(text)
    before = files(decoy)
    err = refused_claim(hydra_config(decoy, f"hydra.run.dir={decoy}", task_name="train"), capsys)
    assert_short_named(err, r"already holds checkpoints/, metrics\.csv, train\.log; this train run .*"
                            r"ckpt_path=.*decoy/checkpoints/last\.ckpt")
    assert files(decoy) == before


@pytest.mark.parametrize("how", ["resume", "test_only", "empty", "slurm_requeue"])
def test_who_may_continue_in_a_folder(interrupted, tmp_path, monkeypatch, how):
    run = tmp_path / "run"
    a_run_folder(interrupted, run) if how != "empty" else run.mkdir()
    task: dict = {"task_name": "train", "ckpt_path": str(run / "checkpoints" / "last.ckpt")}
    if how == "test_only":
        task.update(train=False, ckpt_path=str(run / "checkpoints" / "best.ckpt"))
    elif how == "empty":
        task = {"task_name": "eval", "ckpt_path": str(interrupted / "checkpoints" / "best.ckpt")}
    elif how == "slurm_requeue":  # Lightning resumes the folder's hpc_ckpt; the command has no ckpt_path
        task["ckpt_path"] = None
        shutil.copy(run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt")
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
    claim = RunFolderClaim()
    claim.on_run_start(hydra_config(run, f"hydra.run.dir={run}", **task))
    assert claim.folder == run
    claim.on_run_end(None)


def test_test_only_in_a_run_folder_appends_to_its_metrics(compose_cfg, interrupted, tmp_path):
    """train=false, as our own max_epochs message and the README advise: its test rows are appended; the
    history and the checkpoints stay (was: 'metrics.csv: dropped 7 row(s) at step >= 0', 2 lines left)."""
    run = tmp_path / "run"
    before = a_run_folder(interrupted, run)
    train(compose_cfg(overrides=[*BASE, "trainer.max_epochs=3", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                                 "train=false", "test=true"], output_dir=run))
    history = before["metrics.csv"].decode()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) > len(history.splitlines()) - 1 and rows[-1]["test/mIoU"]
    old_rows = list(csv.DictReader(history.splitlines()))
    assert [{k: v for k, v in r.items() if v} for r in rows[:len(old_rows)]] == \
           [{k: v for k, v in r.items() if v} for r in old_rows]  # every earlier row, in order (new columns added)
    after = files(run)
    assert all(after[name] == before[name] for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "hparams.yaml"))
    assert [n for n in after if n.startswith("hparams_resumed_")]  # this run's own record, beside the original


def test_a_resumed_fit_drops_only_rows_after_its_checkpoint(compose_cfg, interrupted, tmp_path, caplog):
    run = tmp_path / "run"
    a_run_folder(interrupted, run)
    kept = (run / "metrics.csv").read_text()
    rows = list(csv.DictReader(kept.splitlines()))
    stale = dict.fromkeys(rows[0], "")  # a row an attempt killed after the checkpoint had logged
    stale.update(step="4", epoch="2")
    with (run / "metrics.csv").open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(stale)
    with caplog.at_level(logging.INFO):
        resume(compose_cfg, run, "trainer.max_epochs=3")
    assert re.search(r"metrics\.csv: dropped 1 row\(s\) at step >= 4", caplog.text)
    after = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["step"] for r in after[:len(rows)]] == [r["step"] for r in rows]  # the checkpoint's history stays
    assert sorted({int(r["epoch"]) for r in after if r.get("val/mIoU")}) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["not_utf8", "folder", "no_step_column", "link"])
def test_a_metrics_csv_that_cannot_be_continued_is_named(tmp_path, kind):
    from seg_template.loggers import CSVLogger

    path = tmp_path / "metrics.csv"
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's notes\n")
    if kind == "not_utf8":
        path.write_bytes(b"epoch,st\xffep\n1,2\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "no_step_column":
        path.write_text("name,score\nme,3\n")
    else:
        path.symlink_to(victim)
    err = raised_user_error(lambda: CSVLogger(save_dir=tmp_path, name="", version="").log_hyperparams({"a": 1}))
    assert isinstance(err, ConfigError)  # was: UnicodeDecodeError / IsADirectoryError tracebacks, notes appended
    assert_short_named(user_message(err), rf"{re.escape(str(path))} (is not UTF-8|is not a file|has no 'step' column"
                                          r"|is a link to .*victim\.txt).*resume_in_place=false")
    assert victim.read_text() == "someone's notes\n"


def test_a_metrics_csv_saved_by_a_spreadsheet_is_continued(tmp_path):
    from seg_template.loggers import CSVLogger

    (tmp_path / "metrics.csv").write_bytes("epoch,step,val/mIoU\r\n0,1,0.5\r\n".encode("utf-8-sig"))  # with a BOM
    logger = CSVLogger(save_dir=tmp_path, name="", version="")
    logger.log_metrics({"test/mIoU": 0.4, "epoch": 1}, step=0)
    logger.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open(encoding="utf-8-sig")))
    assert [(r["epoch"], r["step"], r["val/mIoU"], r["test/mIoU"]) for r in rows] == [("0", "1", "0.5", ""),
                                                                                       ("1", "0", "", "0.4")]


def test_resuming_in_place_from_an_older_checkpoint_is_refused(compose_cfg, interrupted, tmp_path):
    run = tmp_path / "run"
    a_run_folder(interrupted, run)
    older = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    older.update(epoch=0, global_step=2)  # as best.ckpt of an earlier epoch
    torch.save(older, run / "checkpoints" / "best.ckpt")
    before = files(run)
    err = raised_user_error(lambda: resume(compose_cfg, run, "trainer.max_epochs=4", ckpt="best.ckpt"))
    assert isinstance(err, ConfigError)  # was: last.ckpt (epoch 1) overwritten, 5 rows dropped, exit 0
    assert_short_named(user_message(err), r"best\.ckpt holds step 2, older than this run folder's .*last\.ckpt \(step "
                                          r"4\).*ckpt_path=.*last\.ckpt.*resume_in_place=false")
    assert files(run) == before


def test_a_checkpoint_linked_from_another_run_is_refused(compose_cfg, interrupted, tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    a_run_folder(interrupted, run)
    a_run_folder(interrupted, other)
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints" / "last.ckpt").symlink_to(other / "checkpoints" / "last.ckpt")
    before, theirs = files(run), files(other)
    culprit = (r"ckpt_path=.*run/checkpoints/last\.ckpt lies in the run folder .*run but is a link to "
               r".*other/checkpoints/last\.ckpt, outside it.*resume_in_place=false")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert_short_named(refused_claim(hydra_config(run, f"hydra.run.dir={run}", task_name="train", ckpt_path=ckpt),
                                     capsys), culprit)  # before Hydra writes into the folder
    err = raised_user_error(lambda: resume(compose_cfg, run, "trainer.max_epochs=4"))
    assert isinstance(err, ConfigError) and re.search(culprit, str(err))  # and in-process, for train() callers
    assert files(run) == before and files(other) == theirs


def test_checkpoints_pointed_at_another_run_s_folder_are_refused(compose_cfg, interrupted, tmp_path):
    other = tmp_path / "other"
    before = a_run_folder(interrupted, other)
    cfg = compose_cfg(overrides=[*BASE, "trainer.max_epochs=1",
                                 f"callbacks.model_checkpoint.dirpath={other / 'checkpoints'}"], output_dir=tmp_path / "new")
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, ConfigError)  # found by the stranger playing on: exit 0, the other run's checkpoints replaced
    assert_short_named(user_message(err), r"checkpoint folder .*other/checkpoints already holds best\.ckpt, last\.ckpt "
                                          r"of another run; this fit \(from scratch\).*ckpt_path=.*last\.ckpt")
    assert files(other) == before


def test_a_checkpoint_folder_linked_to_another_disk_resumes(tmp_path):
    from seg_template.run_folder import check_resume_in_place

    run, disk = tmp_path / "run", tmp_path / "scratch"
    disk.mkdir()
    run.mkdir()
    (run / "checkpoints").symlink_to(disk)
    torch.save({"global_step": 4}, disk / "last.ckpt")
    check_resume_in_place(run / "checkpoints" / "last.ckpt", run, run / "checkpoints", 4)  # accepted
    (tmp_path / "other.ckpt").write_bytes(b"another run's best")
    (disk / "best.ckpt").symlink_to(tmp_path / "other.ckpt")  # the test after fit would have used it
    with pytest.raises(ConfigError, match=r"best\.ckpt is a link to .*other\.ckpt, outside the run folder"):
        check_resume_in_place(run / "checkpoints" / "last.ckpt", run, run / "checkpoints", 4)


@pytest.mark.parametrize("name", ["../../../../decoy", "../../etc", "a/b", "my run", "a\\b", "x,y", "..", "-x",
                                  "$(touch x)", ["a", "b"]])
def test_a_name_that_is_not_one_folder_word_is_refused(tmp_path, capsys, name):
    runs = tmp_path / "logs" / "train" / "runs"
    folder = runs / f"2026-01-01_00-00-00_{name}"
    err = refused_claim(hydra_config(folder, name=name), capsys)
    assert_short_named(err, r"ConfigError: name=.*one folder-name word.*paths\.log_dir=")
    assert not (tmp_path / "logs").exists() and sorted(tmp_path.iterdir()) == []  # nothing made, anywhere
    with pytest.raises(SystemExit):
        RunFolderClaim().on_multirun_start(hydra_config(folder, name=name))


@pytest.mark.parametrize("name", ["ohem_lr3e-4", "v1.2", 3, "cs+aug", "täst"])
def test_plain_names_are_accepted(name):
    from seg_template.run_folder import check_name

    check_name(name)


@pytest.mark.parametrize(("code", "said"), [(errno.EROFS, "is not writable"), (errno.EACCES, "is not writable"),
                                            (errno.ENOSPC, "is full")])
def test_a_checkpoint_folder_that_cannot_be_written_fails_when_fit_starts(compose_cfg, tmp_path, monkeypatch, code,
                                                                          said):
    from seg_template.callbacks import checkpoint_io

    def refused(folder):  # as a read-only mount (EROFS), a folder of another user (EACCES), a full disk
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint_io, "_probe", refused)
    err = raised_user_error(lambda: train(compose_cfg(overrides=[*BASE, "trainer.max_epochs=2"], output_dir=tmp_path)))
    assert isinstance(err, CheckpointError)  # was: after a whole epoch, "Free some space there" for any errno
    assert_short_named(user_message(err), rf"checkpoint folder {re.escape(str(tmp_path / 'checkpoints'))} {said} "
                                          r"\(.*\).*paths\.log_dir=.*nothing was trained yet")
    metrics = tmp_path / "metrics.csv"
    assert not metrics.exists() or "train/loss" not in metrics.read_text()  # no training step ran


# ---------------------------------------------------------------- resume with changed options
def notice(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Resuming with changed options")]
    assert len(lines) <= 1, lines
    return lines[0] if lines else ""


def test_resume_with_a_new_learning_rate_applies_it(compose_cfg, interrupted, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="seg_template"):
        _, objects = resume(compose_cfg, copy_of(interrupted, tmp_path / "run"), "optimizer.lr=1e-6")
    assert "applied from step 4: optimizer.lr: 0.003 -> 1e-06;" in notice(caplog)
    assert lr_at(objects, STEP) == pytest.approx(1e-6 * poly_factor(STEP, TOTAL, POWER))  # before: 1.1e-3, the old one


def test_resume_with_another_scheduler_power_applies_it(compose_cfg, interrupted, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="seg_template"):
        _, objects = resume(compose_cfg, copy_of(interrupted, tmp_path / "run"), "scheduler.power=2.0")
    assert "scheduler.power: 0.9 -> 2;" in notice(caplog)
    assert lr_at(objects, STEP) == pytest.approx(LR * poly_factor(STEP, TOTAL, 2.0))


def test_resume_with_more_epochs_recomputes_the_schedule(compose_cfg, interrupted, tmp_path, caplog):
    run = copy_of(interrupted, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="seg_template"):
        _, objects = resume(compose_cfg, run, "trainer.max_epochs=5")
    assert "trainer.max_epochs: 3 -> 5, schedule length: 6 -> 10 optimiser steps" in notice(caplog)
    assert lr_at(objects, STEP) == pytest.approx(LR * poly_factor(STEP, 10, POWER, warmup_steps=0))
    assert epoch_of(run / "checkpoints" / "last.ckpt") == 4  # trained on to the new end


def test_resume_with_the_same_options_changes_nothing(compose_cfg, interrupted, tmp_path, caplog):
    run = copy_of(interrupted, tmp_path / "run")
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    with caplog.at_level(logging.INFO, logger="seg_template"):
        _, objects = resume(compose_cfg, run)
    assert notice(caplog) == ""
    assert lr_at(objects, STEP) == saved["optimizer_states"][0]["param_groups"][0]["lr"]  # bit for bit


def test_resume_with_another_optimizer_is_refused_naming_both(compose_cfg, interrupted, tmp_path):
    run = copy_of(interrupted, tmp_path / "run")
    before = files(run)
    err = raised_user_error(lambda: resume(compose_cfg, run, "optimizer=sgd"))
    assert isinstance(err, CheckpointError)  # was: a 96-line KeyError: 'momentum' from SGD.step
    assert_short_named(user_message(err), r"last\.ckpt' was trained with AdamW, but this run configures SGD.*"
                                          r"Resume with optimizer=adamw.*model\.pretrained=.*last\.ckpt")
    assert files(run) == before  # refused before anything was written


def test_resume_switching_on_amsgrad_is_refused(compose_cfg, interrupted, tmp_path):
    err = raised_user_error(lambda: resume(compose_cfg, copy_of(interrupted, tmp_path / "run"),
                                           "+optimizer.amsgrad=true"))
    assert isinstance(err, CheckpointError)  # was: KeyError: 'max_exp_avg_sq' in the first AdamW step
    assert_short_named(user_message(err), r"optimizer\.amsgrad=true needs 'max_exp_avg_sq' in the optimiser state, "
                                          r"but ckpt_path '.*last\.ckpt' was trained without it")


def test_resume_with_another_no_weight_decay_is_refused(compose_cfg, interrupted, tmp_path):
    """Another optimizer.no_weight_decay splits the parameters into other groups: the saved state of one group
    would land on another's (was: torch's "loaded state dict has a different number of parameter groups")."""
    run = copy_of(interrupted, tmp_path / "run")
    before = files(run)
    err = raised_user_error(lambda: resume(compose_cfg, run, "optimizer.no_weight_decay=[]"))
    assert isinstance(err, CheckpointError)
    assert_short_named(user_message(err), r"last\.ckpt' holds an optimiser state for 2 parameter group\(s\) of "
                                          r"\[\d+, \d+\] parameters, but optimizer\.no_weight_decay=\[\] makes 1 of "
                                          r"\[\d+\]: it was trained with optimizer\.no_weight_decay=\['norm', 'bias'\]"
                                          r".*model\.pretrained=")
    assert files(run) == before  # refused before anything was written
    err = raised_user_error(lambda: resume(compose_cfg, copy_of(interrupted, tmp_path / "run2"),
                                           "optimizer.no_weight_decay=[bias]"))  # 2 groups, other sizes
    assert "optimizer.no_weight_decay=['bias'] makes 2 of" in user_message(err)


def test_an_older_checkpoint_with_another_optimizer_is_refused(compose_cfg, interrupted, tmp_path):
    run = copy_of(interrupted, tmp_path / "run")
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del saved["optimization"]  # written before checkpoints recorded their optimiser
    torch.save(saved, run / "checkpoints" / "older.ckpt")
    err = raised_user_error(lambda: resume(compose_cfg, run, "optimizer=sgd", ckpt="older.ckpt"))
    assert isinstance(err, CheckpointError)
    assert_short_named(user_message(err), r"older\.ckpt' was trained with another optimiser \(its saved state has no "
                                          r"dampening, momentum\), but this run configures SGD.*optimizer=adamw")


def test_an_older_checkpoint_still_gets_changed_values_applied(compose_cfg, interrupted, tmp_path, caplog):
    run = copy_of(interrupted, tmp_path / "run")
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del saved["optimization"]
    torch.save(saved, run / "checkpoints" / "older.ckpt")
    with caplog.at_level(logging.INFO, logger="seg_template"):
        _, objects = resume(compose_cfg, run, "optimizer.lr=1e-6", "optimizer.weight_decay=0.5", ckpt="older.ckpt")
    assert "optimizer.weight_decay: 0.01 -> 0.5, optimizer.lr: 0.003 -> 1e-06;" in notice(caplog)
    assert lr_at(objects, STEP) == pytest.approx(1e-6 * poly_factor(STEP, TOTAL, POWER))


def test_resume_with_fewer_epochs_than_trained_is_refused(compose_cfg, interrupted, tmp_path):
    err = raised_user_error(lambda: resume(compose_cfg, copy_of(interrupted, tmp_path / "run"),
                                           "trainer.max_epochs=1"))
    assert isinstance(err, ConfigError)  # was: Lightning's MisconfigurationException traceback
    assert_short_named(user_message(err), r"trainer\.max_epochs=1, but ckpt_path '.*last\.ckpt' has trained 2 "
                                          r"epochs already")


def test_versioned_checkpoint_names_are_refused(compose_cfg, tmp_path):
    cfg = compose_cfg(overrides=[*BASE, "+callbacks.model_checkpoint.enable_version_counter=true"],
                      output_dir=tmp_path)
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, ConfigError)
    assert_short_named(user_message(err), r"enable_version_counter=true would write best-v1\.ckpt")


# ---------------------------------------------------------------- real processes
def run_train(*args: str, timeout: int = 300) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


@pytest.mark.slow
def test_two_runs_of_one_name_started_at_once_get_a_folder_each(tmp_path):
    # a fixed folder for fresh runs (as two runs of one name in one second resolve to), set through a config
    # file rather than hydra.run.dir= (which means "continue in this folder")
    extra = tmp_path / "configs" / "fixed"
    extra.mkdir(parents=True)
    (extra / "dir.yaml").write_text(f"# @package _global_\nhydra:\n  run:\n    dir: {tmp_path / 'exp'}\n")
    args = ["--config-dir", str(tmp_path / "configs"), *BASE, "trainer.max_epochs=2", "+fixed=dir"]
    procs = [run_train(*args), run_train(*args)]
    outputs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    folders = sorted(p for p in tmp_path.iterdir() if p.name.startswith("exp"))
    assert [f.name for f in folders] == ["exp", "exp_2"]
    assert sum("this run writes to" in o for o in outputs) == 1
    for folder in folders:
        log = (folder / "train.log").read_text()
        assert log.count("Training; outputs in") == 1 and f"outputs in {folder}\n" in log
        assert sorted(val_scores(folder)) == [0, 1] and len((folder / "metrics.csv").read_text().splitlines()) < 12
        assert (folder / ".hydra" / "overrides.yaml").is_file() and not (folder / LOCK_FILE).exists()


@pytest.mark.slow
def test_resume_into_a_live_run_is_refused_then_taken_over_after_kill_9(tmp_path):
    live = run_train(*BASE, "trainer.max_epochs=1000", f"paths.log_dir={tmp_path}")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt")):
            assert live.poll() is None, finish(live)[-3000:]
            time.sleep(0.2)
        run = next(tmp_path.glob("train/runs/*"))
        log_before = (run / "train.log").read_text()
        refused = run_train(*BASE, "trainer.max_epochs=1000", f"ckpt_path={run}/checkpoints/last.ckpt",
                            f"paths.log_dir={tmp_path}")
        out = finish(refused)
        assert refused.returncode == 1, out[-3000:]
        assert_short_named(out, rf"RunFolderBusy: run folder {re.escape(str(run))} is in use by another run \(pid "
                                rf"{live.pid} on .*train\.py.*trainer\.max_epochs=1000")
        assert not list(run.glob(".hydra/resumed_*"))  # nothing of the refused run in the live run's folder
        assert (run / "train.log").read_text().startswith(log_before)
        assert "Resuming" not in (run / "train.log").read_text()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    epoch = epoch_of(run / "checkpoints" / "last.ckpt")
    resumed = run_train(*BASE, f"trainer.max_epochs={epoch + 2}", f"ckpt_path={run}/checkpoints/last.ckpt",
                        f"paths.log_dir={tmp_path}")
    out = finish(resumed)
    assert resumed.returncode == 0, out[-3000:]
    assert f"took over the lock left by pid {live.pid}" in out
    assert epoch_of(run / "checkpoints" / "last.ckpt") == epoch + 1 and not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_ddp_resumes_in_its_claimed_folder(tmp_path):
    first = run_train(*BASE, "trainer.max_epochs=1", f"paths.log_dir={tmp_path}")
    out = finish(first)
    assert first.returncode == 0, out[-3000:]
    run = next(tmp_path.glob("train/runs/*"))
    resumed = run_train(*BASE, "trainer=ddp_cpu", "trainer.max_epochs=2", f"ckpt_path={run}/checkpoints/last.ckpt",
                        f"paths.log_dir={tmp_path}")
    out = finish(resumed, timeout=600)
    assert resumed.returncode == 0, out[-3000:]  # rank 1, re-launched into the held folder, was not refused
    assert "RunFolderBusy" not in out and list(tmp_path.glob("train/runs/*")) == [run]
    assert epoch_of(run / "checkpoints" / "last.ckpt") == 1 and not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_real_runs_never_write_over_a_run_folder(tmp_path):
    def run(script: str, *args: str) -> tuple[int, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, script, *args, f"paths.log_dir={tmp_path / 'logs'}"], cwd=PROJECT_ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout + done.stderr

    code, out = run("train.py", *BASE, "trainer.max_epochs=2")
    assert code == 0, out[-3000:]
    folder = next((tmp_path / "logs" / "train" / "runs").iterdir())
    before = files(folder)
    small = [o for o in BASE if not o.startswith(("callbacks.", "test="))]
    for script, *args in (("train.py", *BASE, "trainer.max_epochs=1", f"hydra.run.dir={folder}"),
                          ("eval.py", *small, f"ckpt_path={folder}/checkpoints/best.ckpt", f"hydra.run.dir={folder}"),
                          ("train.py", *BASE, "name=../../../decoy")):
        code, out = run(script, *args)
        assert code == 1, out[-3000:]
        assert_short_named(out, r"ConfigError: (hydra\.run\.dir=.* already holds|name='\.\./\.\./\.\./decoy')")
        assert files(folder) == before  # was: exit 0, checkpoints replaced, metrics.csv mixed or wiped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # name= did not leave paths.log_dir
    code, out = run("train.py", *BASE, f"ckpt_path={folder}/checkpoints/best.ckpt", "train=false", "test=true")
    assert code == 0, out[-3000:]
    assert "metrics.csv: dropped" not in out  # was: 'dropped 7 row(s) at step >= 0', 2 lines left

    def rows(text: str) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(text.splitlines())]

    history, now = rows(before["metrics.csv"].decode()), rows((folder / "metrics.csv").read_text())
    assert now[:len(history)] == history and now[-1].get("test/mIoU")  # the history, then the test appended


@pytest.mark.parametrize(("held", "extra", "refused"), [
    (["0_loss-ce/", "summary.csv"], [], True),  # an earlier sweep: its job records would be written over
    (["multirun.yaml"], [], True),
    ([], [], False),  # new or empty: a sweep of its own
    (["0/", "optuna.db"], ["hparams_search=optuna"], False),  # a resumable Optuna study continues its folder
], ids=["earlier_sweep", "multirun_yaml_only", "empty", "optuna_study"])
def test_a_sweep_never_writes_into_an_earlier_sweeps_folder(tmp_path, held, extra, refused) -> None:
    """``-m hydra.sweep.dir=<an earlier sweep>`` rewrote job 0's .hydra/, job_status.json, multirun.yaml and
    summary.csv before the job refused its checkpoints (Hydra swallows a callback's error): refused first."""
    from seg_template.cli import _check_sweep_folder

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in held:
        (sweep / name.rstrip("/")).mkdir() if name.endswith("/") else (sweep / name).write_text("kept")
    argv = ["train.py", "-m", "loss=ce,wce", f"hydra.sweep.dir={sweep}", *extra]
    if refused:
        with pytest.raises(ConfigError, match=rf"hydra\.sweep\.dir={re.escape(str(sweep))} already holds"):
            _check_sweep_folder(argv)
    else:
        _check_sweep_folder(argv)
    _check_sweep_folder(["train.py", f"hydra.sweep.dir={sweep}"])  # not a sweep: hydra.sweep.dir is unused


# ---------------------------------------------------------------- callback states a resume restores
NAN, INF = float("nan"), float("inf")


def _edit_state(callback: str, **values: object):
    """An edit of the saved state of ``callback`` (the class name its state key starts with): each ``key=value``
    set; ``best_k_models=<score>`` gives every kept checkpoint that score."""
    def edit(ckpt: dict) -> None:
        state = next(s for k, s in ckpt["callbacks"].items() if k.startswith(callback))
        for key, value in values.items():
            if key == "best_k_models":
                state[key] = {path: value for path in state[key]}
            else:
                state[key] = value
    return edit


#: (id, edit of last.ckpt, the key the message names). Stranger B's files: a NaN / inf best score resumed with
#: exit 0 and best.ckpt never replaced again; a NaN streak crashed NaNGuard after metrics.csv was rewritten.
BAD_STATES = [
    ("best_model_score_nan", _edit_state("BestAndLast", best_model_score=torch.tensor(NAN)),
     r"BestAndLastCheckpoint\.best_model_score is tensor\(nan\) \(NaN: "),
    ("best_model_score_inf", _edit_state("BestAndLast", best_model_score=torch.tensor(INF)),
     r"BestAndLastCheckpoint\.best_model_score is tensor\(inf\) \(inf: no later score can beat it \(mode=max\)"),
    ("best_k_models_nan", _edit_state("BestAndLast", best_k_models=torch.tensor(NAN)),
     r"BestAndLastCheckpoint\.best_k_models\['.*best\.ckpt'\] is tensor\(nan\)"),
    ("kth_value_inf", _edit_state("BestAndLast", kth_value=torch.tensor(INF)),
     r"BestAndLastCheckpoint\.kth_value is tensor\(inf\)"),
    ("best_model_path_not_a_path", _edit_state("BestAndLast", best_model_path=torch.tensor(1.0)),
     r"BestAndLastCheckpoint\.best_model_path is tensor\(1\.0\) \(not a path\)"),
    ("nan_guard_streak_nan", _edit_state("NaNGuard", streak=NAN),
     r"NaNGuard\.streak is nan \(not a whole number >= 0"),
    ("nan_guard_streak_negative", _edit_state("NaNGuard", streak=-2),
     r"NaNGuard\.streak is -2 \(not a whole number >= 0"),
]


@pytest.mark.parametrize(("edit", "culprit"), [c[1:] for c in BAD_STATES], ids=[c[0] for c in BAD_STATES])
def test_a_callback_state_no_run_writes_is_refused_before_the_folder_changes(compose_cfg, interrupted, tmp_path,
                                                                             edit, culprit):
    run = tmp_path / "run"
    a_run_folder(interrupted, run)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, last)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    stale = dict.fromkeys(rows[0], "")  # a row an attempt killed after the checkpoint logged: a resume drops it
    stale.update(step="4", epoch="2")
    with (run / "metrics.csv").open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(stale)
    before = files(run)
    err = raised_user_error(lambda: resume(compose_cfg, run, "trainer.max_epochs=4"))
    assert isinstance(err, CheckpointError), f"{type(err).__name__}: {err}"
    assert_short_named(user_message(err), rf"ckpt_path: '.*run/checkpoints/last\.ckpt' cannot be resumed: its "
                                          rf"callbacks\.{culprit}.*damaged or edited.*model\.pretrained=.*last\.ckpt")
    assert files(run) == before  # metrics.csv included: was rewritten ("dropped 1 row(s)") before the crash


def test_the_worst_score_lightning_saves_for_a_nan_metric_is_beaten_by_the_next_epoch(compose_cfg, interrupted,
                                                                                      tmp_path):
    """Lightning saves a NaN validation score as the worst one (-inf when maximising) and starts ``kth_value``
    there: such a state resumes, and the next validation replaces best.ckpt."""
    run = tmp_path / "run"
    a_run_folder(interrupted, run)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    worst = torch.tensor(-INF)
    _edit_state("BestAndLast", best_model_score=worst, current_score=worst, kth_value=worst,
                best_k_models=worst)(ckpt)
    torch.save(ckpt, last)
    _, objects = resume(compose_cfg, run, "trainer.max_epochs=3")
    assert epoch_of(run / "checkpoints" / "best.ckpt") == 2  # the first finite score after the resume
    assert math.isfinite(float(objects["trainer"].checkpoint_callback.best_model_score))


def test_states_a_run_writes_pass_the_callback_state_check(interrupted):
    from pytorch_lightning.callbacks import EarlyStopping

    from seg_template.callbacks.checkpoint_io import check_callback_states

    ckpt = torch.load(interrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    check_callback_states(ckpt, "last.ckpt")  # a real one
    early = EarlyStopping(monitor="val/mIoU", mode="max")  # its initial best score: -inf
    fresh = {"callbacks": {early.state_key: early.state_dict(), "NaNGuard": {"streak": 0}}}
    before_validation = {k: v for k, v in ckpt["callbacks"].items()}  # a mid-epoch-0 last.ckpt: no best yet
    key = next(k for k in before_validation if k.startswith("BestAndLast"))
    before_validation[key] = {**before_validation[key], "best_model_score": None, "best_k_models": {},
                              "kth_value": torch.tensor(-INF), "current_score": None, "best_model_path": ""}
    for good in (fresh, {"callbacks": before_validation}, {}):
        check_callback_states(good, "x.ckpt")
    for key, value, culprit in [("best_score", torch.tensor(NAN), r"best_score is tensor\(nan\)"),
                                ("best_score", 0.5, r"best_score is 0\.5 \(not one real number \(a tensor\)\)"),
                                ("wait_count", -1, r"wait_count is -1 \(not a whole number >= 0\)"),
                                ("stopping_reason", 99, r"stopping_reason is 99 \(not one of \[0, 1, 2, 3, 4\]\)")]:
        bad = {"callbacks": {early.state_key: {**early.state_dict(), key: value}}}
        with pytest.raises(CheckpointError, match=rf"'x\.ckpt' cannot be resumed: its callbacks\.EarlyStopping\.{culprit}"):
            check_callback_states(bad, "x.ckpt")


def test_the_reader_lightning_restores_through_checks_callback_states(interrupted, tmp_path):
    """SLURM's requeued job resumes ``hpc_ckpt_<n>.ckpt`` without ``ckpt_path``: Lightning's read of it goes
    through the same check, before any callback's ``on_load_checkpoint`` touches the run folder."""
    from seg_template.callbacks.checkpoint_io import AtomicCheckpointIO

    ckpt = torch.load(interrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    _edit_state("NaNGuard", streak=NAN)(ckpt)
    torch.save(ckpt, tmp_path / "hpc_ckpt_1.ckpt")
    with pytest.raises(CheckpointError, match=r"hpc_ckpt_1\.ckpt' cannot be resumed: its callbacks\.NaNGuard\.streak"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")


# ---------------------------------------------------------------- a finished run, resumed with more epochs
def test_resuming_a_finished_run_keeps_its_test_rows(compose_cfg, interrupted, tmp_path, caplog):
    """The test after fit logs at the checkpoint's own step: a resume with more epochs dropped it as "logged after
    the checkpoint" (was: 'metrics.csv: dropped 1 row(s) at step >= 6', the finished run's test result gone)."""
    run = copy_of(interrupted, tmp_path / "run")
    resume(compose_cfg, run, "trainer.max_epochs=3", "test=true")  # the run finishes: epoch 2, then its test
    finished = list(csv.DictReader((run / "metrics.csv").open()))
    tested = [r for r in finished if r.get("test/mIoU")]
    assert len(tested) == 1
    with caplog.at_level(logging.INFO):
        resume(compose_cfg, run, "trainer.max_epochs=4", "test=true")
    assert "dropped" not in caplog.text
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert rows[:len(finished)] == [{**dict.fromkeys(rows[0], ""), **r} for r in finished]  # every row kept
    tests = [(r["step"], r["test/mIoU"]) for r in rows if r.get("test/mIoU")]
    assert tests[0] == (tested[0]["step"], tested[0]["test/mIoU"]) and len(tests) == 2  # + the resumed run's own
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/mIoU")]
    assert val_epochs == [0, 1, 2, 3]  # each epoch once
    train_steps = [r["step"] for r in rows if r.get("train/loss_epoch")]
    assert len(train_steps) == len(set(train_steps)) == 4


def test_only_training_and_validation_rows_after_the_checkpoint_are_dropped(tmp_path):
    from seg_template.loggers import drop_rows_from_step

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/mIoU,test/mIoU\n0,1,0.9,,\n0,1,,0.5,\n1,2,,,0.4\n"
                    "1,2,0.8,,\n1,3,,0.6,\n1,3,,,\n")
    assert drop_rows_from_step(path, 2) == 3  # the training, validation and empty rows of steps 2 and 3
    assert path.read_text().splitlines()[1:] == ["0,1,0.9,,", "0,1,,0.5,", "1,2,,,0.4"]
