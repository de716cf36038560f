"""seg_template's SLURM launcher: the submitit plugin's, with a wait that ends (``launcher=submitit_slurm``).

Hydra takes launchers only from the ``hydra_plugins`` namespace and imports every module in it at start-up:
without the ``slurm`` extra (hydra-submitit-launcher) this module offers nothing and raises nothing. How the
wait works: ``seg_template/slurm.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("seg_template")

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _PluginSlurmLauncher
except ImportError:  # hydra-submitit-launcher is not installed
    _PluginSlurmLauncher = None

if _PluginSlurmLauncher is not None:

    class SlurmLauncher(_PluginSlurmLauncher):
        """The plugin's SLURM launcher, except for how it waits: a job that ends without a result (crashed,
        ``scancel``-ed, its node lost) is returned as a failed job, on clusters without accounting too, where
        the plugin would wait for it forever (:class:`seg_template.slurm.JobWatch`). The sweep then lists it
        in ``summary.csv`` and goes on (the basic sweeper reports the failure at the end; Optuna marks the
        trial failed)."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            """The job itself, on its node: the stop signals stop it from its first line on (exit 143 / 138,
            one line), as in a run started from a shell, where submitit alone would ignore SIGTERM and
            SIGUSR1's default action would end the process without a word."""
            from seg_template.signals import exit_on_signals

            with exit_on_signals():
                return super().__call__(*args, **kwargs)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
            import submitit
            from hydra.core.singleton import Singleton
            from hydra.core.utils import filter_overrides

            from seg_template.slurm import JobWatch
            from seg_template.sweep_summary import record_lost_job

            assert self.config is not None and job_overrides
            executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="slurm",
                                             slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
            shared = {"submitit_folder", "max_num_timeout"}
            base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
                    "stderr_to_stdout"}
            executor.update_parameters(**{key if key in base else f"slurm_{key}": value
                                          for key, value in self.params.items() if key not in shared})
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            numbers = [initial_job_idx + i for i in range(len(job_overrides))]
            for num, overrides in zip(numbers, job_overrides, strict=True):
                log.info("SLURM job #%d: %s", num, " ".join(filter_overrides(overrides)))
            state = Singleton.get_state()
            try:
                jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(numbers),
                                          numbers, [f"job_id_for_{n}" for n in numbers], [state] * len(numbers))
            except Exception as err:  # noqa: BLE001 - submitit's error wraps sbatch's own message
                raise_submission_error(err, sweep_dir)
            log.info("Submitted %s; waiting for them (logs: %s)", ", ".join(str(j.job_id) for j in jobs),
                     sweep_dir / ".submitit")
            watch = JobWatch(jobs)
            try:
                outcomes = watch.wait()
            except BaseException:  # the sweep itself was stopped (Ctrl-C, SIGTERM): its jobs go with it
                cancel_unfinished(jobs)
                raise
            returns = []
            for i, (num, overrides, job, (result, lost)) in enumerate(zip(numbers, job_overrides, jobs, outcomes,
                                                                          strict=True)):
                if lost is None and not isinstance(result, BaseException):
                    returns.append(result)
                    continue
                last_line = (str(result).strip().splitlines() or [type(result).__name__])[-1]
                reason = lost or f"SLURM job {job.job_id} failed outside the task: {last_line}"
                returns.append(record_lost_job(self.config, sweep_dir, num, list(overrides), reason,
                                               ended_at=watch.ended_at.get(i)))
            return returns


def raise_submission_error(err: BaseException, sweep_dir: Path) -> None:
    """sbatch refused the job array (a partition, GPUs or CPUs the cluster does not have): one block with
    sbatch's own words and the job script, instead of submitit's traceback."""
    from hydra.errors import CompactHydraException

    text = str(err)
    said = [line.strip() for line in text.splitlines() if "sbatch:" in line or "error" in line.lower()]
    scripts = sorted(sweep_dir.glob(".submitit/*/*_submission.sh")) or sorted(sweep_dir.glob(".submitit/**/*.sh"))
    where = f"; the job script: {scripts[-1]}" if scripts else ""
    raise CompactHydraException(
        f"SLURM refused the sweep's jobs: {' | '.join(said[-3:]) or text.strip()[-300:]}{where}. Check "
        "hydra.launcher.partition / gpus_per_node / cpus_per_task / mem_gb against the cluster (sinfo), and the "
        "trainer they follow (trainer=cpu asks for no GPU)") from None


def cancel_unfinished(jobs: Sequence[Any]) -> None:
    """``scancel`` the jobs of a sweep that is being stopped and that have not produced a result yet, and say
    which: nobody would collect their results."""
    import subprocess

    left = [str(job.job_id) for job in jobs if not job.paths.result_pickle.exists()]
    if not left:
        return
    try:
        subprocess.run(["scancel", *left], capture_output=True, timeout=60, check=False)
        log.warning("The sweep was stopped: cancelled its SLURM jobs %s", ", ".join(left))
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("The sweep was stopped; its SLURM jobs %s may still run (scancel failed: %s)",
                    ", ".join(left), err)
