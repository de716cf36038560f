"""How checkpoint files are written and read: atomically, without running code, with a named reason when a
folder cannot take them.

- :func:`atomic_save` / :class:`AtomicCheckpointIO`: each file is written to a temporary file in its own folder,
  flushed, fsynced and renamed over the old one, so a kill or a full disk leaves the previous checkpoint
  intact. (Lightning's own writer goes through an fsspec transaction whose temporary file lives in the system
  temp folder: across filesystems its final "rename" is a copy, which a kill can truncate.) Reads go through
  ``torch.load(weights_only=True)`` only, whatever the caller asks for.
- :func:`check_folder_writable` / :func:`write_problem`: a folder that cannot take checkpoints is named with
  the reason its errno gives (not writable, full, gone), when fit starts rather than after a whole epoch.
- :func:`checkpoint_step`: the training step a checkpoint holds, read without loading its tensors.
- :func:`check_resume_checkpoint`: before ``trainer.fit(ckpt_path=...)``, checks safely that the file is a
  Lightning training checkpoint that fits the model, so that a wrong file fails with a message naming it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol

from seg_template.errors import CheckpointError
from seg_template.models.weights import compare_state, mismatch_message, read_weights_file, resolve_path
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
        code: ``weights_only`` is always True."""
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, weights_only=True)
        return read_weights_file(path, "ckpt_path")


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
    not a checkpoint). Tensors are memory-mapped, not read (``weights_only=True``: no code runs)."""
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - any unreadable file: the caller says what that means
        return None


def logging_step(checkpoint: dict[str, Any]) -> int:
    """The step Lightning's loggers continue from when ``checkpoint`` is resumed: its count of batches that
    stepped (the logged ``step`` column), which is ``global_step`` unless several optimisers step per batch."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return int(checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    return int(checkpoint.get("global_step", 0))


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
    ckpt = read_weights_file(path, "ckpt_path")
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
    if module is not None:
        state = {str(k): v for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
        report, _ = compare_state(state, module.state_dict(), source)
        if report.missing or report.unexpected or report.mismatched:
            hparams = ckpt.get("hyper_parameters")
            classes = hparams.get("num_classes") if isinstance(hparams, Mapping) else None
            raise CheckpointError(mismatch_message(report, "ckpt_path", f"the configured {type(module).__name__}",
                                                   classes))
        # another optimiser class than the one that wrote the state: refused before any folder fills up
        check_optimizer(ckpt, getattr(module, "optimizer_factory", None), source)
    from seg_template.models.finite import refuse_nonfinite  # a diverged state would only ever compute NaN

    refuse_nonfinite({"state_dict": ckpt["state_dict"], "optimizer_states": ckpt["optimizer_states"]}, source,
                     "ckpt_path")
    return {"epoch": int(ckpt["epoch"]), "global_step": int(ckpt["global_step"])}
