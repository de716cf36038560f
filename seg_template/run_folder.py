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

The lock is an ``flock`` on the file, held for the life of the process: the kernel drops it when the
process ends, however it ends (``kill -9`` included), and a copied folder holds a new file that nobody
locks. The file itself records who holds it, for the message, and is removed at a normal exit. Where the
filesystem has no ``flock`` (Windows, some network mounts) the recorded pid is checked instead, on the
same host only: a lock written on another host is treated as live (delete the file if that run is gone).

:class:`RunFolderClaim` is the Hydra callback that does this (``configs/hydra/default.yaml``); it runs in
``on_run_start``, before Hydra creates the folder, writes ``.hydra/`` and opens the log. Light imports only:
Hydra instantiates it before ``--help``-fast code paths end.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from seg_template.errors import ConfigError

log = logging.getLogger("seg_template")

LOCK_FILE = Path(".hydra") / "run.lock"
#: environment variables that carry a process's global rank (the ones Lightning reads, in its order)
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_MAX_SUFFIX = 1000


class RunFolderBusy(ConfigError):
    """The run folder is in use by another live run."""


@dataclass(frozen=True)
class Owner:
    """Who holds a run folder's lock, as recorded in the lock file."""

    pid: int
    host: str
    started: str
    command: str
    slurm_job: str | None = None
    boot: str | None = None  # this process's start time since boot (Linux), to tell a reused pid apart

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"


def this_process() -> Owner:
    """The record of this process, written into the lock it holds."""
    started = dt.datetime.now().isoformat(sep=" ", timespec="seconds")
    return Owner(pid=os.getpid(), host=socket.gethostname(), started=started,
                 command=shlex.join([Path(sys.executable).name, *sys.argv]), slurm_job=_slurm_job(),
                 boot=_process_start(os.getpid()))


def _slurm_job() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else job


def _process_start(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def process_rank() -> int:
    """This process's global rank from the environment (0 outside DDP / SLURM multi-task jobs)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


# ---------------------------------------------------------------- the lock file
def read_owner(text: str) -> Owner | None:
    """The :class:`Owner` recorded in a lock file's ``text``; None when empty or unreadable."""
    try:
        data = json.loads(text)
        return Owner(**{k: data.get(k) for k in Owner.__dataclass_fields__})
    except (ValueError, TypeError):
        return None


def _read_lock(path: Path) -> Owner | None:
    for _ in range(20):  # an owner writes its record right after taking the lock: wait a moment for it
        with contextlib.suppress(OSError):
            owner = read_owner(path.read_text())
            if owner is not None:
                return owner
        time.sleep(0.05)
    return None


def _alive_here(owner: Owner) -> bool:
    """Whether ``owner`` (recorded on this host) is still running, for filesystems without ``flock``."""
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to another user
        pass
    return owner.boot is None or _process_start(owner.pid) in (None, owner.boot)


@dataclass
class Claim:
    """A held run-folder lock; :meth:`release` (also run at exit) removes the file and drops the lock."""

    folder: Path
    fd: int | None
    owner: Owner
    previous: Owner | None = None  # the record of a run that had left the lock behind

    def release(self) -> None:
        if self.owner.pid != os.getpid():  # a forked child (DataLoader worker) exits: not the owner
            return
        path = self.folder / LOCK_FILE
        with contextlib.suppress(OSError):
            if self.fd is None or os.fstat(self.fd).st_ino == os.stat(path).st_ino:
                path.unlink()  # before the lock is dropped: a waiter then sees a new file, never ours
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        _CLAIMS.pop(self.folder, None)


#: the folders this process holds, released at exit
_CLAIMS: dict[Path, Claim] = {}


def _release_all() -> None:
    for claim in list(_CLAIMS.values()):
        claim.release()


atexit.register(_release_all)


def _busy(folder: Path, owner: Owner | None) -> RunFolderBusy:
    who = owner.describe() if owner else "a process that has not recorded itself yet"
    lock = folder / LOCK_FILE
    return RunFolderBusy(
        f"run folder {folder} is in use by another run ({who}). Two runs in one folder would mix their "
        f"metrics.csv, train.log and checkpoints. Wait for that run to end (or stop it), or resume into a new "
        f"folder with resume_in_place=false. If that run is gone (e.g. it ran on another machine and this "
        f"filesystem cannot tell), delete {lock}.")


def claim_lock(folder: Path) -> Claim:
    """Take ``folder``'s lock for this process, or raise :class:`RunFolderBusy` naming its live holder."""
    folder = Path(folder)
    me = this_process()
    path = folder / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        return _claim_by_pid(folder, me)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _read_lock(path)
            if _same_slurm_job(owner, me):  # a requeued job whose previous start has not quite ended
                log.debug("run folder %s: held by an earlier start of this SLURM job", folder)
                return Claim(folder, None, me)
            raise _busy(folder, owner) from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return _claim_by_pid(folder, me)
            raise
        try:  # the previous holder may have removed the file between our open and our lock: use the new one
            current = os.stat(path)
            stale_file = (current.st_ino, current.st_dev) != (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
        except FileNotFoundError:
            stale_file = True
        if stale_file:
            os.close(fd)
            continue
        previous = read_owner(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        _write_record(fd, me)
        return _register(Claim(folder, fd, me, previous))
    raise RunFolderBusy(f"run folder {folder}: could not take {path} (it keeps being replaced)")


def _claim_by_pid(folder: Path, me: Owner) -> Claim:
    """The lock where ``flock`` is not available: an exclusively created file, stale when its pid is gone."""
    path = folder / LOCK_FILE
    previous = None
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            if owner is not None and owner.host != me.host and not _same_slurm_job(owner, me):
                raise _busy(folder, owner) from None
            if owner is not None and owner.host == me.host and _alive_here(owner):
                raise _busy(folder, owner) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: gone, or an earlier start of this SLURM job
            previous = owner
            continue
        _write_record(fd, me)
        os.close(fd)
        return _register(Claim(folder, None, me, previous))
    raise RunFolderBusy(f"run folder {folder}: could not create {path} (it keeps being re-created)")


def _same_slurm_job(owner: Owner | None, me: Owner) -> bool:
    return owner is not None and owner.slurm_job is not None and owner.slurm_job == me.slurm_job


def _write_record(fd: int, me: Owner) -> None:
    data = json.dumps(me.__dict__, indent=1).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _register(claim: Claim) -> Claim:
    _CLAIMS[claim.folder] = claim
    return claim


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
        claim = _CLAIMS.get(self.folder) if self.folder is not None else None
        if claim is not None:
            claim.release()
