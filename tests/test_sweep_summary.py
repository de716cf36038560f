"""The sweep summary (seg_template/sweep_summary.py): every job listed with its status, best job first, also
when a job fails or ends the process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode

from seg_template.sweep_summary import STATUS_FILE, SweepSummary, write_summary
from tests.helpers import TINY, job_config, run_script


def read_summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def fake_job(sweep: Path, num: int, override: str, status: str, curve: list[float],
             objective: float | None) -> None:
    job = sweep / f"{num}_{override}"
    job.mkdir(parents=True)
    (job / STATUS_FILE).write_text(json.dumps({
        "job": job.name, "num": num, "status": status, "overrides": [override, "trainer.max_epochs=1"],
        "wall_s": 61.0, "objective_name": "val/mIoU", "objective": objective, "error": None}))
    rows = ["epoch,step,val/mIoU,test/mIoU", *(f"{e},{e},{v}," for e, v in enumerate(curve))]
    (job / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_jobs_sorted_best_first_and_unfinished_ones_failed_at_the_end(tmp_path: Path) -> None:
    fake_job(tmp_path, 0, "loss=ce", "completed", [0.2, 0.5, 0.4], 0.4)
    fake_job(tmp_path, 1, "loss=wce", "completed", [0.3, 0.6], 0.6)
    fake_job(tmp_path, 2, "loss=ohem", "running", [0.1], None)
    write_summary(tmp_path, final=False)
    rows = read_summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("1", "completed"), ("0", "completed"), ("2", "running")]
    assert rows[1]["overrides"] == "loss=ce"  # only what varies between the jobs
    # scores in percent, as the module's tables print them; epochs counted from 0, as metrics.csv does
    assert (rows[1]["best val/mIoU %"], rows[1]["best epoch"], rows[1]["wall time"]) == ("50.00", "1", "1:01")
    text = write_summary(tmp_path, final=True)
    assert [r["status"] for r in read_summary(tmp_path)][-1] == "failed"  # it never ended
    assert "3 job(s), 1 failed" in text
    assert (tmp_path / "summary_val_mIoU.png").is_file()


def test_a_job_that_ends_the_process_is_recorded_as_failed(tmp_path: Path) -> None:
    callback = SweepSummary()
    first = job_config(tmp_path, 0, "loss=ce")
    callback.on_job_start(first)
    ret = JobReturn(status=JobStatus.COMPLETED)
    ret.return_value = 0.5
    callback.on_job_end(first, ret)
    callback.on_job_start(job_config(tmp_path, 1, "loss=wce"))
    callback._at_exit()  # what atexit runs when the job raised SystemExit: no on_job_end, no on_multirun_end
    rows = read_summary(tmp_path)
    assert [(r["job"], r["status"], r["val/mIoU % (returned)"]) for r in rows] == [
        ("0", "completed", "50.00"), ("1", "failed", "")]
    assert "exited during the job" in rows[1]["error"]


def test_single_runs_are_left_alone(tmp_path: Path) -> None:
    config = job_config(tmp_path, 0, "loss=ce")
    config.hydra.mode = RunMode.RUN
    callback = SweepSummary()
    callback.on_job_start(config)
    callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_multirun_summary_lists_every_job_and_the_failed_one(tmp_path: Path) -> None:
    # a fourth loss option that composes but cannot be built: the job fails, and Hydra's basic sweeper
    # re-raises its error after the batch (so on_multirun_end never runs)
    (tmp_path / "extra" / "loss").mkdir(parents=True)
    (tmp_path / "extra" / "loss" / "broken.yaml").write_text(
        "defaults:\n  - ce\n  - _self_\nmain:\n  _target_: seg_template.no_such_module.Loss\n")
    result = run_script("train.py", "-m", "loss=ce,wce,ohem,broken", "trainer.max_epochs=1", *TINY,
                        "callbacks.val_images=null", "callbacks.reports=null",
                        f"paths.log_dir={tmp_path / 'logs'}",
                        f"hydra.searchpath=[file://{tmp_path / 'extra'}]")
    assert result.returncode != 0  # the sweep reports the failure...
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    rows = read_summary(sweep)  # ...and the summary still lists every job
    assert sorted((r["overrides"], r["status"]) for r in rows) == [
        ("loss=broken", "failed"), ("loss=ce", "completed"), ("loss=ohem", "completed"),
        ("loss=wce", "completed")]
    assert rows[-1]["overrides"] == "loss=broken" and "no_such_module" in rows[-1]["error"]
    scores = [float(r["val/mIoU % (returned)"]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)  # best first
    assert all(r["test/mIoU %"] and r["best val/mIoU %"] and r["best epoch"] == "0" for r in rows[:3])
    assert "4 job(s), 1 failed" in result.stdout  # the printed table
    assert (sweep / "summary_val_mIoU.png").is_file()


def test_a_sweep_stopped_early_says_how_many_jobs_never_started(tmp_path: Path) -> None:
    """SIGTERM to ``-m loss=ce,wce`` during job 0: the summary listed one failed job and nothing told that job 1
    never ran. The planned count comes from multirun.yaml (Hydra's basic sweeper: the product of the values)."""
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params: null\n  overrides:\n    task:\n    - loss=ce,wce,ohem\n    - optimizer.lr=0.01,0.02\n"
        "    - trainer.max_epochs=1\n")
    fake_job(tmp_path, 0, "loss=ce", "completed", [0.2], 0.2)
    fake_job(tmp_path, 1, "loss=wce", "failed", [0.1], None)
    text = write_summary(tmp_path, final=True)
    assert "4 of the sweep's 6 jobs never started" in text
    assert "never started" not in write_summary(tmp_path, final=False)  # while it runs, they are to come
