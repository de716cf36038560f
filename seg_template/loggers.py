"""Our CSV logger: Lightning's, except that an existing ``metrics.csv`` is continued, not deleted.

Lightning's CSV logger removes ``metrics.csv`` when its folder is not empty. Runs resumed in place
(``ckpt_path=<run>/checkpoints/last.ckpt``) log into their old folder, and must keep their history.
"""

from __future__ import annotations

import csv
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv``, starting from its header's columns."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)


class CSVLogger(LightningCSVLogger):
    """``metrics.csv`` (one row per logging step / epoch) and ``hparams.yaml`` in ``save_dir/name/version``;
    a resumed run appends to its ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
