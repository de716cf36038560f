"""Silence third-party output that is known to be harmless here, each item narrowly (by message, and by
module or logger where the source is known) — never a whole warning category.

Called by the entry points (``seg_template.cli``), not on import.
"""

from __future__ import annotations

import logging
import warnings

#: Lightning's info lines that advertise its cloud products or restate our own configuration
_LIGHTNING_INFO_NOISE = (
    "💡 Tip:",  # litlogger / litmodels advertising
    "Trainer already configured with model summary callbacks",  # our RichModelSummary replaces the default
)
_LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                      "lightning.pytorch.utilities.rank_zero")


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(_LIGHTNING_INFO_NOISE))
    # torch 2.10+ deprecates LeafSpec; Lightning 2.6's pytree helper still uses it (nothing we can change)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"pytorch_lightning\.utilities\._pytree")
    # val/test scores are computed from confusion matrices that torchmetrics already summed over all
    # processes: every rank logs the same global value, and a sync_dist all-reduce would only add rounding
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/(mIoU|aAcc|IoU/)")
