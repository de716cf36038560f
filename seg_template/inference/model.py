"""The inference settings (``configs/inference/*.yaml``) applied to a network: logits or class ids.

``predict`` returns image-size logits (what eval's loss and metrics need); ``predict_labels`` returns class
ids, and with ``bounded=True`` computes them in memory that does not grow with the image area.

Logits holding NaN or inf never become a result: their argmax would be class 0 (all-NaN pixels), so eval
would print an all-zero table and predict write class-0 masks. Both functions raise ``NonFiniteLogits``, and
:class:`InferenceModel` turns that into a user error naming the model file (the loader's
``net.weights_source``) and the images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seg_template.errors import CheckpointError, ConfigError, DataError, UserError
from seg_template.inference.slide import (
    DEFAULT_WINDOW_BATCH,
    check_windows,
    predict_slide,
    predict_slide_labels,
)
from seg_template.inference.whole import NonFiniteLogits, check_finite, class_ids, predict_whole, resize

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
    scale; ``window_batch`` crops per forward pass). ``[N, 3, H, W] -> [N, C, H, W]``. Raises
    ``NonFiniteLogits`` when the logits hold NaN or inf.
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
    return check_finite(total if len(scales) == 1 else total / len(scales))


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

    def forward(self, images: Tensor, names: Sequence[str] | None = None) -> Tensor:
        """Image-size logits ``[N, C, H, W]``; ``names`` (of the images, optional) only serve the messages."""
        if self.bounded:
            raise ConfigError("inference.bounded=true gives class ids, never image-size logits, so it cannot "
                              "feed a loss: set inference.bounded=false here (predict.py takes bounded=true)")
        self._check_window(images)
        try:
            return predict(self.net, images, **self.settings)
        except NonFiniteLogits as err:
            raise self._nonfinite_error(err, images, names) from err

    def predict_labels(self, images: Tensor, dtype: torch.dtype = torch.int64,
                       names: Sequence[str] | None = None) -> Tensor:
        """Class ids ``[N, H, W]`` (``dtype``; ``torch.uint8`` takes an eighth of int64's memory for up to
        256 classes). Bounded mode: band by band; otherwise the argmax of ``forward``."""
        self._check_window(images)
        try:
            return predict_labels(self.net, images, **self.settings, bounded=self.bounded, dtype=dtype)
        except NonFiniteLogits as err:
            raise self._nonfinite_error(err, images, names) from err

    def _nonfinite_error(self, err: NonFiniteLogits, images: Tensor, names: Sequence[str] | None) -> UserError:
        """Whose fault non-finite logits are: the images (``DataError``) or the model (``CheckpointError``,
        naming its file, and whether its weights are finite)."""
        from seg_template.models.finite import is_finite

        n, _, h, w = images.shape
        batch = f"a batch of {n} {h}x{w} image(s)"
        if names:
            batch = "image(s) " + ", ".join(map(str, names[:4])) + (f" and {len(names) - 4} more" if len(names) > 4
                                                                     else "")
        if not is_finite(images):
            return DataError(f"{batch} hold NaN/inf once data.val_transform has normalised them, so no prediction "
                             f"can be made; check data.val_transform's mean and std (a std of 0?)")
        source = getattr(self.net, "weights_source", None) or f"the network ({type(self.net).__name__})"
        cause, fix = nonfinite_cause(self.net, err.dtype, images.device.type)
        return CheckpointError(f"{source} gives {err} on {batch}, so no prediction can be made (their argmax "
                               f"would be class 0): {cause}; {fix}")


def nonfinite_cause(net: nn.Module, dtype: torch.dtype = torch.float32, device_type: str = "cpu") -> tuple[str, str]:
    """``(why, what to do)`` when ``net`` gave non-finite logits of ``dtype``: weights holding NaN/inf, a
    batch-norm variance below 0 (NaN in eval mode), 16-bit overflow, or finite weights too large to compute
    with. For eval, predict and the validation during training alike."""
    from seg_template.models.finite import negative_variances, nonfinite_names

    state = net.state_dict()
    bad, total = nonfinite_names(state)
    if bad:
        return (f"its weights hold NaN/inf in {len(bad)} of {total} tensors ({', '.join(bad[:4])})",
                "use a checkpoint written before the run diverged")
    negative = negative_variances(state)
    if negative:
        return (f"its batch-norm running_var is below 0 in {len(negative)} tensor(s) ({', '.join(negative[:4])}), "
                "which no training writes (a variance cannot be negative)", "use another checkpoint of the run")
    if dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(device_type):
        return ("its weights are finite, but in 16-bit (mixed) precision they may overflow",
                "run in 32-bit (trainer.precision=32-true); if that fails too, use an earlier checkpoint of the run")
    return ("its weights are finite, yet too large to compute with (the state of a run on the edge of diverging?)",
            "use an earlier checkpoint of the run")
