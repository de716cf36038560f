"""Process handling for multirun sweeps and DDP: what lets several jobs, and Lightning's re-launched ranks,
share one Python process and one command line.

Two problems, both specific to running Lightning's DDP inside Hydra:

- Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` (plus ``hydra.run.dir=<dir>``). In a
  multirun ``sys.argv`` holds ``-m`` and the whole sweep: each child would start the sweep again, elsewhere.
  :func:`prepare_ddp_relaunch` rewrites it to this job's own overrides and folder.
- A DDP fit leaves ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT``... in ``os.environ`` and an initialised
  process group. The next multirun job would believe its ranks were started externally and talk to the
  previous job's finished ranks. :func:`isolated_job` undoes that after each job.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def isolated_job() -> Iterator[None]:
    """Run one job, then restore ``os.environ`` and ``sys.argv`` and destroy the process group the job created.

    Variables set before the job (e.g. by torchrun or SLURM) are kept.
    """
    env_before, argv_before = dict(os.environ), list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = argv_before  # prepare_ddp_relaunch narrowed it to this job
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in set(os.environ) - set(env_before):
            del os.environ[key]
        os.environ.update(env_before)


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP re-launch of this script land in this multirun job's folder, as a plain single
    run: ``sys.argv`` becomes the script plus this job's overrides, and ``hydra.run.dir`` the job's folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run), open_dict(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def is_global_zero() -> bool:
    """Whether this process is rank 0 of its job (True outside DDP). Lightning's re-launched ranks carry
    their rank in the environment from the start, before any process group exists."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
