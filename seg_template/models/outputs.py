"""The model-output contract, read in one place.

A model's ``forward(images[N, 3, H, W])`` returns logits at its native stride, ``[N, C, h, w]``, in one of
these forms, and nothing outside this module looks inside what a model returns:

- a tensor: the logits;
- a mapping with ``"out"`` (and ``"aux"``, an auxiliary head's logits, during training): torchvision's
  segmentation models and ours;
- a mapping or an object with ``logits`` (and ``aux_logits``): the convention of many model libraries
  (Hugging Face's ``SemanticSegmenterOutput`` is both).

:func:`split_outputs` gives ``(out, aux)``; :func:`canonical_outputs` the form the losses take (the tensor,
or ``{"out", "aux"}`` when an auxiliary head answered); :func:`main_logits` the logits that metrics and
inference use; :func:`logits_at` the one upsampling of logits to an image or label size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

#: where the main and the auxiliary logits are found, in the order they are looked for
MAIN_KEYS = ("out", "logits")
AUX_KEYS = ("aux", "aux_logits")

CONTRACT = ("a model returns logits [N, C, h, w], a mapping with 'out' (and 'aux'), or an object with "
            "'.logits' (and '.aux_logits'); see seg_template/models/outputs.py")


def _find(outputs: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if isinstance(outputs, Mapping):
            if outputs.get(key) is not None:
                return outputs[key]
        elif getattr(outputs, key, None) is not None:
            return getattr(outputs, key)
    return None


def _logits(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor) or value.ndim != 4:
        shown = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"the model's {what} must be logits [N, C, h, w], got {shown}: {CONTRACT}")
    return value


def split_outputs(outputs: Any) -> tuple[Tensor, Tensor | None]:
    """``(out[N, C, h, w], aux[N, C, h', w'] or None)`` from what a model returned (module docstring).

    Raises ``TypeError`` naming what was returned when it follows none of the forms (a tuple, a mapping
    without ``out`` / ``logits``, logits that are not 4-D)."""
    if isinstance(outputs, Tensor):
        return _logits(outputs, "output"), None
    out = _find(outputs, MAIN_KEYS)
    if out is None:
        found = f"keys {list(outputs)}" if isinstance(outputs, Mapping) else f"a {type(outputs).__name__}"
        raise TypeError(f"the model returned {found}: {CONTRACT}")
    aux = _find(outputs, AUX_KEYS)
    return _logits(out, "main output"), None if aux is None else _logits(aux, "auxiliary output")


def canonical_outputs(outputs: Any) -> Tensor | dict[str, Tensor]:
    """What the losses take: the logits tensor, or ``{"out": ..., "aux": ...}`` when an auxiliary head
    answered (training mode of a model with ``aux=true``)."""
    out, aux = split_outputs(outputs)
    return out if aux is None else {"out": out, "aux": aux}


def main_logits(outputs: Any) -> Tensor:
    """The logits ``[N, C, h, w]`` that metrics and inference use (the auxiliary head's are training-only)."""
    return split_outputs(outputs)[0]


def logits_at(logits: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """``logits[N, C, h, w]`` bilinearly resized to ``size`` (``[H, W]``, an image's or a label's size); the
    tensor itself when it is that size already. ``align_corners`` is the model config's
    (``model.align_corners``), the same value the loss upsamples with."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)
