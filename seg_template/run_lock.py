"""The run-folder lock: ``<run>/.hydra/run.lock``, held by one process at a time (``seg_template/run_folder.py``
says when a run takes it).

The lock is an ``flock`` on the file, held for the life of the process: the kernel drops it when the process
ends, however it ends (``kill -9`` included), and a copied folder holds a new file that nobody locks. The file
records who holds it (pid, host, start time, command, SLURM job), for the message that refuses a second run,
and is removed at a normal exit. A file found unlocked with a record in it was left by a run that is gone: it is
taken over, and the caller says so. Where the filesystem has no ``flock`` (Windows, some network mounts) the
recorded pid is checked instead, on the same host only: a record written on another host counts as live
(delete the file if that run is gone). A restart of the same SLURM job (a requeue) is never refused by its
earlier start.
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

from seg_template.errors import ConfigError

log = logging.getLogger("seg_template")

LOCK_FILE = Path(".hydra") / "run.lock"


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


def held_claim(folder: Path) -> Claim | None:
    """This process's claim on ``folder``, if it holds one."""
    return _CLAIMS.get(Path(folder))


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
