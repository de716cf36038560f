"""One live run per run folder, claimed before Hydra writes anything into it.

Two runs in one folder interleave ``metrics.csv`` and ``train.log``, overwrite each other's checkpoints and
leave ``.hydra/`` describing only one of them. The rule:

- **A fresh run always gets a new, empty folder.** When the folder its name resolves to already exists (two
  ``python train.py name=exp`` started in the same second), it takes ``<folder>_2``, ``_3``, ... ``os.mkdir``
  is atomic, so two processes never get the same one; the run says where it went.
- **A run continuing in an existing folder** (resume in place, which sets ``hydra.run.dir=<run>``, or any
  ``hydra.run.dir=`` typed on the command line) claims that folder's lock, ``<run>/.hydra/run.lock``. A
  folder whose lock is held by a live process is refused with a message naming that run (pid, host, start
  time, command); a lock left behind by a run that is gone (killed, crashed, or copied along with the
  folder) is taken over with a notice.
- Hydra never overwrites another run's record: a run typed into a folder that has one (``hydra.run.dir=``
  of an earlier run) writes its config to ``.hydra/resumed_<time>/``, as resume in place does.
- Not claimed: DDP ranks > 0 (Lightning re-launches them into rank 0's folder), multirun jobs (each has its
  own folder in the sweep; submitit / SLURM jobs and their requeues are multirun jobs) and a restart of the
  same SLURM job (a requeue) while its previous start still holds the lock.

The lock itself (``flock``, released by the kernel however the process ends; a pid check where the
filesystem has none) is ``seg_template/run_lock.py``.

:class:`RunFolderClaim` is the Hydra callback that does this (``configs/hydra/default.yaml``); it runs in
``on_run_start``, before Hydra creates the folder, writes ``.hydra/`` and opens the log. Light imports only:
Hydra instantiates it before ``--help``-fast code paths end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from seg_template.errors import ConfigError
from seg_template.run_lock import LOCK_FILE, RunFolderBusy, claim_lock, held_claim

__all__ = ["LOCK_FILE", "RunFolderBusy", "RunFolderClaim", "claim_run_folder", "new_folder", "process_rank"]

log = logging.getLogger("seg_template")

#: environment variables that carry a process's global rank (the ones Lightning reads, in its order)
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_MAX_SUFFIX = 1000


def process_rank() -> int:
    """This process's global rank from the environment (0 outside DDP / SLURM multi-task jobs)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


# ---------------------------------------------------------------- the folder
def new_folder(folder: Path) -> Path:
    """Create ``folder``, or the first free ``<folder>_2``, ``_3``... when it exists; returns what was made."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, _MAX_SUFFIX + 1):
        candidate = folder if k == 1 else folder.with_name(f"{folder.name}_{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"{folder} and {_MAX_SUFFIX - 1} numbered variants of it exist already: set name= or "
                      "hydra.run.dir=")


def claim_run_folder(folder: Path, fresh: bool) -> tuple[Path, list[str]]:
    """The folder this run writes to, claimed, and the notices to log once logging is set up.

    ``fresh``: a new run, which gets a new empty folder (``folder`` or a numbered variant); otherwise the run
    continues in ``folder`` (created if missing) and needs its lock.
    """
    notices = []
    if fresh:
        made = new_folder(folder)
        if made != folder:
            notices.append(f"{folder} already exists (another run of this name started in the same second?): "
                           f"this run writes to {made}")
        folder = made
    else:
        folder.mkdir(parents=True, exist_ok=True)
    claim = claim_lock(folder)
    if claim.previous is not None:
        notices.append(f"run folder {folder}: took over the lock left by {claim.previous.describe()}; that run no "
                       "longer holds it (it ended without releasing it, or this folder is a copy)")
    return folder, notices


class RunFolderClaim(Callback):
    """Hydra callback: claim the run folder in ``on_run_start`` (see the module docstring), log the notices
    in ``on_job_start``, release the lock in ``on_run_end`` (and at exit in any case)."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.folder: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() > 0:  # DDP / SLURM ranks > 0 write into rank 0's folder
            return
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        typed = [o for o in config.hydra.overrides.hydra if str(o).startswith("hydra.run.dir=")]
        try:
            claimed, self.notices = claim_run_folder(folder, fresh=not typed)
        except (ConfigError, OSError) as err:
            if isinstance(err, OSError):  # a read-only or full location: Hydra would fail with a traceback
                err = ConfigError(f"the run folder {folder} cannot be created or written ({err.strerror or err}): "
                                  "write runs elsewhere with paths.log_dir=<folder> (or hydra.run.dir=<folder>)")
            # Hydra turns a callback's exception into a warning and goes on: end here, as a user error does
            # (one block, exit status 1), before anything is written into the other run's folder
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        self.folder = claimed
        if claimed != folder:
            with read_write(config.hydra.run):
                config.hydra.run.dir = str(claimed)
        subdir = config.hydra.get("output_subdir")
        if subdir and (claimed / str(subdir) / "config.yaml").is_file():
            # a typed hydra.run.dir= of an earlier run: keep its record, as resume in place does (seg_template/cli.py)
            stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            with read_write(config.hydra):
                config.hydra.output_subdir = f"{subdir}/resumed_{stamp}"

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        for notice in self.notices:
            log.warning(notice)
        self.notices = []

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        claim = held_claim(self.folder) if self.folder is not None else None
        if claim is not None:
            claim.release()
