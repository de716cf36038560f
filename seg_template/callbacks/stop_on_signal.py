"""A stop signal during fit: stop at the end of the current training step, with a complete ``last.ckpt``.

The signals are seg_template.signals' (SIGTERM, SIGINT, SIGHUP, SIGUSR1).
:class:`StopOnSignal` (``configs/callbacks/stop_on_signal.yaml``) turns them into a flag while
``fit`` runs, and acts on it at the next safe point:

- the end of a training step (the optimiser step is done), where ``last.ckpt`` is written atomically for
  that step (mid-epoch) by :class:`~seg_template.callbacks.checkpoint.BestAndLastCheckpoint`. Under DDP the
  ranks learn of a signal any of them received through an all-reduce and a host read, which would stall a
  GPU every step: they ask at logging steps only (``trainer.log_every_n_steps``, 10 by default), so all of
  them stop after the same step, at most that many steps after the signal;
- a signal that arrives during validation or the epoch-end save is acted upon when the next epoch starts
  (or when training ends): the ``last.ckpt`` written at that epoch's end is the current state.

It then logs one line (where the run stopped, which file to resume from, the command) on rank 0 and raises
:class:`~seg_template.signals.StoppedBySignal`: the process exits 128 + the signal's number (143 SIGTERM, 130
SIGINT, 129 SIGHUP, 138 SIGUSR1). A second
signal while stopping stops at once: the atomic writer removes its partial file, the previous ``last.ckpt``
stays. Under SLURM with Lightning's auto-requeue, the state also goes to ``hpc_ckpt_<n>.ckpt``, which the
requeued (or preempted and restarted) job resumes from; on SIGUSR1, the time-limit signal
``launcher=submitit_slurm`` asks SLURM for, rank 0 then requeues the job itself (``scontrol requeue``), as
Lightning's own SIGUSR1 handler would, but at the safe point rather than wherever the signal fell.

Resuming from a mid-epoch ``last.ckpt`` continues at the next step (learning rate, step count, metrics.csv
rows) with the rest of that epoch's batches in that epoch's order (the training loader skips the batches
the checkpoint had taken: ``seg_template.data.datamodule.FirstBatchLoader``): the weights and the validation
metrics are those of an uninterrupted run of the same seed. Only that epoch's mean training loss
(``train/loss_epoch``) covers the steps after the resume: Lightning keeps no running means in a checkpoint.

Lightning installs its own SIGTERM handler when ``fit`` starts (it would make the run exit 0, and under DDP
it broadcasts from inside the handler); this callback takes the signals back right after, in
``on_sanity_check_start`` / ``on_train_start``; Lightning's teardown puts back the handlers from before fit
(the entry point's) on every way out of it. Between the start of fit and the sanity check (restoring a
checkpoint), the entry point's handler stops the run at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch

from seg_template.callbacks.cadence import at_logging_step
from seg_template.jobs import global_rank
from seg_template.paths import hydra_value
from seg_template.signals import StoppedBySignal, install, mark_reported, mark_requeued, signal_name

log = logging.getLogger("seg_template")


class StopOnSignal(pl.Callback):
    """During fit, SIGTERM / SIGINT stop the run after the current training step with a complete
    ``last.ckpt`` and exit status 143 / 130 (see the module's docstring)."""

    def __init__(self) -> None:
        self._pending: int | None = None  # the signal received and not yet acted upon

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._pending is not None:  # impatient: stop now (atomic writes keep the previous files whole)
            log.warning("%s again: stopping at once; a checkpoint being written is abandoned, the previous one "
                        "stays", signal_name(signum))
            raise StoppedBySignal(signum)
        self._pending = signum
        say = log.warning if global_rank() == 0 else log.debug  # Ctrl-C reaches every rank of a terminal
        say("%s received: the run stops after the current training step (with several processes: the next "
            "logging step) and writes last.ckpt (send it again to stop at once)", signal_name(signum))

    # ------------------------------------------------------------ fit starts and ends
    # Installed only after Lightning's register_signal_handlers() (it runs right before the sanity check),
    # whose teardown then puts back the handlers from before fit: the entry point's, on every path out.
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._pending = None

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install(self._on_signal)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install(self._on_signal)  # again: the sanity check may be off

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, StoppedBySignal):
            _wait_for_launched_ranks(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._pending is not None:  # arrived after the last safe point: fit is over
            signum, self._pending = self._pending, None
            if not _time_limit_after_fit(signum, trainer):
                raise StoppedBySignal(signum)

    # ------------------------------------------------------------ the safe points
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._stop_if_signalled(trainer, write=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_signalled(trainer, write=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _time_limit_after_fit(self._agreed_signal(trainer), trainer):
            self._pending = None
            return
        self._stop_if_signalled(trainer, write=False)

    def _stop_if_signalled(self, trainer: pl.Trainer, write: bool) -> None:
        signum = self._agreed_signal(trainer, every_step=write)
        if not signum:
            return
        self._pending = signum  # a second signal from here on stops at once
        if write:
            _log_this_step(trainer)
        last = _write_last(trainer) if write else _current_last(trainer)
        requeue = _write_slurm_requeue_checkpoint(trainer)
        job = slurm_job_to_requeue() if requeue and signum == signal.SIGUSR1 and trainer.is_global_zero else None
        if trainer.is_global_zero:
            log.warning(stop_line(signum, trainer.current_epoch, trainer.max_epochs, trainer.global_step, last,
                                  requeue, mid_epoch=write, requeued=job))
        if job is not None:
            # SLURM ends the job's processes as soon as it is requeued: what this attempt logged is written first
            for logger in trainer.loggers:
                logger.save()
            requeue_slurm_job(job)
        mark_reported()
        self._pending = None
        raise StoppedBySignal(signum, reported=True)

    def _agreed_signal(self, trainer: pl.Trainer, every_step: bool = False) -> int:
        """The signal any rank received (the highest number: SIGTERM over SIGINT), 0 when none. Under DDP the
        ranks agree through a collective and a host read (a GPU sync), so during the epoch (``every_step``) they
        ask only at logging steps (``trainer.log_every_n_steps``): all ranks stop at the same step, at most that
        many steps after the signal."""
        local = self._pending or 0
        if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return local
        if every_step and not at_logging_step(trainer):
            return 0
        agreed = trainer.strategy.reduce(torch.tensor(local, device=trainer.strategy.root_device), reduce_op="max")
        return int(agreed)


def _time_limit_after_fit(signum: int, trainer: pl.Trainer) -> bool:
    """SIGUSR1, SLURM's time-limit signal, once the fit has run its course (its last epoch's validation
    included): nothing is left to resume, so the job is not requeued (the next attempt would train nothing and
    return no objective); the test goes on, which the time limit may still cut."""
    if signum != signal.SIGUSR1:
        return False
    if trainer.is_global_zero:
        log.warning("SIGUSR1 (SLURM's time-limit signal) after the fit's last step: the fit is complete, nothing "
                    "to requeue; the run goes on")
    return True


def _wait_for_launched_ranks(trainer: pl.Trainer, timeout_s: float = 60.0) -> None:
    """The ranks Lightning started from this process (``trainer=ddp_cpu``, DDP on one machine) stop at the
    same step: wait for them, so that whoever waits for this process (a scheduler, a shell) sees the whole
    run ended."""
    deadline = time.monotonic() + timeout_s
    for proc in getattr(trainer.strategy.launcher, "procs", None) or []:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def _log_this_step(trainer: pl.Trainer) -> None:
    """Log the step that just ended, as Lightning does after ``on_train_batch_end`` (at a logging step): the run
    stops before that, and the resumed fit continues at the next step, so the step's row would be lost."""
    connector = trainer._logger_connector
    connector.on_batch_end()
    connector.update_train_step_metrics()


def _write_last(trainer: pl.Trainer) -> str | None:
    """Write ``last.ckpt`` for the current step through our checkpoint callback; its path, or None when this
    run keeps no ``last.ckpt`` (no BestAndLastCheckpoint, ``save_last=false``, ``fast_dev_run``)."""
    from seg_template.callbacks.checkpoint import BestAndLastCheckpoint

    callback = trainer.checkpoint_callback
    if isinstance(callback, BestAndLastCheckpoint):
        return callback.write_last(trainer)
    return _current_last(trainer)


def _current_last(trainer: pl.Trainer) -> str | None:
    path = getattr(trainer.checkpoint_callback, "last_model_path", "")
    return path if path and os.path.isfile(path) else None


def _write_slurm_requeue_checkpoint(trainer: pl.Trainer) -> str | None:
    """Under SLURM with Lightning's auto-requeue, also write ``hpc_ckpt_<n>.ckpt``: a requeued (or preempted
    and restarted) job runs the same command, and Lightning resumes it from the highest such file."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer._accelerator_connector, "cluster_environment", None)  # as Lightning's handler
    if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
        return None
    path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
    trainer.save_checkpoint(path)
    return str(path)


def slurm_job_to_requeue() -> str | None:
    """This SLURM job's id for ``scontrol requeue`` (a job array's task: ``<array id>_<task>``); None, logged,
    without one."""
    from seg_template.slurm import job_id

    job = job_id() or ""
    if not re.fullmatch(r"\d+(_\d+)?", job):
        log.warning("SIGUSR1 in a SLURM job without a job id (SLURM_JOB_ID=%r): not requeued", job)
        return None
    return job


def requeue_slurm_job(job: str) -> bool:
    """``scontrol requeue <job>``; whether SLURM took it (a failure is logged: the job then ends, resumable by
    hand). SLURM then stops this attempt (SIGTERM, SIGKILL after its KillWait): SIGTERM is ignored from here
    on, so the way out (teardown, the sweep's status) completes."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("scontrol requeue %s failed (%s): the job ends here", job, err)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (status %d: %s): the job ends here", job, done.returncode,
                    (done.stderr or done.stdout).strip()[:300])
        return False
    mark_requeued(job)
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return True


def stop_line(signum: int, epoch: int, max_epochs: int | None, step: int, last: str | None,
              requeue: str | None = None, mid_epoch: bool = True, requeued: str | None = None) -> str:
    """The one line a stopped fit logs: the signal, where it stopped and how to resume. ``epoch`` is
    Lightning's ``current_epoch``, shown from 0 over the last epoch's index as the per-epoch lines and the
    progress bar do: ``in epoch 3/14`` during its steps, ``after epoch 2/14`` once it is over (``epoch`` is
    then the number of epochs done)."""
    of = f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else ""
    where = f"in epoch {epoch}{of}" if mid_epoch else f"after epoch {epoch - 1}{of}"
    text = f"Stopped by {signal_name(signum)} {where} at step {step} (exit status {128 + signum})"
    if step == 0 and not mid_epoch:
        text = f"Stopped by {signal_name(signum)} before the first training step (exit status {128 + signum})"
    if last is None:
        why = "nothing trained yet" if step == 0 else "this run keeps none: callbacks.model_checkpoint"
        return f"{text}; no last.ckpt to resume from ({why})"
    text += f"; {os.path.basename(last)} holds that state: resume with {resume_command(last)}"
    if requeued:
        text += f"; requeuing SLURM job {requeued}: it starts again and resumes from {os.path.basename(requeue or '')}"
    elif requeue:
        text += f" (should SLURM requeue the job, it resumes from {os.path.basename(requeue)})"
    return text


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell, in double quotes when that reads better (a Hydra-quoted value)."""
    if shlex.quote(word) == word or any(c in word for c in '"$`\\!'):
        return shlex.quote(word)
    return f'"{word}"'


def resume_command(ckpt_path: str) -> str:
    """``python train.py <this run's overrides> ckpt_path=<ckpt_path>``, quoted for Hydra (:func:`hydra_value`)
    and then for a POSIX shell: pasted as it is, it resumes."""
    from hydra.core.hydra_config import HydraConfig

    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") != "ckpt_path"]
    return " ".join(shell_word(w) for w in ["python", "train.py", *overrides, f"ckpt_path={hydra_value(ckpt_path)}"])
