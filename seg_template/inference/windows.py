"""The windows of sliding-window inference, and their logits computed a batch of crops at a time.

A window lives in the frame of a *view*: the image (view 0) or its horizontal mirror (view 1, the test-time
flip), zero-padded (the normalised mean) at the bottom/right to at least one window. Windows come row by row
(one row = one ``y``), each row giving view 0's windows then view 1's, left to right. The stitching and the
bounded mode both consume this one order through :func:`window_logits`, so their network batches are the
same and so are their sums, bit for bit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.inference.whole import net_logits, resize

T = TypeVar("T")


@dataclass(frozen=True)
class Window:
    """Rows ``[y, y + crop_h)`` and columns ``[x, x + crop_w)`` of view ``view``'s padded frame."""

    view: int  # 0: the image, 1: its horizontal mirror
    y: int
    x: int


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``crop`` every ``stride`` covering ``[0, size)``; the last window
    is shifted back to end exactly at ``size`` (``size <= crop``: one window at 0)."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    return [*starts, size - crop]


def coverage(size: int, starts: Sequence[int], crop: int) -> Tensor:
    """``float[size]``: how many windows of length ``crop`` starting at ``starts`` cover each position.

    Windows form a grid, so the overlap count of pixel ``(r, c)`` is ``rows[r] * cols[c]``: small integers,
    exact in float32, equal to counting the windows one by one.
    """
    count = torch.zeros(size)
    for start in starts:
        count[start:start + crop] += 1
    return count


def crop_window(images: Tensor, window: Window, crop_size: Sequence[int]) -> Tensor:
    """``images[N, 3, H, W]`` -> the window's crop ``[N, 3, crop_h, crop_w]``, zero-padded at the bottom/right
    where it passes the image. The mirrored view is cut from the image and flipped, never built whole."""
    (ch, cw), (h, w) = crop_size, images.shape[-2:]
    rows = slice(window.y, min(window.y + ch, h))
    if window.view:  # column j of the mirror is column w - 1 - j of the image
        crop = images[:, :, rows, max(w - window.x - cw, 0):max(w - window.x, 0)].flip(-1)
    else:
        crop = images[:, :, rows, window.x:min(window.x + cw, w)]
    if crop.shape[-2:] == (ch, cw):
        return crop
    return F.pad(crop, (0, cw - crop.shape[-1], 0, ch - crop.shape[-2]))


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def net_device(net: nn.Module, default: torch.device) -> torch.device:
    """Where ``net``'s weights are (``default`` for a net without any)."""
    tensor = next(itertools.chain(net.parameters(), net.buffers()), None)
    return default if tensor is None else tensor.device


def window_logits(net: nn.Module, images: Tensor, windows: Iterable[Window], crop_size: Sequence[int],
                  align_corners: bool, window_batch: int) -> Iterator[tuple[Window, int, Tensor]]:
    """``(window, image index, logits[C, crop_h, crop_w])`` for every window of every image, in the order of
    ``windows`` (and of the images within a window).

    ``window_batch`` crops go through the network at once: crops of one image or of several images. Crops
    are moved to the network's device, so a huge image may stay in host memory; so do the logits.
    """
    n = images.shape[0]
    device = net_device(net, images.device)
    for chunk in chunks(((window, i) for window in windows for i in range(n)), window_batch):
        crops = torch.cat([crop_window(images[i:i + 1], window, crop_size) for window, i in chunk])
        logits = resize(net_logits(net, crops.to(device)), crop_size, align_corners)
        for (window, i), one in zip(chunk, logits, strict=True):
            yield window, i, one
