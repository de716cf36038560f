"""SLURM: the resources ``launcher=submitit_slurm`` asks for, and waiting for a sweep's jobs whatever the cluster.

- **Resources follow the trainer** (``configs/launcher/submitit_slurm.yaml`` calls :func:`gpus_per_node`,
  :func:`tasks_per_node` and :func:`cpus_per_task` through the ``slurm_*`` resolvers): a GPU trainer asks
  for ``trainer.devices`` GPUs and as many tasks per node (one per GPU, as Lightning's SLURM environment
  wants); a CPU trainer (``trainer=cpu``, ``ddp_cpu``) asks for no GPU at all, so a CPU partition takes the
  job. CPUs per task: the data loader workers plus the main process (at least 8 with a GPU, as before).
- **A job that ends without a result ends the wait** (:class:`JobWatch`). submitit learns a job's state from
  ``sacct``; on a cluster without accounting it sees every job as UNKNOWN and waits forever for the result
  of a job that crashed, was cancelled or lost its node. Here a job that ``squeue`` no longer lists as
  pending, running or requeued, and that left no result, is a failed job: its row in the sweep's
  ``summary.csv`` says what SLURM last said and where its log is, and the sweep goes on.

Nothing here imports torch or submitit at module level: the resolvers run when any config is composed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("seg_template")

#: GPUs per node asked for when the trainer says "all of them" (``trainer=ddp``'s ``devices: -1``): SLURM needs
#: a number at submission
GPUS_WHEN_ALL = 4
#: CPUs per task of a GPU job at least (its loader workers and the main process)
GPU_JOB_MIN_CPUS = 8

#: why a pending job waits (squeue's reason) when no wait ends it: it asks for more than the partition, the
#: account or the QOS allows
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidQOS",
                "InvalidAccount"}
#: seconds such a reason must stand before the job is cancelled as one that can never start
NEVER_STARTS_AFTER_S = 60.0

#: job states after which a job may still produce its result (squeue's long names)
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED", "PREEMPTED", "RESV_DEL_HOLD"}


def job_id() -> str | None:
    """This process's SLURM job as ``scontrol`` and ``squeue`` name it (``<array id>_<task>`` for a job
    array's task, as launcher=submitit_slurm submits); None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def _uses_gpus(accelerator: Any) -> bool:
    """Whether ``trainer.accelerator`` trains on GPUs: ``gpu``/``cuda``, and ``auto`` (which takes the GPUs
    a job was given); ``cpu`` (and accelerators SLURM has no GPUs for: mps, tpu...) do not."""
    return str(accelerator).lower() in ("gpu", "cuda", "auto")


def _device_count(devices: Any, default: int) -> int:
    """``trainer.devices`` as a count: a number, a list of device ids (also Lightning's string forms "0,1" and
    "[0, 1]"), or ``default`` for -1 / "auto"."""
    if isinstance(devices, str):
        text = devices.strip().strip("[]").strip()
        if "," in text or devices.strip().startswith("["):
            return max(1, len([d for d in text.split(",") if d.strip()]))
        devices = text
    elif isinstance(devices, (list, tuple)) or hasattr(devices, "__len__"):
        return max(1, len(devices))
    try:
        count = int(str(devices).strip())
    except ValueError:  # "auto"
        return default
    return count if count > 0 else default


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """sbatch's ``--gpus-per-node``: ``trainer.devices`` for a GPU trainer (``-1``, all GPUs:
    :data:`GPUS_WHEN_ALL`); None (no GPU asked for) for a CPU one."""
    return _device_count(devices, GPUS_WHEN_ALL) if _uses_gpus(accelerator) else None


def tasks_per_node(accelerator: Any, devices: Any) -> int:
    """sbatch's ``--ntasks-per-node``: one task per device (each a DDP rank that Lightning takes from SLURM)."""
    return _device_count(devices, GPUS_WHEN_ALL if _uses_gpus(accelerator) else 1)


def cpus_per_task(accelerator: Any, num_workers: Any) -> int:
    """sbatch's ``--cpus-per-task``: the task's data loader workers plus its main process; at least
    :data:`GPU_JOB_MIN_CPUS` for a GPU trainer."""
    try:
        needed = max(0, int(num_workers)) + 1
    except (TypeError, ValueError):
        needed = 1
    return max(needed, GPU_JOB_MIN_CPUS) if _uses_gpus(accelerator) else needed


def register_resolvers() -> None:
    """``${slurm_gpus_per_node:acc,dev}``, ``${slurm_tasks_per_node:acc,dev}``, ``${slurm_cpus_per_task:acc,w}``."""
    from omegaconf import OmegaConf

    for name, function in (("slurm_gpus_per_node", gpus_per_node), ("slurm_tasks_per_node", tasks_per_node),
                           ("slurm_cpus_per_task", cpus_per_task)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


# ---------------------------------------------------------------------------------------- waiting for jobs
def squeue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{job id: "STATE reason"}`` of the jobs SLURM still knows (``squeue``, one line per array task); None
    when squeue cannot answer (not installed, the controller unreachable)."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i %T %r",
                               f"--jobs={','.join(job_ids)}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # squeue refuses a list in which no job is known any more ("Invalid job id specified")
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        if job:
            states[job] = state.strip()
    return states


def cancel(job_id: str) -> None:
    """``scancel`` a job, quietly (it may have ended meanwhile)."""
    try:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        log.warning("scancel %s failed: cancel it by hand", job_id)


class JobWatch:
    """Waits for submitit jobs until each one has a result or has ended without one.

    ``jobs`` are submitit ``Job`` objects. :meth:`wait` returns, in their order, ``(result, None)`` for a job
    that produced its result and ``(None, reason)`` for one that SLURM no longer runs and that left none:
    ``squeue`` shows it in an ended state (FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY...) or not at
    all, for ``grace_s`` seconds (the result file of a job that just completed may take a moment to show on
    a shared file system). ``states`` is the squeue lookup (replaceable in tests)."""

    def __init__(self, jobs: Sequence[Any], poll_s: float = 5.0, grace_s: float = 15.0,
                 states: Callable[[Sequence[str]], dict[str, str] | None] = squeue_states) -> None:
        self.jobs, self.poll_s, self.grace_s, self.states = list(jobs), poll_s, grace_s, states
        self._gone_since: dict[int, float] = {}
        self._stuck_since: dict[int, float] = {}
        #: when each job that ended without a result was first seen ended (``time.time()``), by its index
        self.ended_at: dict[int, float] = {}
        self._warned = False

    def wait(self) -> list[tuple[Any, str | None]]:
        outcomes: dict[int, tuple[Any, str | None]] = {}
        while len(outcomes) < len(self.jobs):
            pending = [i for i in range(len(self.jobs)) if i not in outcomes]
            for i in pending:
                if self.jobs[i].paths.result_pickle.exists():
                    outcomes[i] = (self._result(self.jobs[i]), None)
            pending = [i for i in pending if i not in outcomes]
            if pending:
                for i, reason in self._ended([(i, self.jobs[i]) for i in pending]).items():
                    outcomes[i] = (None, reason)
            if len(outcomes) < len(self.jobs):
                time.sleep(self.poll_s)
        return [outcomes[i] for i in range(len(self.jobs))]

    @staticmethod
    def _result(job: Any) -> Any:
        """The job's returned value; the exception it raised outside Hydra's job runner, as the value."""
        try:
            return job.results()[0]
        except Exception as err:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError: the job failed
            return err

    def _ended(self, pending: list[tuple[int, Any]]) -> dict[int, str]:
        """The pending jobs that have ended without a result, with what SLURM last said of them."""
        states = self.states([str(job.job_id) for _, job in pending])
        if states is None:
            if not self._warned:
                self._warned = True
                log.warning("squeue does not answer: waiting for the jobs' result files only")
            return {}
        ended, now = {}, time.monotonic()
        for i, job in pending:
            state = states.get(str(job.job_id))
            words = (state or "").split()
            if words[:1] == ["PENDING"] and words[1:2] and words[1] in NEVER_STARTS:
                if now - self._stuck_since.setdefault(i, now) >= NEVER_STARTS_AFTER_S:
                    cancel(str(job.job_id))
                    ended[i] = (f"SLURM job {job.job_id} can never start (pending: {words[1]}, it asks for more "
                                "than the partition, account or QOS allows: hydra.launcher.partition / "
                                "cpus_per_task / gpus_per_node / mem_gb / timeout_min); cancelled")
                continue
            self._stuck_since.pop(i, None)
            if state is not None and words[0] in ACTIVE_STATES:
                self._gone_since.pop(i, None)
                self.ended_at.pop(i, None)
                continue
            since = self._gone_since.setdefault(i, now)
            self.ended_at.setdefault(i, time.time())
            if now - since >= self.grace_s and not job.paths.result_pickle.exists():
                said = f"SLURM state {state}" if state else "no longer known to SLURM"
                ended[i] = f"SLURM job {job.job_id} ended without a result ({said}); its log: {job.paths.stderr}"
        return ended
