"""Scaling out through the engines we rely on, proven on CPU: exact evaluation under DDP (``trainer=ddp_cpu``),
Optuna sweeps that survive a crash (``hparams_search=optuna``), SLURM through submitit (its local executor
here; the SLURM job script is rendered, not submitted) and ``scripts/gpu_check.py``'s CPU-only path.

The slow tests start the real entry points in subprocesses on tiny synthetic data.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from seg_template.eval import evaluate as evaluate_task
from seg_template.paths import PROJECT_ROOT
from tests.helpers import TINY, run_script, skip_unless_importable

#: TINY with validation and test splits of odd length: 5 samples over 2 processes is 3 + 2, which a
#: padding sampler (Lightning's DistributedSampler) would make 3 + 3, counting one image twice.
ODD = [*TINY, "data.val_set.length=5", "data.test_set.length=5"]
#: adds SaveConfusionMatrices below to a run's callbacks (the subprocess imports this module: the
#: entry points run from the repository root, where ``tests`` is importable)
SAVE_CONFMAT = "+callbacks.save_confmat._target_=tests.test_scale_out.SaveConfusionMatrices"


class SaveConfusionMatrices(Callback):
    """Writes each evaluation's confusion matrix, summed over the processes, to
    ``<run>/confmat_<stage>.pt`` (``int64[C, C]``), so that runs can be compared bit for bit.

    Callbacks' epoch-end hooks run before the module's, which computes, logs and resets the same metric:
    ``compute()`` here performs the cross-process sum (on every rank, as it must) and caches the result.
    """

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module, "test")

    @staticmethod
    def _save(trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        confmat = pl_module.confmats[stage].compute()
        if trainer.is_global_zero:
            torch.save(confmat.cpu(), Path(trainer.default_root_dir) / f"confmat_{stage}.pt")


def only_run(log_dir: Path, task: str) -> Path:
    """The one run folder ``<log_dir>/<task>/runs/<stamp>``."""
    (run,) = (log_dir / task / "runs").iterdir()
    return run


def scores(run: Path, stage: str) -> dict[str, float]:
    """The confusion-matrix scores of ``stage`` in ``<run>/metrics.csv``: mIoU, aAcc and every per-class IoU
    (NaN for a class absent from both ground truth and prediction), from the row that has them."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(f"{stage}/mIoU")]
    assert len(rows) == 1, rows
    names = [k for k in rows[0] if k in (f"{stage}/mIoU", f"{stage}/aAcc") or k.startswith(f"{stage}/IoU/")]
    assert len(names) > 3, names
    return {k: float(rows[0][k] or "nan") for k in names}


def assert_same_scores(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for key in a:  # exact: the same matrix gives the same float32 values; NaN only where both are NaN
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), (key, a[key], b[key])


def labelled_pixels(compose_cfg: Any, split: str) -> int:
    """How many pixels of ``split`` carry a label other than the ignore index: what a confusion matrix
    counting every sample exactly once must sum to."""
    from hydra.utils import instantiate

    datamodule = instantiate(compose_cfg(overrides=ODD).data)
    datamodule.setup("validate" if split == "val" else "test")
    dataset = datamodule.datasets[split]
    return sum(int((dataset[i]["mask"] != datamodule.ignore_index).sum()) for i in range(len(dataset)))


@pytest.mark.slow
def test_ddp_evaluation_equals_one_process(compose_cfg, tmp_path: Path) -> None:
    """Two processes score exactly what one does, on splits of odd length: ``train.py trainer=ddp_cpu`` (its
    validation and its test of the best checkpoint) and ``eval.py trainer=ddp_cpu`` against eval's task in
    one process (this one) on the same checkpoint. Compared bit for bit on the confusion matrix and exactly on every
    score of metrics.csv; the matrix also sums to the split's labelled pixels (no image repeated or lost).
    val/loss is not compared: it is a mean of per-process means, equal only up to rounding."""
    trained = run_script("train.py", "trainer=ddp_cpu", "trainer.max_epochs=1", *ODD, SAVE_CONFMAT,
                         f"paths.log_dir={tmp_path / 'ddp_train'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = only_run(tmp_path / "ddp_train", "train")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in trained.stdout + trained.stderr

    def evaluate(trainer: str, split: str) -> Path:
        ckpt = run / "checkpoints" / ("last.ckpt" if split == "val" else "best.ckpt")  # the weights fit scored
        overrides = [f"ckpt_path={ckpt}", f"split={split}", *ODD, SAVE_CONFMAT]
        out = tmp_path / f"{trainer}_{split}"
        if trainer == "cpu":  # one process: in this one (the entry point's task, without its start-up cost)
            evaluate_task(compose_cfg("eval", ["trainer=cpu", *overrides], output_dir=out))
            return out
        result = run_script("eval.py", f"trainer={trainer}", *overrides, f"paths.log_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        return only_run(out, "eval")

    one_val, ddp_val, one_test = evaluate("cpu", "val"), evaluate("ddp_cpu", "val"), evaluate("cpu", "test")

    for stage, reference, others in (("val", one_val, [run, ddp_val]), ("test", one_test, [run])):
        expected = torch.load(reference / f"confmat_{stage}.pt", weights_only=True)
        assert int(expected.sum()) == labelled_pixels(compose_cfg, stage)
        for other in others:
            assert torch.equal(torch.load(other / f"confmat_{stage}.pt", weights_only=True), expected), other
            assert_same_scores(scores(other, stage), scores(reference, stage))


# ------------------------------------------------------------------------------------------------ Optuna

#: a tiny Optuna search of 3 trials; seed 1 makes TPE's first (random) proposals wce, ohem, ce
OPTUNA = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "seed=1", "trainer=cpu",
          "trainer.max_epochs=1", *TINY]


def import_optuna() -> Any:
    """``optuna``, or skip without the extra. SQLAlchemy 1.4 warns at import that Optuna 2.x's models would
    not work on SQLAlchemy 2.0: known, and why the extra pins sqlalchemy<2."""
    skip_unless_importable("optuna")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def skip_without_optuna() -> None:
    import_optuna()
    skip_unless_importable("hydra_plugins.hydra_optuna_sweeper")


def study_trials(sweep: Path) -> list[Any]:
    """The trials of the study ``optuna`` in ``<sweep>/optuna.db``, by number."""
    optuna = import_optuna()
    study = optuna.load_study(study_name="optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    return sorted(study.trials, key=lambda t: t.number)


def check_completed_trial(sweep: Path, trial: Any) -> None:
    """A complete trial's job ran in folder ``<number>`` with the trial's values, trained once, and returned
    its val/mIoU; ``loss.main.thresh`` was searched only if the trial's loss is OHEM."""
    job = sweep / str(trial.number)
    overrides = (job / ".hydra" / "overrides.yaml").read_text()
    for key, value in trial.params.items():
        assert f"{key}={value}" in overrides, (key, value, overrides)
    assert ("loss.main.thresh" in trial.params) == (trial.params["loss"] == "ohem"), trial.params
    with open(job / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("val/mIoU")]  # one epoch, trained once
    assert trial.value == pytest.approx(float(row["val/mIoU"]))


@pytest.mark.slow
def test_optuna_sweep_of_three_trials(tmp_path: Path) -> None:
    skip_without_optuna()
    from optuna.trial import TrialState

    result = run_script("train.py", *OPTUNA, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "train" / "optuna" / "optuna"  # <log_dir>/<task>/optuna/<name>: no time stamp
    trials = study_trials(sweep)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert {t.params["loss"] for t in trials} == {"ce", "wce", "ohem"}
    for trial in trials:
        check_completed_trial(sweep, trial)
    best = max(trials, key=lambda t: t.value)
    assert f"best_value: {best.value}" in (sweep / "optimization_results.yaml").read_text()

    again = run_script("train.py", *OPTUNA, f"paths.log_dir={tmp_path}")  # the study is done: nothing to run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 finished trial(s) kept, 0 to run of n_trials=3" in again.stdout + again.stderr
    assert len(study_trials(sweep)) == 3


@pytest.mark.slow
def test_optuna_sweep_killed_and_started_again_continues(tmp_path: Path) -> None:
    """Killed (SIGKILL, no clean-up) while its second trial trains, the same command continues the study:
    the finished trial is kept and not run again, the interrupted one is marked failed and its parameters
    run again first, and the sweep ends with n_trials=3 complete trials."""
    skip_without_optuna()
    from optuna.trial import TrialState

    sweep = tmp_path / "train" / "optuna" / "optuna"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "train.py", *OPTUNA, f"paths.log_dir={tmp_path}"],
                                cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (sweep / "1").is_dir():  # trial 0 has been told; trial 1 has started
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the sweep and any loader workers
            proc.wait()
    first = study_trials(sweep)
    assert [t.state for t in first] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = run_script("train.py", *OPTUNA, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 finished trial(s) kept, 2 to run of n_trials=3" in result.stdout + result.stderr
    trials = study_trials(sweep)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert trials[0].datetime_complete == first[0].datetime_complete  # kept, not run again
    assert trials[2].params == first[1].params  # the interrupted trial, run again first
    for trial in (trials[0], trials[2], trials[3]):
        check_completed_trial(sweep, trial)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]

def test_ohem_thresh_is_searched_in_ohem_trials_only() -> None:
    optuna = import_optuna()
    from omegaconf import OmegaConf

    from seg_template.hparams_search import ohem_thresh

    cfg = OmegaConf.create({"ohem_thresh_range": [0.6, 0.8]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for loss in ("ce", "wce", "ohem"):
        with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.x
            warnings.simplefilter("ignore")
            study.enqueue_trial({"loss": loss})
        trial = study.ask()
        assert trial.suggest_categorical("loss", ["ce", "wce", "ohem"]) == loss
        ohem_thresh(cfg, trial)
        assert ("loss.main.thresh" in trial.params) == (loss == "ohem")
        assert 0.6 <= trial.params.get("loss.main.thresh", 0.7) <= 0.8
    trial = study.ask()  # loss=ohem fixed on the command line: the sweeper makes it a user attribute
    trial.set_user_attr("loss", "ohem")
    ohem_thresh(cfg, trial)
    assert "loss.main.thresh" in trial.params


# ------------------------------------------------------------------------------------------ SLURM / submitit


def skip_without_submitit() -> None:
    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_multirun(tmp_path: Path) -> None:
    """The submitit launcher's path (jobs pickled, run by submitit in processes of their own, in parallel) on
    this machine: what launcher=submitit_slurm does on a cluster, less SLURM."""
    skip_without_submitit()
    result = run_script("train.py", "-m", "launcher=submitit_local", "loss=ce,ohem", "trainer=cpu",
                        "trainer.max_epochs=1", *TINY, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 2 and len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2
    for job, loss in zip(jobs, ["ce", "ohem"], strict=True):
        assert f"loss={loss}" in (job / ".hydra" / "overrides.yaml").read_text()
        with open(job / "metrics.csv") as f:
            assert any(r.get("test/mIoU") for r in csv.DictReader(f))


def fake_slurm_commands(folder: Path) -> dict[str, str]:
    """``sbatch``, ``srun`` and ``scontrol`` stand-ins in ``folder``; returns the environment that puts them
    first on PATH. sbatch copies the job script it is given to ``$SBATCH_SCRIPT_COPY`` and fails (nothing
    runs); scontrol appends its arguments to ``$SCONTROL_CALLS``."""
    folder.mkdir()
    scripts = {"sbatch": 'cp "$1" "$SBATCH_SCRIPT_COPY"\necho "sbatch: no SLURM here (test)" >&2\nexit 1',
               "srun": 'echo "srun: no SLURM here (test)" >&2\nexit 1',
               "scontrol": 'echo "$@" >> "$SCONTROL_CALLS"'}
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_submitit_slurm_submits_one_task_per_gpu(tmp_path: Path) -> None:
    """The job script the real command hands to sbatch (a stand-in that keeps it): one job array of the
    sweep, trainer.num_nodes nodes with trainer.devices tasks and GPUs each, the partition, the time limit,
    and SIGUSR1 before it for Lightning's auto-requeue."""
    skip_without_submitit()
    script = tmp_path / "job.sh"
    env = {**fake_slurm_commands(tmp_path / "bin"), "SBATCH_SCRIPT_COPY": str(script)}
    result = subprocess.run([sys.executable, "train.py", "-m", "launcher=submitit_slurm", "trainer=ddp",
                             "trainer.devices=2", "trainer.num_nodes=3", "hydra.launcher.partition=gpu",
                             "loss=ce,ohem", f"paths.log_dir={tmp_path / 'logs'}"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "sbatch: no SLURM here (test)" in result.stderr, result.stderr[-3000:]
    text = script.read_text()
    for line in ("--array=0-1%2", "--nodes=3", "--ntasks-per-node=2", "--gpus-per-node=2", "--partition=gpu",
                 "--time=240", "--signal=USR1@120", "--requeue", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in text, (line, text)
    assert "srun --unbuffered " in text and f"{sys.executable} -u -m submitit.core._submit " in text


@pytest.mark.slow
def test_slurm_requeue_resumes_from_the_saved_state(tmp_path: Path) -> None:
    """A training task as srun starts it (SLURM's variables; SLURM itself is not needed): Lightning's SLURM
    environment is active; SIGUSR1, which launcher=submitit_slurm asks SLURM to send before the time limit,
    makes it save ``hpc_ckpt_1.ckpt`` and run ``scontrol requeue <job id>``; SLURM then stops the task (here:
    SIGKILL) and starts it again with the same command and folder, and it resumes from that checkpoint."""
    calls = tmp_path / "scontrol.txt"
    env = {**fake_slurm_commands(tmp_path / "bin"), "SCONTROL_CALLS": str(calls), "SLURM_NTASKS": "1",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost", "SLURM_JOB_NAME": "train"}
    run = tmp_path / "run"
    command = [sys.executable, "train.py", "trainer=cpu", "trainer.max_epochs=2", "test=false", *TINY,
               "data.train_set.length=32", f"hydra.run.dir={run}", f"paths.log_dir={tmp_path}"]
    with open(tmp_path / "first.log", "w") as log:
        task = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (run / "checkpoints" / "last.ckpt").is_file():  # epoch 0 is over; epoch 1 trains
                assert task.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.1)
            task.send_signal(signal.SIGUSR1)
            while not calls.is_file():
                assert task.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.1)
        finally:
            task.kill()
            task.wait()
    first = (tmp_path / "first.log").read_text()
    assert "SLURM auto-requeueing enabled" in first
    assert calls.read_text().split() == ["requeue", "4242"]
    assert (run / "hpc_ckpt_1.ckpt").is_file()

    second = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {run / 'hpc_ckpt_1.ckpt'}" in second.stdout + second.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 32 // 4  # two epochs of 8 steps: the first was not trained again
