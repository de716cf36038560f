"""User errors: mistakes in a config, a dataset or a checkpoint, as opposed to bugs in our code.

Raise one of these (with a message naming the culprit — file, config key, value — and the fix) where our
code detects a user's mistake. The entry points print them as one short block and exit non-zero; every
other exception keeps its full traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback of a user error too.

Each class also derives from the built-in it refines (``ValueError``, ``FileNotFoundError``...), so code
that catches the built-in keeps working.
"""

from __future__ import annotations

from collections.abc import Callable


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


def run_tool(main: Callable[[], int | None]) -> int:
    """Run a dataset tool's ``main()`` (``scripts/*.py``) as the entry points run a task: a user's mistake —
    a :class:`UserError`, or a command line Hydra cannot compose (``data=bogus``) — prints as one block on
    stderr and gives exit status 1; other errors keep their traceback. ``HYDRA_FULL_ERROR=1`` re-raises."""
    import os
    import sys

    from hydra.errors import HydraException

    try:
        return int(main() or 0)
    except Exception as err:
        found = _first_user_error(err)
        if found is None and isinstance(err, HydraException):  # unknown option, bad override syntax
            found = err
        if found is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        text = str(found).strip()
        if isinstance(found, HydraException):
            text = text.split("\nConfig search path:", 1)[0]  # Hydra appends its whole search path
        print(f"{type(found).__name__}: {text}\n  (a problem with the options or the data, not a bug; the "
              "traceback: set HYDRA_FULL_ERROR=1)", file=sys.stderr)
        return 1


def _first_user_error(err: BaseException) -> UserError | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
