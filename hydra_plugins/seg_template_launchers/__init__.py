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
            jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(numbers),
                                      numbers, [f"job_id_for_{n}" for n in numbers], [state] * len(numbers))
            log.info("Submitted %s; waiting for them (logs: %s)", ", ".join(str(j.job_id) for j in jobs),
                     sweep_dir / ".submitit")
            watch = JobWatch(jobs)
            returns = []
            for i, (num, overrides, job, (result, lost)) in enumerate(zip(numbers, job_overrides, jobs, watch.wait(),
                                                                          strict=True)):
                if lost is None and not isinstance(result, BaseException):
                    returns.append(result)
                    continue
                last_line = (str(result).strip().splitlines() or [type(result).__name__])[-1]
                reason = lost or f"SLURM job {job.job_id} failed outside the task: {last_line}"
                returns.append(record_lost_job(self.config, sweep_dir, num, list(overrides), reason,
                                               ended_at=watch.ended_at.get(i)))
            return returns
