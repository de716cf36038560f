"""Class weights for the losses: from a list, a ``.npy`` / ``.json`` / ``.txt`` file, or ``None``.

:func:`load_class_weights` is the one reader: the loss calls it when it is built, and the option check
(``seg_template.options.check_options``) calls it first, with ``data.num_classes``, so that a file of the wrong
length is named before the model is built. Every problem with a file names the file."""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import to_absolute_path
from torch import Tensor

from seg_template.errors import ConfigError, MissingFileError

WeightSpec = Sequence[float] | str | Path | Tensor | np.ndarray | None

# Where class weights are set, for messages: the loss cannot tell through which key a value came.
KEYS = "data.class_weights or loss.main.weight"


#: the largest weight a float32 tensor holds (1e308 became inf)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_class_weights(spec: WeightSpec, num_classes: int | None = None, keys: str = KEYS) -> Tensor | None:
    """Class weights as float32 ``[C]`` from a list, a ``.npy`` / ``.json`` / ``.txt`` file, or ``None``.

    Raises ``ConfigError`` (``MissingFileError`` for a missing file) naming the file or the config keys when
    the weights cannot be used: a folder or an unreadable file, nested too deep to parse, not a 1-D list of
    numbers (booleans and numbers written as strings are not numbers: ``true`` must not become 1, nor ``"2"``
    2), negative, non-finite or too large for float32, all zero (every pixel would weigh 0 and the loss would
    stay 0.0: training would run and learn nothing), or not ``num_classes`` of them when it is given.
    ``keys``: the config keys the weights came through, for the messages (a sum's entry names its own).
    """
    if spec is None:
        return None
    source = "class weights"
    if isinstance(spec, str | Path):
        # relative to where the user launched, even if Hydra changed the working directory
        path = Path(to_absolute_path(str(spec)))
        source = f"class weights file {path}"
        if path.is_dir():
            raise ConfigError(f"{source} is a folder, not a file: name the .npy / .json / .txt file of weights "
                              f"(set by {keys}; scripts/compute_class_weights.py --out writes one)")
        if not path.exists():
            raise MissingFileError(f"{source} not found (set by {keys}; scripts/compute_class_weights.py "
                                   "writes one)")
        if not path.is_file():
            raise ConfigError(f"{source} is not a regular file (a device or a pipe): name a .npy / .json / .txt "
                              f"file of weights (set by {keys})")
        try:
            spec = _read_weight_file(path)
        except ValueError as err:  # includes json.JSONDecodeError and a bad number in a .txt
            raise _error(keys, source, str(err)) from err
        except RecursionError as err:  # json gives up on lists nested about a thousand deep
            raise _error(keys, source, "nested too deeply to read; expected a flat list of numbers, one "
                                       "per class") from err
    values = _numbers(spec, source, keys)
    if values.ndim != 1 or values.size == 0:
        raise _error(keys, source, f"expected a non-empty 1-D list of numbers, got shape {values.shape}")
    bad = values[~np.isfinite(values) | (values < 0)]
    if bad.size:
        raise _error(keys, source, f"class weights must be finite and >= 0, got {_short(bad.tolist())}")
    huge = values[values > FLOAT32_MAX]
    if huge.size:
        raise _error(keys, source, f"{huge[0]:g} is too large for float32 (at most {FLOAT32_MAX:.4g}), in "
                                   "which the loss weighs pixels; only the ratios count, so scale the weights down")
    if not values.any():
        raise _error(keys, source, "every class weight is 0, so every pixel would weigh 0 and the loss would "
                                   "stay 0.0; give the classes to learn positive weights")
    if num_classes is not None and values.size != num_classes:
        raise _error(keys, source, f"class weights have {values.size} entries for {num_classes} classes "
                                   f"(data.num_classes is {num_classes}); give one weight per class")
    return torch.tensor(values, dtype=torch.float32)


def _numbers(spec: Any, source: str, keys: str) -> np.ndarray:
    """``spec`` (a tensor, an array or a sequence such as a ``ListConfig``) as a float64 array, if it holds only
    real numbers: no booleans, strings, objects or complex numbers (the shape is checked by the caller)."""
    if isinstance(spec, Tensor):
        spec = spec.detach().cpu().numpy()
    if isinstance(spec, np.ndarray):
        if spec.dtype.kind not in "iuf":  # b: bool, O: object, U/S: text, c: complex
            raise _error(keys, source, f"expected numbers, got an array of {spec.dtype}")
        return spec.astype(np.float64)
    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise _error(keys, source, f"expected a list of numbers, got {_short(spec)}")
    for value in spec:
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            what = ("a nested list" if isinstance(value, Sequence) and not isinstance(value, str) else
                    f"the boolean {str(value).lower()}" if isinstance(value, bool | np.bool_) else _short(value))
            raise _error(keys, source, f"expected a flat list of numbers, one per class, got {what} in "
                                       f"{_short(spec)}")
    return np.asarray(list(spec), dtype=np.float64)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error(keys: str, source: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {problem} (set by {keys})")


def _read_weight_file(path: Path) -> np.ndarray | list[float]:
    if path.suffix == ".npy":
        return np.load(path)  # allow_pickle stays False: reading a user's file runs no code
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".txt":  # numbers separated by whitespace or commas; '#' starts a comment
        lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
        return [float(tok) for line in lines for tok in line.replace(",", " ").split()]
    raise ValueError(f"unsupported suffix {path.suffix!r} (use .npy, .json or .txt)")
