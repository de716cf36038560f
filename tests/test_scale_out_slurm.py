"""SLURM through submitit, proven without a cluster: ``launcher=submitit_local`` runs a multirun through the
same plugin; ``launcher=submitit_slurm``'s job script is what sbatch would get (a stand-in keeps it), with
resources that follow the trainer; a task as srun starts it resumes after the time-limit signal (SIGUSR1,
``scontrol requeue``); the launcher's wait ends for a job that left no result, and a requeued job's status
keeps its first start. On a real SLURM cluster: ``tests/test_slurm_cluster.py``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seg_template import slurm
from seg_template.paths import PROJECT_ROOT
from seg_template.sweep_summary import STATUS_FILE, SweepSummary, record_lost_job
from tests.helpers import TINY, run_script, skip_unless_importable
from tests.slurm_cluster import skip_where_a_cluster_runs


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
    skip_where_a_cluster_runs("test_preempted_jobs_resume_to_the_metrics_of_an_uninterrupted_one")
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
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # the fit is complete: last.ckpt holds its end


@pytest.mark.parametrize(("trainer", "expected"), [
    ("cpu", (1, None, 1)), ("ddp_cpu", (2, None, 1)), ("default", (1, 1, 8)), ("gpu", (1, 1, 8)),
    ("ddp", (4, 4, 8))])  # ddp's devices -1 ("all"): SLURM needs a number at submission
def test_slurm_resources_follow_the_trainer(compose_cfg, trainer: str, expected: tuple) -> None:
    """``trainer=cpu launcher=submitit_slurm`` is a valid CPU job (no GPU asked for: a CPU partition refuses
    ``--gpus-per-node``), and the launcher no longer overrides the trainer's devices."""
    from tests.conftest import _compose

    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")  # the `.[slurm]` extra: a fresh `make test` lacks it
    cfg = _compose("train", ["launcher=submitit_slurm", f"trainer={trainer}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.cpus_per_task) == expected
    assert launcher.nodes == 1 and launcher.mem_gb is None
    assert cfg.trainer.devices == _compose("train", [f"trainer={trainer}"]).trainer.devices
    assert launcher._target_ == "hydra_plugins.seg_template_launchers.SlurmLauncher"
    assert slurm.cpus_per_task("cpu", 4) == 5 and slurm.gpus_per_node("cuda", [0, 2]) == 2
    # Lightning's string forms count their devices; accelerators SLURM has no GPUs for ask for none
    assert [slurm.gpus_per_node("gpu", d) for d in ("0,1", "[0, 1]", "[0]", "3", -1, "auto")] == [2, 2, 1, 3, 4, 4]
    assert slurm.gpus_per_node("mps", 1) is None and slurm.gpus_per_node("tpu", 8) is None


class _Paths:
    def __init__(self, folder: Path, job_id: str) -> None:
        self.result_pickle, self.stderr = folder / f"{job_id}_result.pkl", folder / f"{job_id}.err"


class _Job:
    """A submitit Job as JobWatch sees it: an id, a result file, results()."""

    def __init__(self, folder: Path, job_id: str) -> None:
        self.job_id, self.paths = job_id, _Paths(folder, job_id)

    def results(self) -> list:
        return [self.job_id + " done"]


def test_the_slurm_wait_ends_for_jobs_that_left_no_result(tmp_path: Path) -> None:
    """Without accounting submitit waits forever for a job that was cancelled or crashed; the watch ends once
    squeue no longer runs it (after the grace for the result file) and says what SLURM last said."""
    jobs = [_Job(tmp_path, i) for i in ("7_0", "7_1", "7_2", "7_3")]
    jobs[0].paths.result_pickle.write_text("x")
    answers = iter([{"7_1": "RUNNING", "7_2": "CANCELLED", "7_3": "PENDING"},
                    {"7_1": "RUNNING", "7_2": "CANCELLED", "7_3": "REQUEUED"},
                    {"7_1": "RUNNING", "7_3": "PENDING"}, {"7_3": "RUNNING"}, None, {}])

    watch = JobWatchForTest(jobs, lambda ids: next(answers))
    outcomes = watch.wait()
    assert outcomes[0] == ("7_0 done", None)
    assert outcomes[1] == ("7_1 done", None)  # its result appeared while it was listed RUNNING
    assert outcomes[2][0] is None and "SLURM job 7_2 ended without a result (SLURM state CANCELLED)" in outcomes[2][1]
    assert str(jobs[2].paths.stderr) in outcomes[2][1]
    assert outcomes[3][0] is None and "no longer known to SLURM" in outcomes[3][1]  # purged, never a result


class JobWatchForTest(slurm.JobWatch):
    """No sleeping; job 7_1's result file appears at the third look."""

    def __init__(self, jobs, states) -> None:
        super().__init__(jobs, poll_s=0, grace_s=0, states=states)
        self.looks = 0

    def _ended(self, pending):
        self.looks += 1
        if self.looks == 3:
            self.jobs[1].paths.result_pickle.write_text("x")
        return super()._ended(pending)


def test_a_requeued_job_keeps_its_first_start_and_a_lost_job_is_recorded(tmp_path: Path, monkeypatch) -> None:
    """Attempt 2 of a requeued SLURM job (SLURM_RESTART_COUNT=1) starts in the same folder: its wall time counts
    from attempt 1's start; a job that a launcher found gone without a result is a failed row."""
    from omegaconf import OmegaConf

    def config(num: int, job: str):
        return OmegaConf.create({"optimized_metric": "val/mIoU", "hydra": {
            "mode": "MULTIRUN", "sweep": {"dir": str(tmp_path)}, "runtime": {"output_dir": str(tmp_path / job)},
            "job": {"num": num, "name": "train"}, "overrides": {"task": [f"loss={job[2:]}"]},
            "sweeper": {"_target_": "BasicSweeper"}}})

    monkeypatch.setattr("seg_template.sweep_summary._is_multirun", lambda cfg: True)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "11")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    first = SweepSummary()
    first.on_job_start(config(0, "0_ce"))
    status = json.loads((tmp_path / "0_ce" / STATUS_FILE).read_text())
    assert status["slurm_job"] == "11_0" and status["attempts"] == 1
    status["started_at"] -= 100  # attempt 1 began 100 s ago
    (tmp_path / "0_ce" / STATUS_FILE).write_text(json.dumps(status))
    first._current = None  # attempt 1 ended (SLURM requeued it)

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    second = SweepSummary()
    second.on_job_start(config(0, "0_ce"))
    again = json.loads((tmp_path / "0_ce" / STATUS_FILE).read_text())
    assert again["attempts"] == 2 and again["started"] == status["started"]
    from hydra.core.utils import JobReturn, JobStatus

    second.on_job_end(config(0, "0_ce"), JobReturn(status=JobStatus.COMPLETED, _return_value=0.5))
    done = json.loads((tmp_path / "0_ce" / STATUS_FILE).read_text())
    assert done["status"] == "completed" and done["wall_s"] >= 100

    lost = record_lost_job(config(1, "1_ohem"), tmp_path, 1, ["loss=ohem"], "SLURM job 11_1 ended without a result")
    assert lost.status == JobStatus.FAILED and "11_1" in str(lost._return_value)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = {r["overrides"]: r for r in csv.DictReader(f)}
    assert rows["loss=ohem"]["status"] == "failed" and "11_1" in rows["loss=ohem"]["error"]
    second._current = None


def test_a_job_that_can_never_start_is_cancelled_and_failed(tmp_path: Path, monkeypatch) -> None:
    """A request beyond what the partition offers (``cpus_per_task=99``) stays PENDING for good, with a reason
    no wait clears: the watch cancels it once that reason has stood NEVER_STARTS_AFTER_S and fails the job."""
    cancelled = []
    monkeypatch.setattr(slurm, "cancel", cancelled.append)
    monkeypatch.setattr(slurm, "NEVER_STARTS_AFTER_S", 0.0)
    jobs = [_Job(tmp_path, "9_0"), _Job(tmp_path, "9_1")]
    jobs[1].paths.result_pickle.write_text("x")
    answers = iter([{"9_0": "PENDING Resources"}, {"9_0": "PENDING PartitionConfig"}])
    outcomes = JobWatchForTest(jobs, lambda ids: next(answers)).wait()
    assert outcomes[1] == ("9_1 done", None) and cancelled == ["9_0"]
    assert outcomes[0][0] is None and "can never start (pending: PartitionConfig" in outcomes[0][1]


def test_the_time_limit_signal_after_the_fit_requeues_nothing(caplog) -> None:
    """SIGUSR1 once the fit has run its course (during its last validation, say): the job is not requeued (its
    next attempt would train nothing and return no objective) and the run goes on; another signal stops it."""
    from types import SimpleNamespace

    from seg_template.callbacks.stop_on_signal import StopOnSignal
    from seg_template.signals import StoppedBySignal

    trainer = SimpleNamespace(world_size=1, is_global_zero=True)
    callback = StopOnSignal()
    callback._pending = signal.SIGUSR1
    callback.on_train_end(trainer, None)  # no stop
    assert callback._pending is None and "nothing to requeue" in caplog.text
    callback._pending = signal.SIGUSR1
    callback.teardown(trainer, None, "fit")
    callback._pending = signal.SIGTERM
    with pytest.raises(StoppedBySignal):
        callback.teardown(trainer, None, "fit")
