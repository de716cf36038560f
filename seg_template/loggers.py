"""Our CSV logger: Lightning's, except that an existing ``metrics.csv`` is continued, never wiped.

Lightning's CSV logger removes ``metrics.csv`` when its folder is not empty. Runs that continue in a run
folder (resume in place: ``ckpt_path=<run>/checkpoints/last.ckpt``, with or without ``train=false``) must
keep its history. The rule:

- **Every run appends.** Rows already in ``metrics.csv`` stay; a new column rewrites the file atomically.
- **Only a resumed fit drops rows, and only training / validation rows logged after its checkpoint.** A fit
  restored from a checkpoint (``ckpt_path=``, or SLURM's ``hpc_ckpt_<n>.ckpt``) logs again from the
  checkpoint's logging step ``S`` (Lightning's step counter, which the checkpoint holds; rows of the steps it
  trained are at ``0 .. S - 1``). Training and validation rows at steps ``>= S`` were logged by an earlier
  attempt after that checkpoint (``kill -9`` mid-epoch, a signal during a save): they are dropped (the file is
  rewritten atomically) before the resumed fit logs, and the log says how many; so each step and epoch is
  there once. The epoch-level rows Lightning logs right after the epoch-end checkpoint are at ``S - 1`` and
  stay. Test rows (every value a ``test/*`` one) stay wherever they are: they are the result of a test that
  ran to its end, such as a finished run's test at step ``S`` itself, which a fit resumed with more epochs
  continues from (that fit adds its own test row later). Whoever restores the checkpoint says so:
  :meth:`CSVLogger.continue_fit_from` (``BestAndLastCheckpoint`` calls it when a fit starts, with the restored
  step) or :meth:`CSVLogger.append_only` (a fit from scratch). A test-only run (``train=false``) and eval
  never call either, and log from step 0: they append.
- A logger nobody told (a Trainer without our checkpoint callback) keeps the earlier rule: a first row at a
  step ``T > 0`` is taken for a resumed fit's, and training / validation rows at steps ``>= T`` are dropped.
- ``hparams.yaml`` of the run that made the folder is kept: a run continuing there writes its own hyperparameters
  to ``hparams_resumed_<date>_<time>.yaml`` (as Hydra's record goes to ``.hydra/resumed_<date>_<time>/``).
- A ``metrics.csv`` that cannot be continued is a ``ConfigError`` naming it when the logger opens it, before
  anything is logged: a folder or a link (appending would write into what it points at), not UTF-8 text, or a
  CSV without a ``step`` column (not written by a run). An empty file is started afresh.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from seg_template.errors import ConfigError

log = logging.getLogger(__name__)


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a CSV file (UTF-8; a byte-order mark, as spreadsheets write, is dropped)."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_rows_atomically(path: str | Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` by a CSV of ``rows``: written beside it, fsynced, renamed over it (a kill leaves
    either the old file or the new one)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


#: the columns every row has, whatever was logged in it
_INDEX_COLUMNS = ("epoch", "step")


def is_test_row(row: dict[str, str]) -> bool:
    """Whether ``row`` holds test results only: each value it has, besides its epoch and step, is a
    ``test/*`` one (the row a test logs when it has run to its end)."""
    logged = [key for key, value in row.items() if key not in _INDEX_COLUMNS and value not in ("", None)]
    return bool(logged) and all(str(key).startswith("test/") for key in logged)


def drop_rows_from_step(path: str | Path, step: int) -> int:
    """Remove the training / validation rows of the CSV file ``path`` logged at ``step`` or later
    (atomically); returns how many. Rows without a readable step, and test rows (:func:`is_test_row`: the
    result of a finished test, e.g. the test after the fit a resume continues), are kept."""
    fieldnames, rows = read_rows(path)
    kept = [row for row in rows if (s := _step(row)) is None or s < step or is_test_row(row)]
    if len(kept) < len(rows):
        write_rows_atomically(path, fieldnames, kept)
    return len(rows) - len(kept)


def continuable_header(path: str | Path) -> list[str] | None:
    """The columns of the existing ``metrics.csv`` at ``path`` (None when there is none, or it is empty and
    was removed); a ``ConfigError`` naming it when a run cannot append to it (see the module docstring)."""
    path = Path(path)
    way_out = ("move it out of the run folder, or resume into a new folder (resume_in_place=false / another "
               "hydra.run.dir=)")
    if path.is_symlink():
        raise ConfigError(f"{path} is a link to {os.path.realpath(path)}: this run would append its metrics "
                          f"there; {way_out}")
    if not os.path.lexists(path):
        return None
    if not path.is_file():
        raise ConfigError(f"{path} is not a file (a folder?), so this run cannot write its metrics there; {way_out}")
    if path.stat().st_size == 0:  # nothing to keep, and Lightning would append rows without a header
        path.unlink()
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            header = next(csv.reader(file), [])
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}), "
                          f"so it is not a metrics.csv a run wrote; {way_out}") from None
    except (csv.Error, OSError) as err:
        raise ConfigError(f"{path} cannot be read as CSV ({err}); {way_out}") from None
    if "step" not in header:
        shown = ", ".join(repr(h) for h in header[:4]) + (" ..." if len(header) > 4 else "")
        raise ConfigError(f"{path} has no 'step' column (its header: {shown}), so it is not a metrics.csv a run "
                          f"wrote; {way_out}")
    return header


class _ContinuingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv``, starting from its header's columns; drops rows only when told
    that this is a resumed fit (:meth:`continue_fit_from`), or by the first-row rule when never told."""

    def __init__(self, log_dir: str) -> None:
        self._settled = False  # whether someone said if this run resumes a fit (or the first row decided)
        self.hparams_file = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        if os.path.lexists(self.hparams_file):  # the record of the run that made this folder: kept
            stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            self.hparams_file = os.path.join(log_dir, f"hparams_resumed_{stamp}.yaml")
        super().__init__(log_dir=log_dir)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(self.hparams_file, self.hparams)

    def _check_log_dir_exists(self) -> None:
        header = continuable_header(self.metrics_file_path)
        if header is not None:
            self.metrics_keys = sorted(header)

    def continue_fit_from(self, step: int) -> int:
        """This run resumes a fit whose checkpoint logged steps ``< step``: drop the training / validation rows
        at ``>= step`` (test rows stay: :func:`drop_rows_from_step`)."""
        self._settled = True
        if not os.path.isfile(self.metrics_file_path):
            return 0
        dropped = drop_rows_from_step(self.metrics_file_path, step)
        if dropped:
            log.info("metrics.csv: dropped %d row(s) at step >= %d, logged after the checkpoint this run "
                     "continues from (each step and epoch stays once)", dropped, step)
        return dropped

    def append_only(self) -> None:
        self._settled = True

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._settled and step is not None:
            self._settled = True
            if step > 0:  # nobody told: a first row after step 0 can only be a fit restored from a checkpoint
                self.continue_fit_from(step)
        super().log_metrics(metrics_dict, step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the file in place when a new column appears: a kill then would lose it
        _, rows = read_rows(self.metrics_file_path)
        write_rows_atomically(self.metrics_file_path, fieldnames, rows)


class CSVLogger(LightningCSVLogger):
    """``metrics.csv`` (one row per logging step / epoch) and ``hparams.yaml`` in ``save_dir/name/version``;
    an existing ``metrics.csv`` is continued (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def continue_fit_from(self, step: int) -> int:
        """A fit restored from a checkpoint whose logging step is ``step``: the training / validation rows an
        earlier attempt logged at ``>= step`` are dropped now (test rows stay); returns how many. Call on rank 0
        only."""
        writer = self.experiment
        return writer.continue_fit_from(step) if isinstance(writer, _ContinuingWriter) else 0

    def append_only(self) -> None:
        """A fit from scratch: whatever its first step, nothing is dropped. Call on rank 0 only."""
        writer = self.experiment
        if isinstance(writer, _ContinuingWriter):
            writer.append_only()
