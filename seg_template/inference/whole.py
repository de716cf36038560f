"""One forward pass and its upsampling: the building block of every inference mode.

Models return native-stride logits (``[N, C, h, w]``, ``{"out": ...}`` or ``.logits``: the model-output contract,
read by seg_template/models/outputs.py); inference upsamples them once, at the end of each forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seg_template.models.outputs import logits_at, main_logits


class NonFiniteLogits(ValueError):
    """Logits holding NaN or inf: their argmax would be a made-up class (class 0 for all-NaN pixels).
    ``dtype`` is the logits' dtype. :class:`~seg_template.inference.InferenceModel` turns it into a user error
    naming the model file."""

    dtype: torch.dtype = torch.float32


def _share(count: int, total: int) -> str:
    return "all" if count == total else f"{count} ({100 * count / total:.2g}%)"


def net_logits(net: nn.Module, images: Tensor) -> Tensor:
    """``net(images)``'s main logits ``[N, C, h, w]`` at its native stride (:func:`main_logits`)."""
    return main_logits(net(images))


#: bilinear resize of any ``x[N, C, h, w]`` to ``[H, W]`` (logits, and images for multi-scale inference); ``x``
#: itself when already that size: the one "logits at image size" of seg_template/models/outputs.py
resize = logits_at


def predict_whole(net: nn.Module, images: Tensor, align_corners: bool = False) -> Tensor:
    """One forward pass over the whole image; ``[N, 3, H, W] -> [N, C, H, W]``."""
    return resize(net_logits(net, images), images.shape[-2:], align_corners)


def class_ids(logits: Tensor) -> Tensor:
    """``logits[N, C, H, W] -> int64[N, H, W]``: ``argmax(1)`` (the first maximum on ties), computed as
    ``max(1).indices``, which torch's CPU kernels run 2-9x faster for tens of classes."""
    return logits.max(1).indices


def finite_flag(logits: Tensor) -> Tensor:
    """A 0-dim bool tensor, on ``logits``' device: whether every value is finite. One min/max reduction (NaN
    propagates through both) and no wait for the device, so a caller can count bad batches and look once."""
    if not logits.numel():
        return torch.ones((), dtype=torch.bool, device=logits.device)
    return torch.isfinite(torch.stack(torch.aminmax(logits.detach()))).all()


def describe_nonfinite(logits: Tensor) -> str:
    """``"NaN in all of its float32 logits [N, C, H, W]"``: what is wrong with ``logits``, for a message."""
    nan, inf, total = int(logits.isnan().sum()), int(logits.isinf().sum()), logits.numel()
    parts = [f"NaN in {_share(nan, total)}" if nan else "", f"inf in {_share(inf, total)}" if inf else ""]
    return (f"{' and '.join(p for p in parts if p)} of its {str(logits.dtype).removeprefix('torch.')} "
            f"logits {list(logits.shape)}")


def check_finite(logits: Tensor) -> Tensor:
    """``logits`` itself, or :class:`NonFiniteLogits` when a value is NaN or inf (:func:`finite_flag`, read at
    once: it waits for the device, which suits eval and predict, not the training step)."""
    if bool(finite_flag(logits)):
        return logits
    err = NonFiniteLogits(describe_nonfinite(logits))
    err.dtype = logits.dtype
    raise err
