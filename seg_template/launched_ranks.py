"""The DDP ranks Lightning starts from this process (``trainer=ddp_cpu``, ``trainer=ddp`` on one node): watched
while their job runs, ended with it.

Lightning's DDP launcher re-runs the script for ranks 1..N-1 as child processes of rank 0 and watches them from a
thread (``_ChildProcessObserver`` in lightning_fabric/strategies/launchers/subprocess_script.py): within 5 s of
one ending with a non-zero status it SIGKILLs the other ranks *and rank 0*. In a single run that may cut rank 0
short before it printed why it stopped; in a multirun rank 0 is the sweep's own process, so one job's failing
rank ended the whole sweep (an Optuna study included) with status 137 and left the next job's ranks behind.

:func:`watch_launched_ranks` (around each train / eval job: ``jobs.isolated_job``) puts :class:`RankWatcher` in
its place. When a rank ends with a non-zero status the watcher stops the other ranks, not rank 0: rank 0 fails
in its next collective operation (gloo raises as soon as its peer's socket closes), which the entry point turns
into a failed job (multirun) or exit status 1, with the culprit's error printed once. Only when rank 0 has not
ended its job :data:`RANK_FAILURE_GRACE_S` seconds later (stuck where no collective returns: waiting for a rank
that died before joining the process group) is it killed as Lightning kills it, after one line saying why.

:func:`ended_ranks` (around each job in ``cli.py``, outside the error report, so that the ranks still running
can read the failure rank 0 recorded) stops the watchers and gives the job's ranks :data:`RANK_EXIT_WAIT_S`
seconds to end on their own, then stops them (SIGTERM, then SIGKILL) and reaps them: no rank outlives its job.
Nothing heavy is imported here: Lightning only inside :func:`watch_launched_ranks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("seg_template")

#: seconds rank 0 has to end its job on its own after a rank it started failed, before it is killed
RANK_FAILURE_GRACE_S = 60.0
#: seconds a job's ranks have, once rank 0 ended the job, to end on their own before they are stopped
RANK_EXIT_WAIT_S = 30.0
#: seconds between SIGTERM and SIGKILL for a rank that outlived its job
TERMINATE_WAIT_S = 5.0

_watchers: list[RankWatcher] = []  # of the current job, until ended_ranks ends them


class RankWatcher(threading.Thread):
    """Watches ``children`` (the processes of ranks 1..N-1, in rank order) every ``period_s`` seconds.

    When one ends with a non-zero status, the others are sent SIGTERM; rank 0 (process ``main_pid``, this one
    by default) is left to fail in its next collective. Still running ``grace_s`` seconds later (:meth:`stop`
    not called), it is killed with every rank (SIGKILL, as Lightning does), after one logged line saying why.
    """

    def __init__(self, children: list[subprocess.Popen], main_pid: int | None = None, period_s: float = 1.0,
                 grace_s: float = RANK_FAILURE_GRACE_S) -> None:
        super().__init__(daemon=True, name="seg-template-rank-watcher")  # ends with the process
        self.children, self.period_s, self.grace_s = children, period_s, grace_s
        self.main_pid = os.getpid() if main_pid is None else main_pid
        self._stopped = threading.Event()
        self._failed_at: float | None = None

    def run(self) -> None:
        while not self._stopped.wait(self.period_s):
            if self.check():
                return

    def stop(self) -> None:
        """The job is over: whatever its ranks do from now on is no failure to act on."""
        self._stopped.set()

    def check(self) -> bool:
        """Look at the ranks once and act; True when there is nothing more to watch."""
        codes = [child.poll() for child in self.children]
        if all(code == 0 for code in codes):
            return True
        failed = [(rank, code) for rank, code in enumerate(codes, start=1) if code]
        if not failed:
            return False
        rank, code = failed[0]
        if self._failed_at is None:
            self._failed_at = time.monotonic()
            log.debug("DDP rank %d ended with status %d: the other ranks are stopped, rank 0 fails in its next "
                      "collective operation", rank, code)
            for child in self.children:
                _send(child, signal.SIGTERM)
            return False
        if time.monotonic() - self._failed_at < self.grace_s or self._stopped.is_set():
            return False
        log.error("DDP rank %d ended (exit status %d) %.0f s ago and rank 0 (process %d) is still waiting for it, "
                  "where no collective operation returns (e.g. the rank ended before joining the process group): "
                  "every process of this run is killed now (SIGKILL), as Lightning does", rank, code,
                  self.grace_s, self.main_pid)
        for child in self.children:
            _send(child, signal.SIGKILL)
        os.kill(self.main_pid, signal.SIGKILL)
        return True


def _send(child: subprocess.Popen, signum: int) -> None:
    """``signum`` to ``child`` unless it has ended (and been reaped)."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


@contextmanager
def watch_launched_ranks() -> Iterator[None]:
    """While inside, the ranks Lightning's DDP launcher starts from this process are watched by a
    :class:`RankWatcher` instead of Lightning's observer (which would kill this process when a rank fails).
    The watchers and their ranks are ended by :func:`ended_ranks`."""
    from pytorch_lightning.strategies.launchers import subprocess_script as launcher_module

    lightning_observer = getattr(launcher_module, "_launch_process_observer", None)
    if lightning_observer is None:  # a Lightning that launches no observer: nothing to replace
        yield
        return

    def launch_watcher(child_processes: list[subprocess.Popen]) -> None:
        watcher = RankWatcher(child_processes)
        _watchers.append(watcher)
        watcher.start()

    launcher_module._launch_process_observer = launch_watcher
    try:
        yield
    finally:
        launcher_module._launch_process_observer = lightning_observer


@contextmanager
def ended_ranks() -> Iterator[None]:
    """When the job inside ends (also by an error or a signal), stop watching its ranks and end them:
    :func:`end_ranks`."""
    try:
        yield
    finally:
        watchers = list(_watchers)
        _watchers.clear()
        for watcher in watchers:
            watcher.stop()
        end_ranks([child for watcher in watchers for child in watcher.children])


def end_ranks(children: list[subprocess.Popen], wait_s: float = RANK_EXIT_WAIT_S,
              terminate_wait_s: float = TERMINATE_WAIT_S) -> None:
    """Give ``children`` up to ``wait_s`` seconds to end on their own (a finished rank tears down, a rank
    whose peer failed prints one line), then send SIGTERM, and SIGKILL to those still running
    ``terminate_wait_s`` seconds later. Every one is reaped: none outlives the job, none is a zombie."""
    deadline = time.monotonic() + wait_s
    try:
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(deadline - time.monotonic(), 0.0))
    finally:
        running = [child for child in children if child.poll() is None]
        if running:
            log.warning("DDP rank process(es) %s still running %.0f s after rank 0 ended the job: stopped",
                        ", ".join(str(child.pid) for child in running), wait_s)
        for child in running:
            _send(child, signal.SIGTERM)
        deadline = time.monotonic() + terminate_wait_s
        for child in running:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                _send(child, signal.SIGKILL)
                child.wait()
