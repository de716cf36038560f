"""The Hydra entry wrapper behind ``train.py`` / ``eval.py`` / ``predict.py``: what happens around a task.

- before Hydra parses the command line: ``$PROJECT_ROOT``, our OmegaConf resolvers, and resuming in place
  (``ckpt_path=<run>/checkpoints/last.ckpt`` continues in ``<run>``). Nothing heavy is imported, so
  ``--help`` answers at once.
- around the task: known-harmless third-party noise is silenced (see ``seg_template.quiet``), a user's
  mistake (:class:`~seg_template.errors.UserError`) prints as one short block and exits 1, and a single run
  that fails before it has written anything of value leaves no empty run folder behind.
- signals (``seg_template.signals``): SIGTERM / SIGINT end the process with status 143 / 130 and one line,
  never a traceback (during fit after a complete ``last.ckpt``: ``callbacks/stop_on_signal.py``).
- several processes (DDP): a user error found by any rank prints once, with its rank; the other ranks'
  consequent failures (a collective that lost its peer) print one short line pointing at it; all exit 1 (in a
  multirun the job fails with that error and the sweep goes on). The ranks a job started end with it
  (``seg_template.launched_ranks``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg_template import errors
from seg_template.errors import UserError
from seg_template.jobs import (
    claim_message,
    end_with_launcher,
    failures_of_other_ranks,
    global_rank,
    is_global_zero,
    is_peer_failure,
    launch_scope,
    record_failure,
    was_distributed,
)
from seg_template.launched_ranks import ended_ranks
from seg_template.paths import CONFIG_DIR, argv_values, export_project_root, hydra_value, register_resolvers
from seg_template.signals import as_stop, exit_on_signals, mark_reported, signal_name, stop_reported

log = logging.getLogger("seg_template")

#: files a run writes before it has done anything (besides Hydra's .hydra/ and *.log)
_NOT_RESULTS = ("hparams.yaml",)


def hydra_main(config_name: str, task: Callable[[DictConfig], Any]) -> Any:
    """Parse the command line with ``configs/<config_name>.yaml`` and run ``task(cfg)``; returns its value
    (a sweeper's objective for train)."""
    import hydra

    export_project_root()
    register_resolvers()
    with _user_errors():
        _check_home_values(sys.argv)
    if config_name == "train":
        sys.argv = resume_in_place_argv(sys.argv)
        with _user_errors():
            _check_sweep_folder(sys.argv)

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def _main(cfg: DictConfig) -> Any:
        from seg_template.quiet import quiet_third_party

        quiet_third_party()
        end_with_launcher()
        # _signal_exits outermost: whatever a stopping process raises on its way out is part of the stop;
        # ended_ranks outside _user_errors: the DDP ranks still running read the failure it records
        with _signal_exits(), launch_scope(), _no_debris(), ended_ranks(), _user_errors():
            return task(cfg)

    with exit_on_signals():  # from here on a signal stops the run with 143 / 130, no traceback
        return _main()


def resume_in_place_argv(argv: list[str], now: datetime | None = None) -> list[str]:
    """``argv`` plus ``hydra.run.dir=<run>`` when it resumes ``<run>/checkpoints/<x>.ckpt`` of one of our
    runs, so that the run continues in its own folder (metrics.csv, checkpoints, log). The new run's config
    goes to ``<run>/.hydra/resumed_<time>/``; the original ``.hydra/`` is kept. Not for sweeps, an explicit
    ``hydra.run.dir=``, or ``resume_in_place=false``."""
    args = argv[1:]
    if any(a in ("-m", "--multirun") or a.startswith(("hydra.run.dir=", "hydra.output_subdir=")) for a in args):
        return argv
    values = argv_values(args)
    if values.get("resume_in_place", "true").lower() in ("false", "0", "no") or not values.get("ckpt_path"):
        return argv
    ckpt = Path(_override_value("ckpt_path", values["ckpt_path"])).expanduser().absolute()
    run_dir = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or not (run_dir / ".hydra").is_dir():
        return argv
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    return [*argv, f"hydra.run.dir={hydra_value(str(run_dir))}", f"hydra.output_subdir=.hydra/resumed_{stamp}"]


def _check_home_values(argv: list[str]) -> None:
    """``key=~/x`` (Hydra's lexer fails with no hint) or ``key='~/x'`` (Hydra would make a folder named ``~``
    before the option check runs): nothing expands ``~``, so it is refused here, before Hydra, as the option
    check refuses it in config files (:func:`seg_template.options.home_problem`)."""
    from seg_template.errors import ConfigError
    from seg_template.options import home_problem

    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if not eq or arg.startswith("-") or key.startswith("~"):  # flags; ~key[=value] is Hydra's delete
            continue
        value = _override_value(key, value)
        if value.startswith("~"):
            raise ConfigError(home_problem(key.lstrip("+"), value))


def _check_sweep_folder(argv: list[str]) -> None:
    """A sweep told where to write (``-m ... hydra.sweep.dir=<folder>``) must not write into an earlier sweep's
    folder: Hydra writes each job's ``.hydra/`` there before any job could refuse (see
    :func:`seg_template.sweep_summary.refuse_a_used_sweep_folder`). A folder given through an interpolation is
    left to Hydra."""
    args = argv[1:]
    if not any(a in ("-m", "--multirun") for a in args):
        return
    values = argv_values(args)
    folder = values.get("hydra.sweep.dir")
    if not folder or "${" in folder:
        return
    from seg_template.sweep_summary import refuse_a_used_sweep_folder

    sweeper = "ResumableOptunaSweeper" if values.get("hparams_search") == "optuna" else ""
    refuse_a_used_sweep_folder(Path(_override_value("hydra.sweep.dir", folder)).expanduser(), sweeper)


def _override_value(key: str, value: str) -> str:
    """The value Hydra reads from ``key=value`` (a quoted path unquoted: ``'a/1_loss=ce/b'`` -> ``a/1_loss=ce/b``);
    ``value`` itself when Hydra's grammar does not take it (Hydra then says why)."""
    if value[:1] not in ("'", '"'):
        return value
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return str(OverridesParser.create().parse_overrides([f"{key}={value}"])[0].value())
    except Exception:  # noqa: BLE001 - Hydra itself names the bad override when it parses the command line
        return value


@contextmanager
def _user_errors() -> Iterator[None]:
    """A :class:`UserError` (also when wrapped by Hydra's instantiate or a DataLoader worker) prints as one
    block and exits 1; ``HYDRA_FULL_ERROR=1`` re-raises it with its traceback. Under DDP the block is printed
    by the first rank that found it, and a collective that failed because another rank ended prints one
    line pointing at that rank. Other errors pass through."""
    try:
        yield
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or as_stop(err) is not None:
            raise  # a stopped run: _signal_exits says so
        several = was_distributed()
        user_error = find_user_error(err) or user_error_in_text(str(err))
        if user_error is None:
            if not several:
                raise
            record_failure(f"{type(err).__name__}: {first_line(err)}")
            if not is_peer_failure(err):
                raise
            others = failures_of_other_ranks()
            line = peer_failure_line(global_rank(), err, others)
            log.error(line)
            if _in_multirun():  # the sweeper records the job as failed, with the culprit's error if it was one
                raise (user_error_of_other_ranks(others) or RuntimeError(line)) from None
            raise SystemExit(1) from None
        message = user_message(user_error)
        if several:
            record_failure(message)
        if not several or claim_message(message):  # once per run, not once per DDP / SLURM process
            found_by = f"found by DDP rank {global_rank()}; " if global_rank() > 0 else ""
            log.error("%s\n  (%sa problem with the config, data or checkpoint, not a bug; the traceback: set "
                      "HYDRA_FULL_ERROR=1)", message, found_by)
        if _in_multirun():
            # an exception, not an exit: the sweeper records the job as failed and runs the others
            raise type(user_error)(str(user_error)) from None
        raise SystemExit(1) from None


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of ``str(err)`` (at most ``limit`` characters), or the class name when it is empty."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def peer_failure_line(rank: int, err: BaseException, others: dict[int, str]) -> str:
    """The one line a rank prints when a collective failed because another process of the run ended:
    which rank failed first and how (``others``: ``{rank: "Class: message"}``), else where to look."""
    here = f"{type(err).__name__}: {first_line(err, 100)}"
    if others:
        first = min(others)
        kind = others[first].split(":", 1)[0] or "an error"
        return (f"Rank {rank} stopped because rank {first} ended first ({kind}, printed above); here a "
                f"collective operation lost that process: {here}")
    return (f"Rank {rank} stopped: another process of this DDP run ended first (its error is above or in its "
            f"log; killed or out of memory if none); here a collective operation lost it: {here}")


def user_error_of_other_ranks(others: dict[int, str]) -> UserError | None:
    """The user error that the lowest rank of ``others`` (``{rank: "DataError: message"}``, as
    :func:`~seg_template.jobs.failures_of_other_ranks` gives them) recorded, naming that rank; None when none
    recorded one. What a multirun job whose rank 0 only lost its peer fails with."""
    for rank in sorted(others):
        name, _, text = others[rank].partition(": ")
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, UserError):
            return kind(f"{text} (found by DDP rank {rank})")
    return None


_TEXT_USER_ERROR = re.compile(r"^seg_template\.errors\.(\w+): ", re.M)


def user_error_in_text(text: str) -> UserError | None:
    """A user error named in an error's text (torch.multiprocessing hands a spawned process's traceback to
    its parent as text: ``...seg_template.errors.DataError: mask x.png has label 9``)."""
    matches = list(_TEXT_USER_ERROR.finditer(text))
    if not matches:
        return None
    kind = getattr(errors, matches[-1].group(1), None)
    if not (isinstance(kind, type) and issubclass(kind, UserError)):
        return None
    return kind(text[matches[-1].end():].strip())


@contextmanager
def _signal_exits() -> Iterator[None]:
    """A run stopped by SIGTERM / SIGINT exits 143 / 130 with one line (unless fit already logged where it
    stopped); an error raised while the process stops (a DataLoader worker the signal reached first) is
    part of that stop, not a traceback."""
    try:
        yield
    except BaseException as err:
        stop = as_stop(err)
        if stop is None:
            raise
        if was_distributed():
            record_failure(f"{signal_name(stop.signum)}: stopped by a signal")
        if not (stop.reported or stop_reported()) and is_global_zero():
            detail = "" if isinstance(err, SystemExit) else (
                f" before a safe point ({type(err).__name__}: {first_line(err)}); the files written before are "
                "complete")
            log.warning("Stopped by %s (exit status %d)%s", signal_name(stop.signum), stop.code, detail)
        mark_reported()
        raise SystemExit(stop.code) from None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def find_user_error(err: BaseException) -> UserError | None:
    """``err`` or the first :class:`UserError` in its ``__cause__`` / ``__context__`` chain."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def user_message(err: UserError) -> str:
    """The message of ``err`` without the worker traceback a DataLoader worker wraps around it."""
    text = str(err)
    marker = "Original Traceback (most recent call last):"
    if marker in text:  # "Caught DataError in DataLoader worker process 0.\n<traceback>\n...DataError: msg"
        tail = text.rsplit(f"{type(err).__name__}: ", 1)[-1]
        text = tail.strip() or text
    return f"{type(err).__name__}: {text}"


@contextmanager
def _no_debris() -> Iterator[None]:
    """Remove a single run's folder when the run fails before writing a checkpoint or metrics (a resume in
    place that fails so: its ``.hydra/resumed_<time>/`` record)."""
    try:
        yield
    except BaseException:
        _remove_if_empty_run()
        raise


def _remove_if_empty_run() -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or not is_global_zero():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:
        return  # a sweep keeps failed jobs' folders: their logs say why they failed
    run_dir = Path(hydra_cfg.runtime.output_dir)
    produced = [p for p in run_dir.rglob("*") if p.is_file() and p.name not in _NOT_RESULTS
                and not p.name.endswith(".log") and not p.relative_to(run_dir).parts[0].startswith(".hydra")]
    record = run_dir / str(hydra_cfg.output_subdir or "")
    if record.name.startswith("resumed_") and record.is_dir():  # a resume in place that was refused
        started = record.stat().st_mtime
        if not [p for p in produced if p.stat().st_mtime >= started]:  # it wrote nothing: no record of it
            shutil.rmtree(record, ignore_errors=True)
        return
    if not produced:  # only the config copies and the log: the error was printed on the console
        shutil.rmtree(run_dir, ignore_errors=True)
