"""Sliding-window inference: stitch every window into image-size logits, or keep memory bounded.

Both modes share one loop (:func:`slide_bands`). Overlapping windows are averaged: the logit sums are
divided by the number of windows covering each pixel. The stitching keeps the sums of the whole image,
``[views, N, C, H, W]``. The bounded mode keeps one window tall band of sums and slides it down: once the
windows of the next row start at ``y``, no later window reaches the rows above ``y``, so those rows are
finished; they are averaged and handed on (as logits or their argmax), and the band moves down. Its memory
is ``views * N * C * crop_h * W`` floats whatever the image height.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.inference.whole import check_finite, class_ids
from seg_template.inference.windows import Window, coverage, window_logits, window_starts
from seg_template.options import require

#: crops per forward pass unless told otherwise (``inference.window_batch``)
DEFAULT_WINDOW_BATCH = 4
#: the bounded mode averages and hands on finished rows in pieces of about this many bytes of logits
PIECE_BYTES = 16 << 20


def check_windows(crop_size: Sequence[int] | None, stride: Sequence[int] | None,
                  window_batch: int = DEFAULT_WINDOW_BATCH) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((crop_h, crop_w), (stride_h, stride_w))``, or a ``ConfigError`` naming the ``inference.*`` key."""
    if crop_size is None or stride is None:
        raise ConfigError("inference.mode=slide needs inference.crop_size and inference.stride ([h, w]), "
                          "e.g. inference=slide")
    if len(crop_size) != 2 or len(stride) != 2:
        raise ConfigError(f"inference.crop_size and inference.stride are [h, w], got crop_size={list(crop_size)} "
                          f"stride={list(stride)}")
    (ch, cw), (sh, sw) = (int(v) for v in crop_size), (int(v) for v in stride)
    if min(ch, cw, sh, sw) <= 0 or sh > ch or sw > cw:
        raise ConfigError(f"sliding window needs 0 < inference.stride <= inference.crop_size, got "
                          f"crop_size={list(crop_size)} stride={list(stride)}")
    require("inference.window_batch", window_batch)  # crops per forward pass (seg_template/options.py)
    return (ch, cw), (sh, sw)


def slide_bands(net: nn.Module, images: Tensor, crop_size: Sequence[int], stride: Sequence[int], *,
                flip: bool = False, align_corners: bool = False, window_batch: int = DEFAULT_WINDOW_BATCH,
                bounded: bool = True) -> Iterator[tuple[int, Tensor]]:
    """Sliding-window logits as finished bands of rows, top to bottom: ``(top, logits[N, C, rows, W])``
    covers image rows ``[top, top + rows)``. ``images[N, 3, H, W]``.

    ``flip`` also averages the mirrored image's windows (their own frame, padded on its right, as
    ``predict_slide(images.flip(-1)).flip(-1)`` would). ``bounded=False``: one band, the whole image, from
    sums of the whole image (stitching); ``True``: many bands from a window-tall band of sums. The logits
    are on the network's device.
    """
    (ch, cw), (sh, sw) = check_windows(crop_size, stride, window_batch)
    n, _, h, w = images.shape
    ph, pw = max(h, ch), max(w, cw)  # the padded frame
    ys, xs = window_starts(ph, ch, sh), window_starts(pw, cw, sw)
    views = 2 if flip else 1
    windows = (Window(view, y, x) for y in ys for view in range(views) for x in xs)
    row_cover, col_cover = coverage(ph, ys, ch), coverage(pw, xs, cw)
    height = ch if bounded else ph
    top, sums = 0, None  # sums[view, image, class, row - top, column] for frame rows [top, top + height)
    for window, i, logits in window_logits(net, images, windows, (ch, cw), align_corners, window_batch):
        if sums is None:
            sums = logits.new_zeros((views, n, logits.shape[0], height, pw))
            row_cover, col_cover = row_cover.to(sums.device), col_cover.to(sums.device)
        if bounded and window.y > top:  # a new row of windows: the rows above it are finished
            yield from _finished(sums[:, :, :, :window.y - top], top, row_cover, col_cover, (h, w), bounded)
            _move_up(sums, window.y - top)
            top = window.y
        sums[window.view, i, :, window.y - top:window.y - top + ch, window.x:window.x + cw] += logits
    assert sums is not None  # window_starts always yields at least one window
    yield from _finished(sums, top, row_cover, col_cover, (h, w), bounded)


def _finished(sums: Tensor, top: int, row_cover: Tensor, col_cover: Tensor, image_size: tuple[int, int],
              pieces: bool) -> Iterator[tuple[int, Tensor]]:
    """Average the finished frame rows ``sums[views, N, C, rows, W_frame]`` (from row ``top``) over windows
    and views; yield ``(row, logits[N, C, rows', W])`` for the rows inside the image, in pieces of about
    ``PIECE_BYTES`` when ``pieces`` (so the bounded mode's temporaries stay small too)."""
    h, w = image_size
    end = min(top + sums.shape[-2], h)
    row_bytes = sums[:, :, :, :1].numel() * sums.element_size()
    step = max(1, PIECE_BYTES // row_bytes) if pieces else max(end - top, 1)
    for start in range(top, end, step):
        stop = min(start + step, end)
        count = row_cover[start:stop, None] * col_cover[None, :]  # windows covering each pixel
        mean = sums[:, :, :, start - top:stop - top] / count
        logits = mean[0, ..., :w]
        if mean.shape[0] == 2:  # the mirror's frame is padded on its right: its image part is [:w], mirrored
            logits = (logits + mean[1, ..., :w].flip(-1)) / 2
        yield start, logits


def _move_up(sums: Tensor, rows: int) -> None:
    """Shift ``sums[..., rows:, :]`` to the top of the band, in place; the rows freed at the bottom are 0.

    Copied top-down in slices of at most ``rows`` rows, so no slice overlaps its source and no copy of the
    band is needed."""
    kept = sums.shape[-2] - rows
    for start in range(0, kept, rows):
        stop = min(start + rows, kept)
        sums[..., start:stop, :].copy_(sums[..., start + rows:stop + rows, :])
    sums[..., kept:, :].zero_()


def predict_slide(net: nn.Module, images: Tensor, crop_size: Sequence[int], stride: Sequence[int],
                  align_corners: bool = False, *, flip: bool = False,
                  window_batch: int = DEFAULT_WINDOW_BATCH) -> Tensor:
    """Sliding-window logits stitched at image size; overlapping windows (and, with ``flip``, the mirrored
    image) are averaged. ``[N, 3, H, W] -> [N, C, H, W]``.

    ``crop_size`` and ``stride`` are ``[h, w]``. An image smaller than the window is zero-padded (the
    normalised mean) at the bottom/right and the padding cropped off the logits.
    """
    [(_, logits)] = slide_bands(net, images, crop_size, stride, flip=flip, align_corners=align_corners,
                                window_batch=window_batch, bounded=False)
    return logits.to(images.device)


def predict_slide_labels(net: nn.Module, images: Tensor, crop_size: Sequence[int], stride: Sequence[int],
                         align_corners: bool = False, *, flip: bool = False,
                         window_batch: int = DEFAULT_WINDOW_BATCH, dtype: torch.dtype = torch.int64) -> Tensor:
    """Class ids ``[N, H, W]`` (``dtype``) of the sliding-window logits, in memory that does not grow with
    the image area beyond the images and the ids themselves (bounded mode). Equal to
    ``predict_slide(...).argmax(1)`` bit for bit: same windows, same batches, same sums. Raises
    ``NonFiniteLogits`` when a band's logits hold NaN or inf (their argmax would be made up)."""
    n, _, h, w = images.shape
    labels = torch.empty((n, h, w), dtype=dtype, device=images.device)
    for top, logits in slide_bands(net, images, crop_size, stride, flip=flip, align_corners=align_corners,
                                   window_batch=window_batch, bounded=True):
        if logits.shape[1] - 1 > torch.iinfo(dtype).max:
            raise ValueError(f"{logits.shape[1]} classes do not fit in {dtype} class ids")
        labels[:, top:top + logits.shape[2]] = class_ids(check_finite(logits)).to(labels.device, dtype)
    return labels

