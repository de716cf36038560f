"""User errors: mistakes in a config, a dataset or a checkpoint, as opposed to bugs in our code.

Raise one of these (with a message naming the culprit — file, config key, value — and the fix) where our
code detects a user's mistake. The entry points print them as one short block and exit non-zero; every
other exception keeps its full traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback of a user error too.

Each class also derives from the built-in it refines (``ValueError``, ``FileNotFoundError``...), so code
that catches the built-in keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; ``str(err)`` says what and how."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (``data.batch_size=abc``, ``optimizer.lr=-1``)."""


class DataError(UserError, ValueError):
    """Dataset content that cannot be trained on (bad labels, unpaired files, all pixels ignored)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the config names does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be read safely, or does not fit the model."""


class TrainingDiverged(UserError, RuntimeError):
    """Training produced non-finite losses and was stopped before saving non-finite weights."""
