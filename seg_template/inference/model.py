"""The inference settings (``configs/inference/*.yaml``) applied to a network: logits or class ids.

``predict`` returns image-size logits (what eval's loss and metrics need); ``predict_labels`` returns class
ids, and with ``bounded=True`` computes them in memory that does not grow with the image area.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.inference.slide import (
    DEFAULT_WINDOW_BATCH,
    check_windows,
    predict_slide,
    predict_slide_labels,
)
from seg_template.inference.whole import class_ids, predict_whole, resize

log = logging.getLogger(__name__)


def check_settings(mode: str = "whole", crop_size: Sequence[int] | None = None,
                   stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,),
                   window_batch: int = DEFAULT_WINDOW_BATCH, bounded: bool = False) -> None:
    """Raise a ``ConfigError`` naming the ``inference.*`` key of a setting that cannot work."""
    if mode not in ("whole", "slide"):
        raise ConfigError(f"inference.mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide":
        check_windows(crop_size, stride, window_batch)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"inference.scales must be positive image scales, e.g. [1.0], got {list(scales)}")
    if bounded and mode != "slide":
        raise ConfigError("inference.bounded=true bounds the memory of the sliding window: it needs "
                          "inference.mode=slide (e.g. inference=slide inference.bounded=true)")
    if bounded and list(scales) != [1.0]:
        # every scale's logits would have to be resized to the image and summed before the argmax
        raise ConfigError(f"inference.bounded=true works at the image's own scale: inference.scales must be "
                          f"[1.0], got {list(scales)} (flip=true is supported; or set inference.bounded=false)")


def predict(net: nn.Module, images: Tensor, mode: str = "whole", crop_size: Sequence[int] | None = None,
            stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
            align_corners: bool = False, window_batch: int = DEFAULT_WINDOW_BATCH) -> Tensor:
    """Logits averaged over ``scales`` (image resized by each) and, with ``flip``, horizontal flips.

    ``mode`` is ``"whole"`` or ``"slide"`` (then ``crop_size``/``stride`` are required and apply at every
    scale; ``window_batch`` crops per forward pass). ``[N, 3, H, W] -> [N, C, H, W]``.
    """
    check_settings(mode, crop_size, stride, scales, window_batch)
    size = images.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        scaled_size = [max(1, round(s * scale)) for s in size]
        x = resize(images, scaled_size, align_corners)
        if mode == "slide":
            logits = predict_slide(net, x, crop_size, stride, align_corners,  # type: ignore[arg-type]
                                   flip=flip, window_batch=window_batch)
        else:
            views = [predict_whole(net, x, align_corners)]
            if flip:
                views.append(predict_whole(net, x.flip(-1), align_corners).flip(-1))
            logits = torch.stack(views).mean(0) if flip else views[0]
        logits = resize(logits, size, align_corners)
        total = logits if total is None else total + logits
    assert total is not None
    return total if len(scales) == 1 else total / len(scales)


def predict_labels(net: nn.Module, images: Tensor, mode: str = "whole", crop_size: Sequence[int] | None = None,
                   stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                   align_corners: bool = False, window_batch: int = DEFAULT_WINDOW_BATCH, bounded: bool = False,
                   dtype: torch.dtype = torch.int64) -> Tensor:
    """Class ids ``[N, H, W]`` (``dtype``): the argmax of :func:`predict`'s logits. With ``bounded`` (slide,
    ``scales=[1.0]``) without ever holding image-size logits, and equal bit for bit."""
    check_settings(mode, crop_size, stride, scales, window_batch, bounded)
    if bounded:
        return predict_slide_labels(net, images, crop_size, stride, align_corners,  # type: ignore[arg-type]
                                    flip=flip, window_batch=window_batch, dtype=dtype)
    logits = predict(net, images, mode, crop_size, stride, scales, flip, align_corners, window_batch)
    return class_ids(logits).to(dtype)


class InferenceModel(nn.Module):
    """A network with fixed inference settings (the keys of ``configs/inference/*.yaml``).

    ``forward(images[N, 3, H, W]) -> logits[N, C, H, W]`` at the image size (eval.py swaps it in for
    ``module.net``); ``predict_labels(images) -> [N, H, W]`` class ids works in every mode. With
    ``bounded=True`` only ``predict_labels`` works: image-size logits are what that mode avoids.
    Settings are checked here, before any data is read.
    """

    def __init__(self, net: nn.Module, mode: str = "whole", crop_size: Sequence[int] | None = None,
                 stride: Sequence[int] | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                 align_corners: bool = False, window_batch: int = DEFAULT_WINDOW_BATCH,
                 bounded: bool = False) -> None:
        super().__init__()
        check_settings(mode, crop_size, stride, scales, window_batch, bounded)
        self.net = net
        self.bounded = bool(bounded)
        self.settings = {"mode": mode, "crop_size": crop_size, "stride": stride, "scales": list(scales),
                         "flip": flip, "align_corners": align_corners, "window_batch": window_batch}
        self._warned_window = False

    def _check_window(self, images: Tensor) -> None:
        """Warn once when a sliding window is larger than the image: the image is only zero-padded up to the
        window, which the model never saw in training (e.g. a 512x1024 window on 64x64 images cost the
        synthetic default several mIoU points)."""
        crop = self.settings["crop_size"]
        if self._warned_window or self.settings["mode"] != "slide" or crop is None:
            return
        h, w = images.shape[-2:]
        if crop[0] > h or crop[1] > w:
            self._warned_window = True
            log.warning("inference.crop_size=%s is larger than the %dx%d (HxW) images: they are zero-padded up "
                        "to the window, which usually lowers the scores; use a window no larger than the "
                        "images (e.g. the training crop) or inference=whole", list(crop), h, w)

    @property
    def returns_logits(self) -> bool:
        """Whether ``forward`` gives logits (every mode but ``bounded``); otherwise call ``predict_labels``."""
        return not self.bounded

    def forward(self, images: Tensor) -> Tensor:
        if self.bounded:
            raise ConfigError("inference.bounded=true gives class ids, never image-size logits, so it cannot "
                              "feed a loss: set inference.bounded=false here (predict.py takes bounded=true)")
        self._check_window(images)
        return predict(self.net, images, **self.settings)

    def predict_labels(self, images: Tensor, dtype: torch.dtype = torch.int64) -> Tensor:
        """Class ids ``[N, H, W]`` (``dtype``; ``torch.uint8`` takes an eighth of int64's memory for up to
        256 classes). Bounded mode: band by band; otherwise the argmax of ``forward``."""
        self._check_window(images)
        return predict_labels(self.net, images, **self.settings, bounded=self.bounded, dtype=dtype)
