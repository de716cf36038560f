"""When a training run reads device tensors on the host: at logging steps.

Each host read of a GPU tensor waits for the device. The checks that need one — the loss's label range
(``SegmentationModule.check_labels``), the NaN guard's verdicts, the progress bars' loss, the DDP ranks'
agreement on a stop signal — wait for the logging steps, where Lightning reads the logged values anyway.
"""

from __future__ import annotations

import pytorch_lightning as pl


def at_logging_step(trainer: pl.Trainer) -> bool:
    """Whether the training step now ending is a logging step (``trainer.log_every_n_steps``, or a stop):
    Lightning's own test, which it applies when it logs the step's metrics after ``on_train_batch_end``."""
    return bool(trainer._logger_connector.should_update_logs)
