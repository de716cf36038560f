"""Checkpoints that are never lost, never stale and never unsafe to read.

- :class:`BestAndLastCheckpoint` (``configs/callbacks/model_checkpoint.yaml``): ``best.ckpt`` follows the
  monitored metric as in Lightning; ``last.ckpt`` is rewritten at the end of *every* training epoch (and,
  with ``every_n_train_steps``, every N optimiser steps). Lightning 2.6 rewrites ``last.ckpt`` only when it
  has just written a top-k checkpoint (``ModelCheckpoint.on_validation_end`` calls
  ``_save_last_checkpoint`` only if ``_last_global_step_saved == global_step``), so after a few epochs
  without improvement a resume from ``last.ckpt`` silently went back in time. It also refuses to write
  non-finite weights (:class:`~seg_template.errors.TrainingDiverged`; with ``callbacks.ema`` the average's
  too, which ``state_dict`` then holds: ``callbacks/ema.py``), keeping the previous files, checks
  when fit starts that its folder can take files (a read-only ``checkpoints/`` failed after a whole epoch),
  and tells the CSV logger whether this fit resumes a checkpoint (``seg_template/loggers.py``: only a resumed
  fit drops the rows an earlier attempt logged after that checkpoint).
- :class:`~seg_template.callbacks.checkpoint_io.AtomicCheckpointIO`, installed by that callback: atomic writes,
  ``torch.load(weights_only=True)`` reads (``seg_template/callbacks/checkpoint_io.py``).
- :func:`~seg_template.callbacks.checkpoint_io.check_resume_checkpoint` (re-exported here): before
  ``trainer.fit(ckpt_path=...)``, checks safely that the file is a Lightning training checkpoint that fits the
  model, so that a wrong file fails with a message naming it.

Our checkpoints hold only tensors, numbers, strings and plain containers, which ``weights_only=True``
reads without an allow-list: keep it so (save configs as ``OmegaConf.to_container(cfg, resolve=True)``,
paths as ``str``), or every resume fails with a message naming the offending class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from seg_template.callbacks.checkpoint_io import (
    PARTIAL_SUFFIX,
    RESUME_KEYS,
    AtomicCheckpointIO,
    atomic_save,
    check_folder_writable,
    check_resume_checkpoint,
    logging_step,
    remove_partial_files,
    write_problem,
)
from seg_template.callbacks.ema import averaged_module
from seg_template.callbacks.nan_guard import divergence_advice, nonfinite_tensors
from seg_template.errors import CheckpointError, ConfigError, TrainingDiverged
from seg_template.options import require

# the writer and reader used to live here: callers import them from this module
__all__ = ["PARTIAL_SUFFIX", "RESUME_KEYS", "AtomicCheckpointIO", "BestAndLastCheckpoint", "atomic_save",
           "check_resume_checkpoint", "relocated_state", "remove_partial_files"]

log = logging.getLogger(__name__)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the latest epoch, written atomically, never NaN.

    Arguments are Lightning's, except ``every_n_train_steps``: here it only makes ``last.ckpt`` also be
    rewritten every N optimiser steps (for long epochs); ``best.ckpt`` is judged after validation only, as
    the monitored metric only changes then. ``save_last='link'`` is refused: a link to the best file is
    not the latest state.

    ``best.ckpt`` and ``last.ckpt`` are always rewritten in place, never versioned: Lightning's version counter
    wrote ``last-v1.ckpt`` / ``best-v1.ckpt`` beside the old files whenever its restored paths did not match the
    folder (a run folder moved or copied, then resumed), leaving ``last.ckpt`` stale. A resumed run's paths
    are mapped to this folder's files instead (:func:`relocated_state`), keeping the best score.
    """

    def __init__(self, *args: Any, every_n_train_steps: int = 0, **kwargs: Any) -> None:
        if kwargs.get("save_last") == "link":
            raise ConfigError("callbacks.model_checkpoint.save_last=link would make last.ckpt a link to the best "
                              "checkpoint, not the latest state; use save_last=true")
        if kwargs.pop("enable_version_counter", False):
            raise ConfigError("callbacks.model_checkpoint.enable_version_counter=true would write best-v1.ckpt / "
                              "last-v1.ckpt beside the older files instead of replacing them; leave it out")
        top_k, filename = kwargs.get("save_top_k", 1), kwargs.get("filename")
        if isinstance(top_k, int) and top_k not in (0, 1) and filename is not None and "{" not in str(filename):
            raise ConfigError(f"callbacks.model_checkpoint.save_top_k={top_k} keeps several checkpoints, but "
                              f"filename={filename!r} gives them all one name; use e.g. "
                              "callbacks.model_checkpoint.filename='best-{epoch:03d}'")
        require("callbacks.model_checkpoint.every_n_train_steps", every_n_train_steps)  # seg_template/options.py
        try:
            super().__init__(*args, enable_version_counter=False, **kwargs)
        except (MisconfigurationException, TypeError, ValueError) as err:  # Lightning's checks: mode=maximum...
            raise ConfigError(f"callbacks.model_checkpoint: {err} (given: {kwargs})") from err
        self.last_every_n_train_steps = int(every_n_train_steps)
        self._last_written_at_step: int | None = None
        self._resumed_fit = False  # whether this fit restored a checkpoint (on_load_checkpoint)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._resumed_fit = False  # setup precedes the restore of a checkpoint
        # Lightning's default writer (setup runs before a resume reads its checkpoint, so reads go through ours
        # too); a writer the user configured (async, cloud) is left alone.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and self.dirpath and _is_local_file_protocol(self.dirpath):
            if stage == "fit" and self._writes_now(trainer):  # before a whole epoch is spent
                check_folder_writable(self.dirpath)
            remove_partial_files(self.dirpath)

    # ------------------------------------------------------------ the metrics history of a resumed fit
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """A fit restored from ``checkpoint`` (``ckpt_path=``, SLURM's ``hpc_ckpt``): the CSV logger drops the
        rows an earlier attempt logged after it, before this fit logs again (``seg_template/loggers.py``)."""
        if trainer.state.fn != TrainerFn.FITTING:  # test / validate of a checkpoint: the logger only appends
            return
        self._resumed_fit = True
        for logger in trainer.loggers:
            if trainer.is_global_zero and hasattr(logger, "continue_fit_from"):
                logger.continue_fit_from(logging_step(checkpoint))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.strategy.restore_checkpoint_after_setup:
            self._refuse_others_checkpoints(trainer.ckpt_path)
        if self._resumed_fit:  # the usual order: restored first (a strategy restoring later calls the above later)
            return
        for logger in trainer.loggers:
            if trainer.is_global_zero and hasattr(logger, "append_only"):
                logger.append_only()  # a fit from scratch drops nothing, whatever step it logs first

    def _refuse_others_checkpoints(self, resumed: Any) -> None:
        """A ``ConfigError`` when the checkpoint folder already holds checkpoints and this fit does not resume
        one of that folder (or its run folder's ``hpc_ckpt``): it would replace another run's ``best.ckpt`` /
        ``last.ckpt`` (``callbacks.model_checkpoint.dirpath=<another run>/checkpoints``)."""
        if not self.dirpath or not _is_local_file_protocol(self.dirpath) or not Path(self.dirpath).is_dir():
            return
        folder = Path(os.path.realpath(self.dirpath))
        held = sorted(p.name for p in folder.glob("*.ckpt"))
        if not held or (resumed and Path(os.path.realpath(str(resumed))).parent in (folder, folder.parent)):
            return
        source = f"from {resumed}" if resumed else "from scratch"
        raise ConfigError(f"the checkpoint folder {self.dirpath} already holds {', '.join(held)} of another run; this "
                          f"fit ({source}) would replace them. Keep callbacks.model_checkpoint.dirpath at its default "
                          f"(the run folder's checkpoints/), or continue that run: ckpt_path="
                          f"{folder / ('last.ckpt' if 'last.ckpt' in held else held[-1])}")

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: Any) -> None:  # noqa: N802 - Lightning's private
        """Lightning warns "Checkpoint directory ... exists and is not empty" at every fit. A run folder belongs to
        one run (seg_template/run_folder.py), so this callback's own files there (``best.ckpt``, ``last.ckpt``)
        mean the run is resuming in place: no warning then; any other file still gets it."""
        folder = Path(str(dirpath))
        ours = {f"{self.filename or 'best'}{self.FILE_EXTENSION}", f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"}
        if _is_local_file_protocol(dirpath) and folder.is_dir() and all(
                p.name in ours or p.name.startswith(".") for p in folder.iterdir()):
            return
        super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's restore of the best score and paths, with the paths mapped to this folder."""
        if self.dirpath is None or not _is_local_file_protocol(self.dirpath):
            super().load_state_dict(state_dict)
            return
        state, notes = relocated_state(state_dict, str(self.dirpath))
        if notes and getattr(rank_zero_only, "rank", 0) == 0:
            log.warning("Resuming: %s", "; ".join(notes))
        super().load_state_dict(state)

    # ------------------------------------------------------------ when last.ckpt is written
    def _writes_now(self, trainer: pl.Trainer) -> bool:
        return not (trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n, step = self.last_every_n_train_steps, trainer.global_step
        # with gradient accumulation several batches end at the same step: write once
        if n and step % n == 0 and step != self._last_written_at_step and self._writes_now(trainer):
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # best.ckpt when validation is off (Lightning's rule)
        if self._writes_now(trainer):  # validation, if any, has run: the state is the finished epoch's
            self._write_last(trainer)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """Lightning calls this only right after writing a top-k checkpoint; ``last.ckpt`` follows its own
        schedule here (:meth:`_write_last`), so these calls do nothing."""

    def _write_last(self, trainer: pl.Trainer) -> None:
        # Lightning skips the top-k check at a step where it already saved anything: writing last.ckpt must
        # not hide the best checkpoint of the validation that may follow at the same step.
        step_saved = self._last_global_step_saved
        super()._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = step_saved
        self._last_written_at_step = trainer.global_step

    def write_last(self, trainer: pl.Trainer) -> str | None:
        """Write ``last.ckpt`` now, for the current state (mid-epoch when a signal stops the run:
        ``callbacks/stop_on_signal.py``); its path, or None when this run writes none (``save_last=false``,
        ``fast_dev_run``, not fitting)."""
        if not self._writes_now(trainer):
            return None
        self._write_last(trainer)
        return self.last_model_path or None

    # ------------------------------------------------------------ every write
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        bad = nonfinite_tensors(trainer.lightning_module)
        average = averaged_module(trainer)  # callbacks.ema: the weights state_dict will hold
        if average is not None:
            bad += [f"{name} (average)" for name in nonfinite_tensors(average)]
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingDiverged(
                f"At epoch {trainer.current_epoch}, step {trainer.global_step} the weights "
                f"hold NaN or inf ({shown or 'on another process'}), so {filepath} was not written; the "
                f"checkpoints already in {self.dirpath} are kept. Try: {divergence_advice(trainer)}.")
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as err:  # a full disk or quota, a read-only or vanished folder: the user's to fix
            raise CheckpointError(f"{filepath} could not be written: the checkpoint folder "
                                  f"{write_problem(err, self.dirpath)}. The checkpoints already there are kept "
                                  "(writes are atomic).") from err

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        # Lightning raises a MisconfigurationException, listing every per-class IoU, once validation has run
        if (self.save_top_k and self.monitor is not None and self.monitor not in monitor_candidates
                and trainer.fit_loop.epoch_loop.val_loop._has_run):
            logged = sorted(k for k in monitor_candidates if "/IoU/" not in k and k not in ("epoch", "step"))
            raise ConfigError(f"callbacks.model_checkpoint.monitor={self.monitor!r} is not a logged metric; "
                              f"logged: {', '.join(logged)} and the per-class <stage>/IoU/<name>. Pick one, "
                              "e.g. callbacks.model_checkpoint.monitor=val/mIoU (mode=max)")
        super()._save_topk_checkpoint(trainer, monitor_candidates)


def relocated_state(state: Mapping[str, Any], dirpath: str) -> tuple[dict[str, Any], list[str]]:
    """``ModelCheckpoint``'s saved ``state`` with its paths mapped to the files of the same name in ``dirpath``,
    and what was dropped.

    A run folder moved or copied since the checkpoint was written: its best/last/k-th paths and ``best_k_models``
    point to the old folder. Lightning then restores only ``best_model_path`` (the old folder's file, which
    ``train.py``'s test would use), forgets the best score (the next validation replaced ``best.ckpt`` even when
    worse) and versions the new files (``last-v1.ckpt``). Here each path becomes ``dirpath/<its name>`` when that
    file exists, else it is dropped; the score is kept while the best file is here, and reset when it is not, so
    that the next validation writes a new ``best.ckpt``.
    """
    here = Path(dirpath)

    def local(path: Any) -> str:
        if not path:
            return ""
        mapped = here / Path(str(path)).name
        return str(mapped) if mapped.is_file() else ""

    out = {**state, "dirpath": dirpath}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = local(out[key])
    best_k = {local(path): score for path, score in (state.get("best_k_models") or {}).items()}
    lost = [Path(str(p)).name for p in (state.get("best_k_models") or {}) if not local(p)]
    best_k.pop("", None)
    out["best_k_models"] = best_k
    notes = []
    if lost:
        notes.append(f"{', '.join(lost)} of the resumed run {'is' if len(lost) == 1 else 'are'} not in {dirpath}")
    if not best_k:  # no best checkpoint here: the next validation writes one, whatever its score
        out.update(best_model_score=None, best_model_path="", kth_best_model_path="")
        out.pop("kth_value", None)
        if lost:
            notes.append("the next validation writes a new best checkpoint")
    return out, notes
