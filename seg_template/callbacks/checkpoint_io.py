"""How checkpoint files are written and read: atomically, without running code, with a named reason when a
folder cannot take them.

- :func:`atomic_save` / :class:`AtomicCheckpointIO`: each file is written to a temporary file in its own folder,
  flushed, fsynced and renamed over the old one, so a kill or a full disk leaves the previous checkpoint
  intact. (Lightning's own writer goes through an fsspec transaction whose temporary file lives in the system
  temp folder: across filesystems its final "rename" is a copy, which a kill can truncate.) Reads go through
  the one reader, ``models.weights.read_weights_file`` (``torch.load(weights_only=True)`` whatever the caller
  asks for), which hands Lightning the object the resume check read: a resumed checkpoint is read once.
- :func:`check_folder_writable` / :func:`write_problem`: a folder that cannot take checkpoints is named with
  the reason its errno gives (not writable, full, gone), when fit starts rather than after a whole epoch.
- :func:`checkpoint_step`: the training step a checkpoint holds, read without loading its tensors.
- :func:`check_resume_checkpoint`: before ``trainer.fit(ckpt_path=...)``, checks safely that the file is a
  Lightning training checkpoint that fits the model, so that a wrong file fails with a message naming it.
- :func:`check_callback_states`: the callbacks' saved states (the best score and paths of ``ModelCheckpoint``,
  ``EarlyStopping``'s counters and best score, ``NaNGuard``'s streak) have the types and finite values their
  ``load_state_dict`` needs, else a ``CheckpointError`` names the file and the key. Both the resume check and
  the reader Lightning restores through (:class:`AtomicCheckpointIO`, also for SLURM's ``hpc_ckpt``) call it,
  so a bad state is refused before any callback's ``on_load_checkpoint`` touches the run folder (the CSV
  logger dropping rows) and before a NaN best score silently stops ``best.ckpt`` from ever being replaced.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol

from seg_template.callbacks.ema import RAW_KEY, STATE_KEYS, EMAWeights
from seg_template.callbacks.nan_guard import NaNGuard
from seg_template.errors import CheckpointError
from seg_template.models.finite import odd_kind
from seg_template.models.weights import exact_fit, let_go, peek_checkpoint, read_weights_file, resolve_path
from seg_template.resume import check_optimizer

log = logging.getLogger("seg_template.callbacks.checkpoint")

PARTIAL_SUFFIX = ".partial"  # temporary files: ".<name>.<pid>.<random>.partial" beside the target


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or the complete new one.

    Writes ``.<name>.<pid>.<random>.partial`` in the same folder (so the final rename never crosses a
    filesystem), fsyncs it, renames it over ``path`` and fsyncs the folder; on any error the partial file
    is removed and the error re-raised. A ``path`` that is a symbolic link is replaced by the file, never
    written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
    try:
        with open(partial, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file behind
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open folders, and renames there are final."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on folders; the data itself is synced
        pass
    finally:
        os.close(fd)


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete ``*.partial`` files left in ``folder`` by a save that was killed; returns what was removed."""
    removed = []
    for partial in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(OSError):
            partial.unlink()
            removed.append(partial)
    if removed:
        log.info("Removed %d partial file(s) of an interrupted checkpoint save in %s", len(removed), folder)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader/writer, with atomic local writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's transaction
            return
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at ``path`` on the CPU (as Lightning's default ``map_location``), never unpickling
        code: ``weights_only`` is always True. Its callbacks' states are checked (:func:`check_callback_states`)
        before Lightning hands them to any callback."""
        if not _is_local_file_protocol(path):
            checkpoint = super().load_checkpoint(path, weights_only=True)
            source = str(path)
        else:
            checkpoint = read_weights_file(path, "ckpt_path")  # takes what the resume check kept: one read
            source = str(resolve_path(path))
        let_go()  # a requeued SLURM job restores hpc_ckpt instead of the checked ckpt_path: drop that one
        if isinstance(checkpoint, Mapping):
            check_callback_states(checkpoint, source)
        return checkpoint


# ---------------------------------------------------------------- folders that cannot take a checkpoint
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_problem(err: OSError, folder: str | Path) -> str:
    """Why ``folder`` could not take a file, and what to do, from ``err``'s errno."""
    reason = err.strerror or str(err)
    elsewhere = "or write the run elsewhere (paths.log_dir=<folder>, or a new run folder)"
    if err.errno in _NOT_WRITABLE:
        return f"{folder} is not writable ({reason}): make it writable (chmod u+w {folder}) {elsewhere}"
    if err.errno in _FULL:
        return f"{folder} is full ({reason}): free some space there {elsewhere}"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{folder} is gone or not a folder ({reason}): {elsewhere.removeprefix('or ')}"
    return f"{folder} cannot be written ({reason}): {elsewhere.removeprefix('or ')}"


def check_folder_writable(folder: str | Path, what: str = "checkpoint folder") -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it; a ``CheckpointError`` naming
    the folder and the reason otherwise (a read-only ``checkpoints/`` failed only after the first epoch)."""
    try:
        _probe(folder)
    except OSError as err:
        raise CheckpointError(f"The {what} {write_problem(err, folder)}; nothing was trained yet.") from None


def _probe(folder: str | Path) -> None:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_", suffix=PARTIAL_SUFFIX):
        pass


# ---------------------------------------------------------------- what a checkpoint holds
def checkpoint_step(path: str | Path) -> int | None:
    """The ``global_step`` of the Lightning checkpoint at ``path``; None when it cannot be read (truncated,
    not a checkpoint). Its tensors are not read (``models.weights.peek_checkpoint``)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return int(peek_checkpoint(path)["global_step"])  # type: ignore[index]
    return None


def logging_step(checkpoint: dict[str, Any]) -> int:
    """The step Lightning's loggers continue from when ``checkpoint`` is resumed: its count of batches that
    stepped (the logged ``step`` column), which is ``global_step`` unless several optimisers step per batch.

    A checkpoint written in ``on_train_batch_end`` (a signal's stop, ``every_n_train_steps``) holds the count
    from before that step's increment, and its batch as processed but not completed; Lightning's restored loop
    adds the one step, so the resumed fit logs from the next step, and the saved step's own row stays."""
    try:
        fit_loop = checkpoint["loops"]["fit_loop"]
        stepped = int(fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return int(checkpoint.get("global_step", 0))
    with contextlib.suppress(KeyError, TypeError, ValueError):
        total = fit_loop["epoch_loop.batch_progress"]["total"]
        stepped += int(int(total["completed"]) == int(total["processed"]) - 1)
    return stepped


#: what a checkpoint written by ``Trainer.fit`` holds and resuming needs
RESUME_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states")


def check_resume_checkpoint(path: str | Path, module: torch.nn.Module | None = None) -> dict[str, int]:
    """Check, without running code from the file, that ``path`` can resume training (of ``module``).

    Returns ``{"epoch": ..., "global_step": ...}`` of the checkpoint. Raises ``MissingFileError`` or
    ``CheckpointError`` naming the file: unreadable or unsafe, not a Lightning training checkpoint (a
    weights-only file: use ``model.pretrained`` instead), tensors that do not fit ``module`` (another
    model or class count: both shapes and the training run's options are given), or a state written by
    another optimiser class than ``module``'s (``seg_template.resume.check_optimizer``).
    """
    source = str(resolve_path(path))
    ckpt = read_weights_file(path, "ckpt_path", keep=True)  # Lightning's restore then takes it: one read
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"ckpt_path: '{source}' holds a {type(ckpt).__name__}, not a Lightning checkpoint")
    if ckpt.get("recipe") is not None:  # resume never builds from it, but a crafted recipe = a crafted file
        from seg_template.file_config import check_recipe

        check_recipe(ckpt["recipe"], source, "ckpt_path")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"ckpt_path: '{source}' is not a Lightning training checkpoint (it lacks {', '.join(missing)}; "
            f"keys: {', '.join(map(str, list(ckpt)[:8]))}). Resuming needs a .ckpt written by training, e.g. "
            f"<run>/checkpoints/last.ckpt; to start a new run from these weights, pass model.pretrained={path} "
            f"instead of ckpt_path.")
    # callbacks.ema: state_dict holds the average, current_model_state the raw weights training continues from
    weights = {key: ckpt[key] for key in ("state_dict", RAW_KEY) if key in ckpt}
    for key, state in weights.items():
        if not isinstance(state, Mapping):
            raise CheckpointError(f"ckpt_path: '{source}' holds a {type(state).__name__} under {key!r}, not the "
                                  "tensors of a model: the file was damaged or edited; resume from another checkpoint")
    if module is not None:
        recipe = getattr(module, "recipe", None)  # this run's (train.py sets it before this check)
        configured_model = recipe.get("model") if isinstance(recipe, Mapping) else None
        for state in weights.values():
            exact_fit({str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}, module, source,
                      "ckpt_path", ckpt, configured_model)
        # another optimiser class than the one that wrote the state: refused before any folder fills up
        check_optimizer(ckpt, getattr(module, "optimizer_factory", None), source)
    from seg_template.models.finite import refuse_nonfinite  # a diverged state would only ever compute NaN

    refuse_nonfinite({**weights, "optimizer_states": ckpt["optimizer_states"]}, source, "ckpt_path")
    if hasattr(module, "check_resumed_groups") and getattr(module, "optimizer_factory", None) is not None:
        module.check_resumed_groups(ckpt, source)  # another optimizer.no_weight_decay
    check_callback_states(ckpt, source)  # a NaN best score, a NaN streak: before the run folder changes
    return {"epoch": int(ckpt["epoch"]), "global_step": int(ckpt["global_step"])}


# ---------------------------------------------------------------- the callbacks' saved states
#: the monitoring direction in a callback's state key (``ModelCheckpoint{'monitor': 'val/mIoU', 'mode': 'max', ...}``)
_MODE = re.compile(r"'mode': '(min|max)'")
#: ``(key, its value, what is wrong with it)`` of the first bad entry of one callback's state, or None; called
#: with the state and the callback's monitoring mode (None when its state key has none)
StateCheck = Callable[[Mapping[str, Any], str | None], tuple[str, Any, str] | None]


def check_callback_states(checkpoint: Mapping[str, Any], source: str, option: str = "ckpt_path") -> None:
    """Refuse ``checkpoint`` (read from ``source``) when a callback state it holds cannot be restored as saved.

    Lightning hands each state under ``"callbacks"`` to the callback of the same state key, whose
    ``load_state_dict`` trusts it: a NaN ``streak`` crashed ``NaNGuard`` with a traceback (after the CSV logger
    had already rewritten ``metrics.csv``), and a NaN or unbeatable best score made ``ModelCheckpoint`` keep
    the old ``best.ckpt`` for ever while the log called later epochs best. Checked: ``ModelCheckpoint`` and its
    subclasses (any state with a ``best_model_score``: the scores, one real number each, not NaN and not the
    infinity no later score can beat, the paths strings), ``EarlyStopping`` (its counters whole numbers >= 0,
    its best score as above, its stopping reason one it knows), ``NaNGuard`` (:meth:`NaNGuard.state_problem`)
    and the weight averaging of ``callbacks.ema`` (:meth:`EMAWeights.state_problem`).
    The infinity a callback starts from (``-inf`` when maximising) is the worst score, and fine. States of
    other callbacks are theirs to read. Raises a ``CheckpointError`` naming ``option``, the file, the key and
    the way out.
    """
    states = checkpoint.get("callbacks")
    if states is None:
        return
    if not isinstance(states, Mapping):
        raise _state_error(option, source, "callbacks", states, "not a mapping of callback states")
    for state_key, state in states.items():
        name = str(state_key).split("{", 1)[0]
        if not isinstance(state, Mapping):
            raise _state_error(option, source, f"callbacks.{name}", state, "not a mapping of saved values")
        found = _MODE.search(str(state_key))
        mode = found.group(1) if found else None
        check = _model_checkpoint_problem if "best_model_score" in state else _STATE_CHECKS.get(name)
        problem = check(state, mode) if check is not None else None
        if problem is not None:
            key, value, why = problem
            raise _state_error(option, source, f"callbacks.{name}.{key}", value, why)


def _shown(value: Any) -> str:
    if isinstance(value, torch.Tensor) and odd_kind(value) is None and value.numel() == 1:
        return f"tensor({value.item()})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _state_error(option: str, source: str, key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(
        f"{option}: '{source}' cannot be resumed: its {key} is {_shown(value)} ({why}); no training writes that, "
        f"so the file was damaged or edited. Resume from another checkpoint of the run, or start a new run from "
        f"its weights: model.pretrained={source} instead of ckpt_path.")


def _number(value: Any) -> float | None:
    """``value`` as a float when it is one real number (a Python int / float, or a one-element real tensor)."""
    if isinstance(value, torch.Tensor):
        if odd_kind(value) is not None or value.numel() != 1 or value.dtype == torch.bool:
            return None
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _score_problem(value: Any, mode: str | None, tensor: bool = False) -> str | None:
    """What is wrong with a saved score of a callback monitoring in ``mode`` (``"min"`` / ``"max"``), or None.
    ``tensor``: the callback needs a tensor (``EarlyStopping`` moves it to a device)."""
    number = _number(value)
    if number is None or (tensor and not isinstance(value, torch.Tensor)):
        return f"not one real number{' (a tensor)' if tensor else ''}"
    if math.isnan(number):
        return "NaN: no score compares better than NaN, so nothing later would ever count as an improvement"
    unbeatable = {"max": math.inf, "min": -math.inf}.get(mode or "")
    if math.isinf(number) and (unbeatable is None or number == unbeatable):
        return (f"{number}: no later score can beat it{f' (mode={mode})' if mode else ''}, so nothing later would "
                "ever count as an improvement")
    return None


def _model_checkpoint_problem(state: Mapping[str, Any], mode: str | None) -> tuple[str, Any, str] | None:
    """The first bad entry of a ``ModelCheckpoint`` state (scores, paths), or None."""
    if state.get("monitor") is not None and not isinstance(state["monitor"], str):
        return "monitor", state["monitor"], "not a metric name"
    for key in ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath"):
        if state.get(key) is not None and not isinstance(state[key], str):
            return key, state[key], "not a path"
    for key in ("best_model_score", "current_score", "kth_value"):
        if state.get(key) is not None and (why := _score_problem(state[key], mode)) is not None:
            return key, state[key], why
    best_k = state.get("best_k_models")
    if best_k is None:
        return None
    if not isinstance(best_k, Mapping):
        return "best_k_models", best_k, "not a mapping of checkpoint paths to scores"
    for path, score in best_k.items():
        if not isinstance(path, str):
            return "best_k_models", path, "a key that is not a path"
        if (why := _score_problem(score, mode)) is not None:
            return f"best_k_models['{path}']", score, why
    return None


def _early_stopping_problem(state: Mapping[str, Any], mode: str | None) -> tuple[str, Any, str] | None:
    """The first bad entry of an ``EarlyStopping`` state (its counters, best score, stopping reason), or None."""
    for key in ("wait_count", "stopped_epoch", "patience"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return key, value, "not a whole number >= 0"
    if "best_score" in state and (why := _score_problem(state["best_score"], mode, tensor=True)) is not None:
        return "best_score", state["best_score"], why
    if "stopping_reason" in state:
        from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

        known = sorted(reason.value for reason in EarlyStoppingReason)
        reason = state["stopping_reason"]
        if isinstance(reason, bool) or not isinstance(reason, int) or reason not in known:
            return "stopping_reason", reason, f"not one of {known}"
    return None


def _nan_guard_problem(state: Mapping[str, Any], mode: str | None) -> tuple[str, Any, str] | None:
    """The first bad entry of a ``NaNGuard`` state (:meth:`NaNGuard.state_problem`), or None."""
    problem = NaNGuard.state_problem(state)
    return None if problem is None else (problem[0], state.get(problem[0]), problem[1])


def _ema_problem(state: Mapping[str, Any], mode: str | None) -> tuple[str, Any, str] | None:
    """The first bad entry of a weight-averaging state (:meth:`EMAWeights.state_problem`), or None."""
    problem = EMAWeights.state_problem(state)
    return None if problem is None else (problem[0], state.get(problem[0]), problem[1])


#: the callbacks (by class name) whose states are checked besides ``ModelCheckpoint``'s
_STATE_CHECKS: dict[str, StateCheck] = {"EarlyStopping": _early_stopping_problem, "NaNGuard": _nan_guard_problem,
                                        **dict.fromkeys(STATE_KEYS, _ema_problem)}
