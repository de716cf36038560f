"""Test-time prediction: whole image, sliding window, multi-scale + flip.

Every function takes normalised ``images[N, 3, H, W]`` and returns ``logits[N, C, H, W]`` at the image size.
Models return native-stride logits (``[N, C, h, w]`` or ``{"out": ...}``); they are upsampled once, at the
end of each forward pass (per window for the sliding window, whose windows must be stitched at full size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _logits(net: nn.Module, images: Tensor) -> Tensor:
    out = net(images)
    return out["out"] if isinstance(out, dict) else out


def _resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def predict_whole(net: nn.Module, images: Tensor, align_corners: bool = False) -> Tensor:
    """One forward pass over the whole image; ``[N, 3, H, W] -> [N, C, H, W]``."""
    return _resize(_logits(net, images), images.shape[-2:], align_corners)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``crop`` every ``stride`` covering ``[0, size)``; the last window
    is shifted back to end exactly at ``size`` (``size <= crop``: one window at 0)."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    return [*starts, size - crop]


def predict_slide(net: nn.Module, images: Tensor, crop_size: Sequence[int], stride: Sequence[int],
                  align_corners: bool = False) -> Tensor:
    """Sliding-window logits; overlapping windows are averaged. ``[N, 3, H, W] -> [N, C, H, W]``.

    ``crop_size`` and ``stride`` are ``[h, w]``. An image smaller than the window is zero-padded (the
    normalised mean) at the bottom/right and the padding cropped off the logits.
    """
    (ch, cw), (sh, sw) = crop_size, stride
    if min(ch, cw, sh, sw) <= 0 or sh > ch or sw > cw:
        raise ValueError(f"sliding window needs 0 < stride <= crop_size, got crop_size={list(crop_size)} "
                         f"stride={list(stride)}")
    n, _, h, w = images.shape
    padded = F.pad(images, (0, max(cw - w, 0), 0, max(ch - h, 0)))
    ph, pw = padded.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros((1, 1, ph, pw), device=images.device)
    for y in window_starts(ph, ch, sh):
        for x in window_starts(pw, cw, sw):
            crop = padded[:, :, y:y + ch, x:x + cw]
            logits = _resize(_logits(net, crop), crop.shape[-2:], align_corners)
            if total is None:
                total = logits.new_zeros((n, logits.shape[1], ph, pw))
            total[:, :, y:y + ch, x:x + cw] += logits
            count[:, :, y:y + ch, x:x + cw] += 1
    assert total is not None  # window_starts always yields at least one window
    return (total / count)[:, :, :h, :w]


def predict(net: nn.Module, images: Tensor, mode: str = "whole", crop_size: Sequence[int] | None = None,
            stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
            align_corners: bool = False) -> Tensor:
    """Logits averaged over ``scales`` (image resized by each) and, with ``flip``, horizontal flips.

    ``mode`` is ``"whole"`` or ``"slide"`` (then ``crop_size``/``stride`` are required and apply at every
    scale). ``[N, 3, H, W] -> [N, C, H, W]``.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("inference.mode=slide needs inference.crop_size and inference.stride ([h, w])")
    if not scales:
        raise ValueError("inference.scales is empty: give at least one scale, e.g. [1.0]")

    def once(x: Tensor) -> Tensor:
        if mode == "slide":
            return predict_slide(net, x, crop_size, stride, align_corners)  # type: ignore[arg-type]
        return predict_whole(net, x, align_corners)

    size = images.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        scaled_size = [max(1, round(s * scale)) for s in size]
        x = _resize(images, scaled_size, align_corners)
        views = [once(x)]
        if flip:
            views.append(once(x.flip(-1)).flip(-1))
        logits = _resize(torch.stack(views).mean(0), size, align_corners)
        total = logits if total is None else total + logits
    assert total is not None
    return total / len(scales)


class InferenceModel(nn.Module):
    """Wraps a network so that ``forward`` runs ``predict`` with fixed settings; ``[N, 3, H, W] ->
    [N, C, H, W]`` logits at the image size. Swapped in for ``module.net`` by eval.py."""

    def __init__(self, net: nn.Module, mode: str = "whole", crop_size: Sequence[int] | None = None,
                 stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.net = net
        self.settings = {"mode": mode, "crop_size": crop_size, "stride": stride, "scales": list(scales),
                         "flip": flip, "align_corners": align_corners}

    def forward(self, images: Tensor) -> Tensor:
        return predict(self.net, images, **self.settings)

