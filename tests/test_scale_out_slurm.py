"""SLURM through submitit, proven without a cluster: ``launcher=submitit_local`` runs a multirun through the
same plugin; ``launcher=submitit_slurm``'s job script is what sbatch would get (a stand-in keeps it); and a
task as srun starts it resumes after Lightning's SLURM auto-requeue (SIGUSR1, ``scontrol requeue``)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seg_template.paths import PROJECT_ROOT
from tests.helpers import TINY, run_script, skip_unless_importable


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
    # the job process's argv is submitit's: the swept values come from the sweep's multirun.yaml
    assert [p.name for p in jobs] == ["0_loss-ce", "1_loss-ohem"]
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
