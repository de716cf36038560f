"""Class weights for the losses: from a list, a ``.npy`` / ``.json`` / ``.txt`` file, or ``None``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path
from torch import Tensor

WeightSpec = Sequence[float] | str | Path | Tensor | np.ndarray | None


def load_class_weights(spec: WeightSpec) -> Tensor | None:
    """Class weights as float32 ``[C]`` from a list, a ``.npy`` / ``.json`` / ``.txt`` file, or ``None``."""
    if spec is None:
        return None
    source = "class weights"
    if isinstance(spec, str | Path):
        # relative to where the user launched, even if Hydra changed the working directory
        path = Path(to_absolute_path(str(spec)))
        source = f"class weights file {path}"
        if not path.is_file():
            raise FileNotFoundError(f"{source} not found (set data.class_weights or loss.main.weight)")
        try:
            spec = _read_weight_file(path)
        except ValueError as err:  # includes json.JSONDecodeError and a bad number in a .txt
            raise ValueError(f"{source}: {err}") from err
    try:
        values = spec.detach().cpu().numpy() if isinstance(spec, Tensor) else np.asarray(list(spec), dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: expected a list of numbers, got {spec!r}") from err
    values = values.astype(np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{source}: expected a non-empty 1-D list of numbers, got shape {values.shape}")
    bad = values[~np.isfinite(values) | (values < 0)]
    if bad.size:
        raise ValueError(f"{source}: class weights must be finite and >= 0, got {bad.tolist()}")
    return torch.tensor(values, dtype=torch.float32)


def _read_weight_file(path: Path) -> np.ndarray | list[float]:
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".txt":  # numbers separated by whitespace or commas; '#' starts a comment
        lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
        return [float(tok) for line in lines for tok in line.replace(",", " ").split()]
    raise ValueError(f"unsupported suffix {path.suffix!r} (use .npy, .json or .txt)")
