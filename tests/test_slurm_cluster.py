"""``launcher=submitit_slurm`` against a real SLURM cluster on this machine (``scripts/slurm_local.sh``: slurmctld,
slurmd and munged bound to 127.0.0.1, no accounting, so no ``sacct``). Skipped, with the reason, where the
cluster cannot start (not root, no packages and no apt).

- a CPU sweep (``trainer=cpu``, no other override): both jobs finish and ``summary.csv`` lists them;
- a job that crashes (SIGKILL) and one that is ``scancel``-ed: the sweep ends, both listed failed, the other
  finishes;
- preemption: a job whose time limit runs out gets SIGUSR1, saves, requeues itself and resumes in its folder;
  a job requeued by SLURM (``scontrol requeue``: SIGTERM, as preemption in REQUEUE mode) stops with a complete
  ``last.ckpt`` and resumes too; both end with the metrics of a job never interrupted (same seed), each
  epoch once in ``metrics.csv``.

Each test prints its timings (``pytest -s``): the closing notes quote them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from seg_template import slurm
from seg_template.paths import PROJECT_ROOT
from tests.helpers import TINY, skip_unless_importable
from tests.slurm_cluster import job_info, slurm_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

#: this module as the job processes import it (for the test-only callbacks below)
HERE = "tests.test_slurm_cluster"
SWEEP = ["train.py", "-m", "launcher=submitit_slurm", "trainer=cpu", "hydra.launcher.timeout_min=10", *TINY]


# ------------------------------------------------------------------------- test-only callbacks (-> +callbacks.x)
class Fate(pl.Callback):
    """What happens to this job at its first training step: ``finish`` (nothing), ``crash`` (SIGKILL to its own
    process: no result, no hook runs) or ``hang`` (writes ``<job>/hanging`` with its SLURM job id and sleeps)."""

    def __init__(self, fate: str) -> None:
        self.fate = fate

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.fate == "hang_in_setup":  # before fit's own signal handling: the entry point's must stop it
            (Path(trainer.default_root_dir) / "hanging").write_text(str(slurm.job_id()))
            time.sleep(600)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.fate == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fate == "hang":
            (Path(trainer.default_root_dir) / "hanging").write_text(str(slurm.job_id()))
            time.sleep(600)



class SlowSteps(pl.Callback):
    """Each training step takes ``seconds`` longer: a run long enough to be preempted in its middle, whose
    arithmetic is untouched."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        time.sleep(self.seconds)


# ------------------------------------------------------------------------------------------------- helpers
class Sweep:
    """``python train.py -m ...`` in the background, output to ``<tmp>/sweep.log``; the sweep folder under
    ``<tmp>/logs``."""

    def __init__(self, tmp_path: Path, *overrides: str) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.logs, self.log = tmp_path / "logs", tmp_path / "sweep.log"
        self.started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *SWEEP, *overrides, f"paths.log_dir={self.logs}"],
                                         cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def folder(self) -> Path:
        found = list((self.logs / "train" / "multiruns").glob("*"))
        return found[0] if found else self.logs / "missing"

    def job(self, num: int) -> Path:
        found = [p for p in self.folder.glob(f"{num}_*") if p.is_dir()]
        return found[0] if found else self.folder / f"{num}_missing"

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the sweep ended before {what}:\n{self.text[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{self.text[-4000:]}"
            time.sleep(0.5)

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the sweep did not end within {timeout} s:\n{self.text[-4000:]}") from None

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)


def summary(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """``summary.csv``'s rows by their overrides."""
    with open(sweep_dir / "summary.csv", newline="") as f:
        return {row["overrides"]: row for row in csv.DictReader(f)}


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / "job_status.json").read_text())


def metrics(job_dir: Path) -> list[dict[str, str]]:
    with open(job_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def job_log(sweep_dir: Path, job: str) -> str:
    """Everything job ``<array id>_<task>`` printed, over all its attempts (submitit's log files)."""
    return "".join(p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit").glob(f"{job}/*.out"))
                   + sorted((sweep_dir / ".submitit").glob(f"{job}/*.err")))


def scontrol(*args: str) -> str:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def run_time_s(job: str) -> int:
    """How long the job has been running, from ``scontrol show job`` (``RunTime=[D-]H:MM:SS``)."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", (job_info(job) or {}).get("RunTime", ""))
    assert found, job
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


# ------------------------------------------------------------------------------------------------- the tests
def test_a_cpu_sweep_runs_on_slurm(tmp_path: Path) -> None:
    """``trainer=cpu launcher=submitit_slurm`` with no other resource override submits a valid CPU job array
    (no ``--gpus-per-node``, which a CPU partition refuses) and both jobs finish."""
    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")
    sweep = Sweep(tmp_path, "loss=ce,ohem", "trainer.max_epochs=1")
    assert sweep.finish() == 0, sweep.text[-4000:]
    print(f"\n2-job CPU sweep on SLURM: {sweep.elapsed()} s")
    rows = summary(sweep.folder)
    assert {k: r["status"] for k, r in rows.items()} == {"loss=ce": "completed", "loss=ohem": "completed"}
    assert all(r["test/mIoU %"] for r in rows.values())
    (script,) = sweep.folder.glob(".submitit/*/*_submission.sh")
    text = script.read_text()
    assert "--gpus-per-node" not in text and "#SBATCH --ntasks-per-node=1\n" in text, text
    assert "#SBATCH --signal=USR1@120\n" in text and "#SBATCH --requeue\n" in text


def test_crashed_and_cancelled_jobs_are_listed_failed_and_the_sweep_ends(tmp_path: Path) -> None:
    """Without accounting submitit would wait forever for these two; the sweep ends, lists them as failed with
    what SLURM said, and the third job finishes."""
    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")
    sweep = Sweep(tmp_path, f"+callbacks.fate._target_={HERE}.Fate",
                  "+callbacks.fate.fate=finish,crash,hang,hang_in_setup", "trainer.max_epochs=1")
    sweep.wait_for(lambda: (sweep.job(2) / "hanging").is_file(), "job 2 hanging")
    subprocess.run(["scancel", (sweep.job(2) / "hanging").read_text()], check=True, timeout=60)
    # SIGTERM before fit (submitit alone ignores it there): the job stops at once, exit status 143
    sweep.wait_for(lambda: (sweep.job(3) / "hanging").is_file(), "job 3 hanging in its setup")
    subprocess.run(["scancel", "--signal=TERM", (sweep.job(3) / "hanging").read_text()], check=True, timeout=60)
    assert sweep.finish() != 0  # Hydra's basic sweeper reports failed jobs at the end
    print(f"\nsweep with a crashed, a cancelled and a stopped job: {sweep.elapsed()} s")
    rows = summary(sweep.folder)
    assert {k.rpartition("=")[2]: r["status"] for k, r in rows.items()} == {
        "finish": "completed", "crash": "failed", "hang": "failed", "hang_in_setup": "failed"}
    crash, hang = rows["+callbacks.fate.fate=crash"]["error"], rows["+callbacks.fate.fate=hang"]["error"]
    assert "ended without a result (SLURM state FAILED" in crash or "no longer known" in crash, crash
    assert "ended without a result (SLURM state CANCELLED" in hang, hang
    assert "3 failed" in sweep.text and "Traceback" not in sweep.text
    assert "Stopped by SIGTERM (exit status 143)" in job_log(sweep.folder, (sweep.job(3) / "hanging").read_text())


def test_a_refused_submission_and_a_stopped_sweep(tmp_path: Path) -> None:
    """sbatch's refusal (a partition the cluster lacks) is one block naming it, not submitit's traceback; a
    sweep stopped while its jobs run (SIGTERM, Ctrl-C) cancels them: nobody would collect their results."""
    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")
    refused = Sweep(tmp_path / "refused", "hydra.launcher.partition=nosuch")
    assert refused.finish() == 1
    assert "SLURM refused the sweep's jobs" in refused.text and "nosuch" in refused.text, refused.text[-3000:]
    assert "Traceback" not in refused.text

    sweep = Sweep(tmp_path / "stopped", f"+callbacks.fate._target_={HERE}.Fate", "+callbacks.fate.fate=hang,hang")
    sweep.wait_for(lambda: all((sweep.job(n) / "hanging").is_file() for n in (0, 1)), "both jobs hanging")
    jobs = [(sweep.job(n) / "hanging").read_text() for n in (0, 1)]
    sweep.proc.send_signal(signal.SIGTERM)
    assert sweep.finish() == 143
    assert f"cancelled its SLURM jobs {', '.join(jobs)}" in sweep.text, sweep.text[-3000:]
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "--noheader", "--array", f"--jobs={','.join(jobs)}"], capture_output=True,
                         text=True, timeout=60).stdout.strip():
        assert time.monotonic() < deadline, "the stopped sweep's jobs still run"
        time.sleep(1)


def test_preempted_jobs_resume_to_the_metrics_of_an_uninterrupted_one(tmp_path: Path) -> None:
    """Three jobs of one seed. Job 1's time limit is cut short while it trains: SLURM sends SIGUSR1 (up to 30 s
    late: it looks at time limits every 30 s), the run stops after the step with last.ckpt and hpc_ckpt_1.ckpt,
    requeues itself, and the new attempt resumes from hpc_ckpt_1.ckpt in the same folder. Job 2 is requeued by
    SLURM while it trains (SIGTERM, as a preemption in REQUEUE mode): it exits 143 with a complete last.ckpt
    and resumes the same way. Both end exactly where job 0, never interrupted, ends."""
    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")
    sweep = Sweep(tmp_path, "seed=7,7,7", "data.train_set.length=160", "trainer.max_epochs=3", "test=true",
                  f"+callbacks.slow._target_={HERE}.SlowSteps", "+callbacks.slow.seconds=0.3")

    def at_step(num: int, step: int) -> Callable[[], bool]:
        def ready() -> bool:
            try:
                return any(int(r["step"]) >= step for r in metrics(sweep.job(num)))
            except (OSError, ValueError, KeyError):
                return False
        return ready

    jobs = {}
    sweep.wait_for(at_step(1, 45), "job 1 in epoch 1")
    jobs[1] = status(sweep.job(1))["slurm_job"]
    # job 1: a time limit 40-100 s away, within the 120 s of --signal=USR1@120
    elapsed = run_time_s(jobs[1])
    t_limit = time.monotonic()
    scontrol("update", f"JobId={jobs[1]}", f"TimeLimit={math.ceil((elapsed + 40) / 60)}")
    # job 2: preempted and requeued by SLURM
    sweep.wait_for(at_step(2, 45), "job 2 in epoch 1")
    jobs[2] = status(sweep.job(2))["slurm_job"]
    t_requeue = time.monotonic()
    scontrol("requeue", jobs[2])
    sweep.wait_for(lambda: (sweep.job(1) / "hpc_ckpt_1.ckpt").is_file() or "requeued" in status(sweep.job(1))["status"],
                   "job 1's time-limit save", timeout=120)
    signalled = time.monotonic() - t_limit
    scontrol("update", f"JobId={jobs[1]}", "TimeLimit=10")  # its next attempt runs to its end
    sweep.wait_for(lambda: status(sweep.job(1)).get("attempts") == 2, "job 1's second attempt", timeout=180)
    round_trip = time.monotonic() - t_limit
    assert sweep.finish() == 0, sweep.text[-4000:]
    print(f"\npreemption: SIGUSR1 {signalled:.0f} s after the time limit was cut; that attempt to the next start "
          f"{round_trip:.0f} s; SIGTERM requeue at {t_requeue - sweep.started:.0f} s; sweep {sweep.elapsed()} s")

    def values(num: int) -> list[dict[str, str]]:
        rows = [{k: v for k, v in r.items() if not re.search(r"time|speed|per_s|_s$", k)}
                for r in metrics(sweep.job(num))]
        # the stopped epoch's mean training loss covers only the steps after the resume (no running means)
        return [{k: v for k, v in r.items() if not k.endswith("_epoch")} for r in rows]

    reference = values(0)
    assert [r["epoch"] for r in reference if r.get("val/mIoU")] == ["0", "1", "2"]
    for num, how, code in ((1, "SIGUSR1", 138), (2, "SIGTERM", 143)):
        job = sweep.job(num)
        assert values(num) == reference, num  # each step and epoch once, the same values
        state = status(job)
        assert state["status"] == "completed" and state["attempts"] == 2, state
        assert not list(job.glob("hpc_ckpt_*.ckpt"))  # removed once the fit was complete
        text = job_log(sweep.folder, jobs[num])
        assert re.search(rf"Stopped by {how} in epoch \d/2 at step \d+ \(exit status {code}\)", text), text[-3000:]
        assert f"Restoring states from the checkpoint path at {job / 'hpc_ckpt_1.ckpt'}" in text, text[-3000:]
        weights = [torch.load(sweep.job(n) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                   for n in (0, num)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert f"requeuing SLURM job {jobs[1]}" in job_log(sweep.folder, jobs[1])
    assert status(sweep.job(1))["wall_s"] >= round_trip  # over both attempts, not the last one only


def test_two_nodes_on_slurm_score_exactly_what_one_process_does(compose_cfg, tmp_path: Path) -> None:
    """``trainer.num_nodes=2`` with one task per node: SLURM runs rank 0 on node1 and rank 1 on node2 (two node
    entries on this machine), Lightning takes the ranks from SLURM, and the job trains and tests. Its test of
    ``best.ckpt`` on a split of 5 images (3 + 2 over the ranks) gives, bit for bit, the confusion matrix of
    eval's task in one process (this one) on that checkpoint, and the same scores."""
    skip_unless_importable("hydra_plugins.hydra_submitit_launcher")
    from seg_template.eval import evaluate as evaluate_task
    from tests.test_scale_out import ODD, SAVE_CONFMAT, assert_same_scores, scores

    sweep = Sweep(tmp_path, "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.max_epochs=1",
                  "test=true", *ODD, SAVE_CONFMAT)
    assert sweep.finish() == 0, sweep.text[-4000:]
    print(f"\n2-node training and test on SLURM: {sweep.elapsed()} s")
    job = sweep.job(0)
    (script,) = sweep.folder.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --nodes=2\n" in script.read_text() and "#SBATCH --ntasks-per-node=1\n" in script.read_text()
    text = job_log(sweep.folder, status(job)["slurm_job"])
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text, text[-3000:]
    one = tmp_path / "one_process"
    evaluate_task(compose_cfg("eval", ["trainer=cpu", f"ckpt_path={job / 'checkpoints' / 'best.ckpt'}", "split=test",
                                       *ODD, SAVE_CONFMAT], output_dir=one))
    expected = torch.load(one / "confmat_test.pt", weights_only=True)
    assert torch.equal(torch.load(job / "confmat_test.pt", weights_only=True), expected)
    assert_same_scores(scores(job, "test"), scores(one, "test"))
