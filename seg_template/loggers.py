"""Our CSV logger: Lightning's, except that an existing ``metrics.csv`` is continued, each step once.

Lightning's CSV logger removes ``metrics.csv`` when its folder is not empty. Runs resumed in place
(``ckpt_path=<run>/checkpoints/last.ckpt``) log into their old folder, and must keep their history — but
only the history up to the checkpoint they resume from: an attempt that was stopped (SIGINT during a save,
``kill -9`` mid-epoch) logged rows after its last complete checkpoint, which the resumed run logs again.

The rule: the first row a run logs is at step ``T`` (Lightning's logging step continues from the
checkpoint: the step after the last one the checkpoint holds). Rows of ``metrics.csv`` at steps ``>= T``
were logged after that checkpoint by an earlier attempt; they are dropped (the file is rewritten
atomically) before the new rows are appended, and the log says how many. Rows at steps ``< T`` stay: that
includes the epoch-level rows Lightning logs right after the epoch-end checkpoint (same step as the
epoch's last batch), which a resumed run does not log again. A run that does not resume but writes into a
folder with a ``metrics.csv`` (``hydra.run.dir=<old run>``) starts at step 0 and so replaces it, as
Lightning's logger does.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a CSV file."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_rows_atomically(path: str | Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` by a CSV of ``rows``: written beside it, fsynced, renamed over it (a kill leaves
    either the old file or the new one)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", newline="") as file:
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


def drop_rows_from_step(path: str | Path, step: int) -> int:
    """Remove the rows of the CSV file ``path`` logged at ``step`` or later (atomically); returns how many.
    Rows without a readable step are kept."""
    fieldnames, rows = read_rows(path)
    kept = [row for row in rows if (s := _step(row)) is None or s < step]
    if len(kept) < len(rows):
        write_rows_atomically(path, fieldnames, kept)
    return len(rows) - len(kept)


class _ContinuingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv``, starting from its header's columns, after dropping the rows
    at or after the first step this run logs."""

    _first_step_seen = False

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._first_step_seen and step is not None:
            self._first_step_seen = True
            if os.path.isfile(self.metrics_file_path):
                dropped = drop_rows_from_step(self.metrics_file_path, step)
                if dropped:
                    log.info("metrics.csv: dropped %d row(s) at step >= %d, logged after the checkpoint this run "
                             "continues from (each step and epoch stays once)", dropped, step)
        super().log_metrics(metrics_dict, step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the file in place when a new column appears: a kill then would lose it
        _, rows = read_rows(self.metrics_file_path)
        write_rows_atomically(self.metrics_file_path, fieldnames, rows)


class CSVLogger(LightningCSVLogger):
    """``metrics.csv`` (one row per logging step / epoch) and ``hparams.yaml`` in ``save_dir/name/version``;
    a resumed run continues its ``metrics.csv`` from the step it resumes at."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
