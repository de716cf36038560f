"""One live run per run folder, claimed before Hydra writes anything into it; a run never writes over what a
folder already holds.

Two runs in one folder interleave ``metrics.csv`` and ``train.log``, overwrite each other's checkpoints and
leave ``.hydra/`` describing only one of them. The rule:

- **A fresh run always gets a new, empty folder.** When the folder its name resolves to already exists (two
  ``python train.py name=exp`` started in the same second), it takes ``<folder>_2``, ``_3``, ... ``os.mkdir``
  is atomic, so two processes never get the same one; the run says where it went.
- **``name`` is one plain folder-name word** (letters, digits, ``_ . + -``; no ``/``, ``\\``, ``..``, spaces
  or quotes): it is appended to the folder's name, and ``name=../../x`` put a run outside ``paths.log_dir``.
  Refused before any folder is made (:func:`check_name`).
- **Only a training run resumed from a checkpoint of a folder may write into that folder once it holds
  results** (checkpoints, ``metrics.csv``, ``train.log``, predictions... anything but an empty ``.hydra/``).
  That is resume in place (``ckpt_path=<run>/checkpoints/last.ckpt``, which sets ``hydra.run.dir=<run>``;
  ``train=false`` too: it appends its test to the run's history) and a requeued SLURM job resuming its
  ``hpc_ckpt``. Anything else typed into such a folder with ``hydra.run.dir=`` — a fresh training run, eval,
  predict, export, a resume of another folder's checkpoint — is refused before Hydra writes, naming the folder,
  what it holds and the way out (:func:`refuse_foreign_folder`). So is a checkpoint path that lies in the
  folder but is a link to a file outside it: that would continue another run's state here. (That a resume in
  place starts from the folder's newest state is checked once the checkpoint is read:
  :func:`check_resume_in_place`, called by ``seg_template/train.py``.)
- **A run continuing in an existing folder** claims that folder's lock, ``<run>/.hydra/run.lock``. A folder
  whose lock is held by a live process is refused with a message naming that run (pid, host, start time,
  command); a lock left behind by a run that is gone (killed, crashed, or copied along with the folder) is
  taken over with a notice.
- Hydra never overwrites another run's record: a run continuing in a folder that has one writes its config
  to ``.hydra/resumed_<time>/``, as resume in place does.
- Not claimed: multirun jobs (each has its own folder in the sweep; submitit / SLURM jobs and their requeues
  are multirun jobs), a restart of the same SLURM job (a requeue) while its previous start still holds the
  lock, and DDP ranks > 0. Those write into rank 0's folder with no ``.hydra/`` record (rank 0's is the run's)
  and a log of their own. Lightning re-launches its ranks so (``hydra.run.dir=<rank 0's folder>
  hydra.job.name=train_ddp_process_<k> hydra.output_subdir=null``). A rank > 0 that torchrun or a multi-task
  srun started, with the command rank 0 got, waits until rank 0 holds the folder, then logs to
  ``<task>_rank<k>.log`` (:func:`join_rank_zero`). Without ``hydra.run.dir=`` each process resolves the time
  stamp itself: rank 0 names the folder it took in ``<runs>/.rank0_folder_<launch>`` (removed when it ends),
  and the others take that one.

The lock itself (``flock``, released by the kernel however the process ends; a pid check where the
filesystem has none) is ``seg_template/run_lock.py``.

:class:`RunFolderClaim` is the Hydra callback that does this (``configs/hydra/default.yaml``); it runs in
``on_run_start`` / ``on_multirun_start``, before Hydra creates the folder, writes ``.hydra/`` and opens the log.
Light imports only: Hydra instantiates it before ``--help``-fast code paths end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from seg_template.errors import ConfigError
from seg_template.run_lock import LOCK_FILE, RunFolderBusy, claim_lock, held_claim, read_owner

__all__ = ["LOCK_FILE", "RunFolderBusy", "RunFolderClaim", "check_name", "check_resume_in_place", "claim_run_folder",
           "external_launcher", "join_rank_zero", "new_folder", "process_rank", "refuse_foreign_folder", "results_in"]

log = logging.getLogger("seg_template")

#: environment variables that carry a process's global rank (the ones Lightning reads, in its order)
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_MAX_SUFFIX = 1000
#: a run name: one folder-name word that neither a shell nor Hydra's override grammar splits
_NAME = re.compile(r"\w[\w.+-]*")
_MAX_NAME = 100
#: seconds a rank > 0 started by torchrun / srun waits for rank 0 to claim the run folder, and between looks
RANK_WAIT_S = 300.0
_RANK_POLL_S = 0.5
#: what Lightning's DDP launcher adds to the command of a rank it starts (lightning_fabric/strategies/launchers/
#: subprocess_script.py), beside hydra.run.dir=<rank 0's folder> and hydra.output_subdir=null
_LIGHTNING_RANK = "hydra.job.name=train_ddp_process_"


def process_rank() -> int:
    """This process's global rank from the environment (0 outside DDP / SLURM multi-task jobs)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


def external_launcher(config: DictConfig) -> str | None:
    """``"torchrun"`` or ``"srun"`` when that started this process as one of several (``WORLD_SIZE`` /
    ``SLURM_NTASKS`` > 1), each running the entry point with the same command, its own Hydra included; None
    otherwise, and for a rank Lightning's DDP launcher started: its command names rank 0's folder already."""
    if any(str(o).startswith(_LIGHTNING_RANK) for o in config.hydra.overrides.hydra):
        return None
    env = os.environ  # TORCHELASTIC_RUN_ID: set by torchrun's agent for every process it starts
    launcher, size = ("torchrun", env.get("WORLD_SIZE")) if "TORCHELASTIC_RUN_ID" in env else \
        ("srun", env.get("SLURM_NTASKS"))
    with contextlib.suppress(TypeError, ValueError):
        if int(size) > 1:
            return launcher
    return None


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


# ---------------------------------------------------------------- what may be written where
def check_name(name: Any) -> None:
    """Refuse a ``name`` that is not one plain folder-name word (see the module docstring): ``ConfigError``."""
    if name is None or name == "":
        return
    text = str(name)
    if isinstance(name, bool | int | float | str) and _NAME.fullmatch(text) and ".." not in text \
            and len(text) <= _MAX_NAME:
        return
    shown = repr(text) if isinstance(name, str) else f"{text} (a {type(name).__name__})"
    raise ConfigError(f"name={shown}: a run's name is one folder-name word appended to its run folder's name "
                      f"(letters, digits, _ . + -; at most {_MAX_NAME} characters; no '/', '\\', '..', spaces, "
                      "quotes or commas), e.g. name=ohem_lr3e-4; to write the run somewhere else, set paths.log_dir=")


def results_in(folder: Path) -> list[str]:
    """What ``folder`` holds that a run could overwrite or mix with its own files (names, folders ending in
    ``/``); an empty ``.hydra/`` or one holding only the lock file is a claim's, not a result."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    held = []
    for entry in entries:
        is_dir = entry.is_dir()
        if entry.name == ".hydra" and is_dir and set(os.listdir(entry.path)) <= {LOCK_FILE.name}:
            continue
        held.append(entry.name + ("/" if is_dir else ""))
    return held


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _belongs(typed: Path, run_dir: Path, ckpt_dir: Path) -> bool:
    """Whether the checkpoint ``typed`` is the run folder's own once links are resolved: inside the folder, or
    in its checkpoint folder (which may be a link to a bigger disk)."""
    real = _real(typed)
    return _inside(real, _real(run_dir)) or real.parent == _real(ckpt_dir)


def _link_message(typed: Path, folder: Path) -> str:
    return (f"ckpt_path={typed} lies in the run folder {folder} but is a link to {_real(typed)}, outside it: "
            "resuming it there would continue another run's state in this folder and write over its checkpoints. "
            f"Resume that run in its own folder (ckpt_path={_real(typed)}), or start a new folder from it with "
            "resume_in_place=false.")


def refuse_foreign_folder(config: DictConfig, folder: Path) -> None:
    """A ``ConfigError`` when the run of ``config`` (the composed config, Hydra's node included) would write into
    ``folder`` (typed with ``hydra.run.dir=``) although the folder holds results of another run: see the
    module docstring for who may continue in a folder."""
    held = results_in(folder)
    if not held:
        return
    task = str(OmegaConf.select(config, "task_name", default="") or "")
    ckpt = OmegaConf.select(config, "ckpt_path", default=None, throw_on_missing=False)
    if task == "train" and ckpt not in (None, ""):
        typed = Path(str(ckpt)).expanduser().absolute()
        if _belongs(typed, folder, folder / "checkpoints"):
            return  # resume in place (or train=false: its test is appended to this run's history)
        if _inside(typed, folder):
            raise ConfigError(_link_message(typed, folder))
    if task == "train" and ckpt in (None, "") and os.environ.get("SLURM_JOB_ID") \
            and any(folder.glob("hpc_ckpt_*.ckpt")):
        return  # a requeued SLURM job: Lightning resumes the folder's hpc_ckpt
    shown = ", ".join(held[:6]) + (f" and {len(held) - 6} more" if len(held) > 6 else "")
    resume = (f"A training run continues in a folder only when it resumes a checkpoint of that folder "
              f"(ckpt_path={folder / 'checkpoints' / 'last.ckpt'}); otherwise pick" if task == "train" else "Pick")
    run = f"this {task} run" if task else "this run"
    raise ConfigError(f"hydra.run.dir={folder} already holds {shown}; {run} would write over or mix with them. "
                      f"{resume} a new or empty folder (hydra.run.dir=<another folder>), or leave hydra.run.dir out "
                      "for a new one under paths.log_dir.")


def check_resume_in_place(ckpt_path: str | Path, run_dir: str | Path, ckpt_dir: str | Path | None,
                          global_step: int) -> None:
    """Before a fit resumes ``ckpt_path`` (holding ``global_step``) in the run folder ``run_dir`` whose checkpoints
    go to ``ckpt_dir``: a ``ConfigError`` when the checkpoint lies in the folder but is a link to a file outside
    it, when one of the folder's own checkpoints is such a link (the test after fit would use it), or when it is
    older than the folder's own ``last.ckpt`` (resuming it would overwrite ``last.ckpt`` and drop the metrics
    logged since). A checkpoint from elsewhere (``resume_in_place=false``) is not checked."""
    from seg_template.callbacks.checkpoint_io import checkpoint_step

    typed, run_dir = Path(ckpt_path).expanduser().absolute(), Path(run_dir).absolute()
    ckpt_dir = Path(ckpt_dir).absolute() if ckpt_dir else run_dir / "checkpoints"
    if not _belongs(typed, run_dir, ckpt_dir):
        if _inside(typed, run_dir) or _inside(typed, ckpt_dir):
            raise ConfigError(_link_message(typed, run_dir))
        return
    for own in sorted(ckpt_dir.glob("*.ckpt")):  # best.ckpt linked from elsewhere: the test after fit would use it
        if own.is_symlink() and not _belongs(own, run_dir, ckpt_dir):
            raise ConfigError(f"{own} is a link to {_real(own)}, outside the run folder {run_dir}: resuming in place "
                              "would test (and keep as this run's) another run's checkpoint. Replace the link by a "
                              "copy of the file, or start a new folder with resume_in_place=false.")
    last = ckpt_dir / "last.ckpt"
    if not last.is_file() or _real(last) == _real(typed):
        return
    newest = checkpoint_step(last)
    if newest is None:
        log.warning("Resuming in place from %s: this folder's %s cannot be read (truncated?); it will be replaced",
                    typed, last)
    elif newest > global_step:
        raise ConfigError(
            f"ckpt_path={typed} holds step {global_step}, older than this run folder's {last} (step {newest}): "
            f"resuming it in place would overwrite last.ckpt and drop the metrics logged after step {global_step}. "
            f"To continue the run: ckpt_path={last}; to train on from the older state in a new folder, add "
            "resume_in_place=false.")


class RunFolderClaim(Callback):
    """Hydra callback: claim the run folder in ``on_run_start`` (see the module docstring), log the notices
    in ``on_job_start``, release the lock in ``on_run_end`` (and at exit in any case)."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.folder: Path | None = None
        self.pointer: Path | None = None  # where rank 0 of a torchrun / srun launch names the folder it took

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        rank, launcher = process_rank(), external_launcher(config)
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        typed = _typed_run_dir(config)
        if rank > 0:  # DDP / SLURM ranks > 0 write into rank 0's folder
            if launcher is not None:  # Lightning's own ranks are started with rank 0's folder, no record
                try:
                    if not typed:  # each process computed a timestamped folder: rank 0 says which it took
                        folder = _rank_zero_folder(folder, rank, launcher)
                        with read_write(config.hydra.run):
                            config.hydra.run.dir = str(folder)
                    join_rank_zero(config, folder, rank, launcher)
                except ConfigError as err:
                    _refuse(err)
            return
        try:
            check_name(OmegaConf.select(config, "name", default=None))  # before any folder is made
            if typed:  # a folder that may hold results: only a resume of its own checkpoint continues there
                refuse_foreign_folder(config, folder)
            claimed, self.notices = claim_run_folder(folder, fresh=not typed)
        except (ConfigError, OSError) as err:
            if isinstance(err, OSError):  # a read-only or full location: Hydra would fail with a traceback
                err = ConfigError(f"the run folder {folder} cannot be created or written ({err.strerror or err}): "
                                  "write runs elsewhere with paths.log_dir=<folder> (or hydra.run.dir=<folder>)")
            _refuse(err)
        self.folder = claimed
        if claimed != folder:
            with read_write(config.hydra.run):
                config.hydra.run.dir = str(claimed)
        if launcher is not None and not typed:  # the ranks > 0 of this launch join the folder rank 0 took
            self.pointer = _pointer(folder, launcher)
            _atomic_text(self.pointer, str(claimed))
        subdir = config.hydra.get("output_subdir")
        if subdir and (claimed / str(subdir) / "config.yaml").is_file():
            # a typed hydra.run.dir= of an earlier run: keep its record, as resume in place does (seg_template/cli.py)
            stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            with read_write(config.hydra):
                config.hydra.output_subdir = f"{subdir}/resumed_{stamp}"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_name(OmegaConf.select(config, "name", default=None))  # it names the sweep's folder too
        except ConfigError as err:
            _refuse(err)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        for notice in self.notices:
            log.warning(notice)
        self.notices = []

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        claim = held_claim(self.folder) if self.folder is not None else None
        if claim is not None:
            claim.release()
        if self.pointer is not None:  # the other ranks read it when they started
            self.pointer.unlink(missing_ok=True)


def _typed_run_dir(config: DictConfig) -> list[str]:
    return [o for o in config.hydra.overrides.hydra if str(o).startswith("hydra.run.dir=")]


def join_rank_zero(config: DictConfig, folder: Path, rank: int, launcher: str) -> None:
    """Rank ``rank`` > 0 of a run that ``launcher`` (torchrun, srun) started, all ranks with the same command
    and ``hydra.run.dir=folder``: once rank 0 holds the folder, write into it as Lightning's own ranks do, with
    no ``.hydra/`` record and a log of its own (``<task>_rank<k>.log``); before that nothing, not even the log,
    may be written there (rank 0 would refuse the folder as another run's). ``ConfigError`` when rank 0 has not
    claimed the folder within :data:`RANK_WAIT_S` seconds."""
    check_name(OmegaConf.select(config, "name", default=None))  # refused by rank 0 too: not worth the wait
    since = dt.datetime.now() - dt.timedelta(seconds=RANK_WAIT_S)  # an older lock record is an earlier run's
    _wait_for_rank_zero(lambda: _claimed_since(folder, since), rank, launcher,
                        f"claim hydra.run.dir={folder} (its lock {folder / LOCK_FILE})",
                        ", or was given another hydra.run.dir=. Start every process of the run with the same command, "
                        "hydra.run.dir= included")
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = None
        config.hydra.job.name = f"{config.hydra.job.name}_rank{rank}"


def _pointer(folder: Path, launcher: str) -> Path:
    """The file in which rank 0 of this torchrun / srun launch names the run folder it took, beside the folder
    the processes' run.dir resolved to (the same parent for all: only the time stamp may differ)."""
    env = os.environ
    if launcher == "srun":  # one job step: every process of one srun
        launch = f"slurm-{env.get('SLURM_JOB_ID', '')}.{env.get('SLURM_STEP_ID', '')}"
    else:  # torchrun: one rendezvous
        launch = f"torchrun-{env.get('TORCHELASTIC_RUN_ID', '')}-{env.get('MASTER_ADDR', '')}-{env.get('MASTER_PORT', '')}"
    return folder.parent / f".rank0_folder_{re.sub(r'[^A-Za-z0-9_.-]', '_', launch)}"


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _rank_zero_folder(folder: Path, rank: int, launcher: str) -> Path:
    """The run folder rank 0 of this launch took (it writes its path once it holds it): processes started by
    torchrun or srun each resolve ``hydra.run.dir``'s time stamp themselves, seconds apart. ``ConfigError``
    when rank 0 says nothing within :data:`RANK_WAIT_S` seconds."""
    pointer = _pointer(folder, launcher)
    since = time.time() - RANK_WAIT_S  # an older note is an earlier launch's (same torchrun address, a crash)

    def named() -> bool:
        with contextlib.suppress(OSError):
            return pointer.stat().st_mtime >= since
        return False

    _wait_for_rank_zero(named, rank, launcher, f"name its run folder in {pointer}",
                        ". Start every process of the run with the same command (or give them all "
                        "hydra.run.dir=<folder>)")
    return Path(pointer.read_text().strip())


def _wait_for_rank_zero(ready: Callable[[], bool], rank: int, launcher: str, what: str, fix: str) -> None:
    """Poll ``ready()`` until it holds; ``ConfigError`` saying that rank 0 did not ``what`` (then ``fix``) when
    it does not within :data:`RANK_WAIT_S` seconds."""
    deadline = time.monotonic() + RANK_WAIT_S
    while not ready():
        if time.monotonic() > deadline:
            raise ConfigError(f"rank {rank} (started by {launcher}) waited {RANK_WAIT_S:.0f} s for rank 0 to {what}, "
                              f"in vain: rank 0 was refused or failed (see its output){fix}.")
        time.sleep(_RANK_POLL_S)


def _claimed_since(folder: Path, since: dt.datetime) -> bool:
    """Whether ``folder``'s lock file records a claim made at ``since`` or later."""
    try:
        owner = read_owner((folder / LOCK_FILE).read_text())
        return owner is not None and dt.datetime.fromisoformat(owner.started) >= since
    except (OSError, ValueError, TypeError):
        return False


def _refuse(err: ConfigError) -> None:
    """End the process as a user error does (one block, exit status 1): Hydra turns a callback's exception into
    a warning and goes on, and nothing may be written into the folder first."""
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    raise SystemExit(1) from None
