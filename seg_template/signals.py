"""The one door for the signals that stop a run (SIGTERM, SIGINT, SIGHUP, SIGUSR1): a stopped run exits
non-zero, after the files it keeps are complete.

Schedulers (SLURM, Kubernetes, ``timeout``), ``train && eval`` pipelines and Ctrl-C stop a run with SIGTERM
or SIGINT, and must be able to tell a stopped run from a finished one. Lightning's own handling exits 0 on
SIGTERM (its ``SIGTERMException`` is a ``SystemExit`` without a code) and 1 on Ctrl-C. Here a stopped run
exits with the shell's convention, 128 + the signal's number: **143** for SIGTERM, **130** for SIGINT,
**129** for SIGHUP (the terminal or the ssh session closed), **138** for SIGUSR1 (SLURM's time-limit signal,
``--signal=USR1@<s>``, which ``launcher=submitit_slurm`` asks for).

Two layers raise one exception, :class:`StoppedBySignal` (a ``SystemExit`` carrying that status):

- :func:`exit_on_signals`, installed by ``seg_template.cli`` around every entry point: a signal raises
  ``StoppedBySignal`` at once, wherever the process is (as Ctrl-C raises ``KeyboardInterrupt``). Every file
  we write is written atomically, so at worst the file being written is not replaced. eval, predict, export
  and the parts of train outside ``fit`` stop this way.
- during ``fit``, :class:`seg_template.callbacks.stop_on_signal.StopOnSignal` replaces it with a flag acted
  upon at the end of the current training step: all DDP ranks agree, ``last.ckpt`` is written, one line
  says how to resume. A second signal while stopping raises at once (the save it interrupts leaves the
  previous ``last.ckpt`` intact and no partial file).

Processes forked from the one that installed the handlers (DataLoader workers) do not act on these
signals: the main process stops them when it stops (a worker that died first would fail the main process's
next batch with a traceback). In a SLURM job with Lightning's auto-requeue, SIGUSR1 during fit also writes
``hpc_ckpt_<n>.ckpt`` and requeues the job, which then resumes from it (``StopOnSignal``): the same safe
point as any stop, where Lightning's own handler would save wherever the signal fell (mid optimiser step).
A signal that arrives while a module is being imported is acted upon once the import is over
(:func:`raise_stop`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: the signals that stop a run (SIGUSR1's default action would end the process without a word or a checkpoint)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def stop_signals() -> tuple[int, ...]:
    """:data:`STOP_SIGNALS`."""
    return STOP_SIGNALS

Handler = Callable[[int, FrameType | None], None]

_received: list[int] = []  # signals this process received while a handler of ours was installed
_reported: list[bool] = []  # whether the stop was reported in the log


def exit_status(signum: int) -> int:
    """The status a run stopped by ``signum`` exits with: 128 + its number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name


class StoppedBySignal(SystemExit):
    """The run was stopped by ``signum``; exits the process with :func:`exit_status` (``code``).

    ``reported`` is True once the line saying where the run stopped has been logged."""

    def __init__(self, signum: int, reported: bool = False) -> None:
        super().__init__(exit_status(signum))
        self.signum = int(signum)
        self.reported = reported

    def __str__(self) -> str:
        return f"stopped by {signal_name(self.signum)} (exit status {self.code})"


def mark_reported() -> None:
    """Note that the line saying where the run stopped was logged (the entry point then adds none)."""
    _reported.append(True)


def stop_reported() -> bool:
    return bool(_reported)


_requeued: list[str] = []  # the SLURM job this process requeued (StopOnSignal on SIGUSR1)


def mark_requeued(job: str) -> None:
    """Note that this process asked SLURM to requeue ``job``: it starts again, its end is not a failure."""
    _requeued.append(job)


def requeued_job() -> str | None:
    """The SLURM job this process requeued, else None."""
    return _requeued[-1] if _requeued else None


def received_signal() -> int | None:
    """The first stop signal this process received while one of our handlers was installed, else None."""
    return _received[0] if _received else None


def install(handler: Handler) -> dict[int, Any]:
    """Let ``handler(signum, frame)`` handle the stop signals (:func:`stop_signals`) in this process; returns the
    handlers it
    replaces (for :func:`restore`). Python allows handlers only in the main thread: elsewhere, nothing
    changes and ``{}`` is returned.

    In a process forked later from this one, SIGTERM takes its default action and the others are ignored, so
    that ``Process.terminate()`` still works (DataLoader workers install torch's own SIGTERM handler)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    owner = os.getpid()

    def dispatch(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        _received.append(signum)
        if hasattr(signal, "SIGCHLD"):
            # torch's SIGCHLD handler raises in this process, wherever it is, when a DataLoader worker dies, as
            # workers do when the signal reached the whole process group (SLURM, Ctrl-C, kill -TERM -<pgid>):
            # the run would stop there and then, not at its next safe point. A worker lost by now is still
            # noticed when a batch is next fetched from it (torch checks its workers every few seconds).
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        handler(signum, frame)

    previous = {}
    for signum in stop_signals():
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, dispatch)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install` returned."""
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)


#: seconds between two looks at whether the import a signal arrived in is over
IMPORT_RETRY_S = 0.05


def _importing(frame: FrameType | None) -> bool:
    """True when ``frame`` or a caller of it runs Python's import machinery (a module being imported)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def raise_stop(signum: int, frame: FrameType | None = None) -> None:
    """The handler of :func:`exit_on_signals`: stop here, unless a module is being imported.

    An exception raised in the middle of ``import torch`` leaves torch half-initialised: the process then
    printed a long traceback from torch's own cleanup, or died of a segmentation fault (exit 139), instead of
    exiting 143 / 130. A signal that arrives during an import is delivered again a moment later, until the
    import is over, and raises then."""
    if _importing(frame):
        import _thread

        timer = threading.Timer(IMPORT_RETRY_S, _thread.interrupt_main, args=(signum,))
        timer.daemon = True
        timer.start()
        return
    raise StoppedBySignal(signum)


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block, a stop signal raises :class:`StoppedBySignal` (exit status 143 SIGTERM, 130 SIGINT,
    129 SIGHUP, 138 SIGUSR1).

    Once a stop signal was received, errors Python can only print ("Exception ignored in ... __del__"), such
    as a DataLoader iterator finding its workers killed by the same signal while it shuts down, are part of
    the stop and no longer printed (the process is on its way out)."""
    _received.clear()  # what an earlier block of this process received is no concern of this one
    _reported.clear()
    previous = install(raise_stop)
    hook = sys.unraisablehook

    def quiet_when_stopping(unraisable: Any) -> None:
        if not _received:
            hook(unraisable)

    sys.unraisablehook = quiet_when_stopping
    try:
        yield
    finally:
        restore(previous)
        # a stopped process is on its way out: what its objects' __del__ raise now is part of the stop
        sys.unraisablehook = _ignore_unraisable if _received else hook
        _received.clear()


def _ignore_unraisable(_unraisable: Any) -> None:
    """``sys.unraisablehook`` of a process that a signal stopped."""


def as_stop(err: BaseException) -> StoppedBySignal | None:
    """The stop ``err`` stands for: a :class:`StoppedBySignal` in its cause / context chain, Lightning's
    ``SIGTERMException``, or any error raised after this process received a stop signal (e.g. a DataLoader
    worker that SLURM's SIGTERM reached first); None when no signal is involved."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, StoppedBySignal):
            return current
        if type(current).__name__ == "SIGTERMException":  # Lightning's, when its own handler ran
            return StoppedBySignal(signal.SIGTERM)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    signum = received_signal()
    return StoppedBySignal(signum) if signum is not None else None
