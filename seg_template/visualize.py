"""Pictures of class maps for people: colour masks, overlays on the image and a legend naming the classes.

Plain numpy + PIL (no plotting library), so predict.py and the training-time image grids draw the same way::

    rgb = overlay(image, labels, palette, alpha=0.5)          # uint8[H, W, 3]
    with_key = add_legend(rgb, labels, class_names, palette)  # uint8[H', W', 3]: a panel at the right
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``labels[H, W]`` (class ids) -> ``uint8[H, W, 3]`` palette colours; ids without a colour (the ignore
    index 255 of a ground-truth mask) get ``ignore_color``."""
    palette = np.asarray(palette, dtype=np.uint8)
    known = labels < len(palette)
    colours = palette[np.where(known, labels, 0)]
    colours[~known] = ignore_color
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the class colours: ``uint8[H, W, 3]``.

    ``image`` is ``uint8[H, W, 3]`` RGB, ``labels`` ``int[H, W]`` class ids, ``palette`` ``uint8[K, 3]``;
    ``alpha`` is the weight of the colours (0: the image, 1: the colour mask). Pixels whose id has no colour
    (e.g. the ignore index 255) show the image unchanged, so unlabelled regions stay recognisable.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"overlay: image {image.shape[:2]} and labels {labels.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    palette = np.asarray(palette, dtype=np.uint8)
    known = labels < len(palette)
    colours = palette[np.where(known, labels, 0)].astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    out = np.where(known[..., None], np.rint(blended), image.astype(np.float32))
    return out.astype(np.uint8)


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):  # an older Pillow or one without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def legend_entries(labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray,
                   min_share: float = 0.0) -> list[tuple[str, tuple[int, int, int]]]:
    """``(text, colour)`` for each class present in ``labels[H, W]``, in class order; the text is the class
    name and its share of the pixels, e.g. ``"road 38%"``. Ids without a colour are left out, and so are
    classes covering less than ``min_share`` of the image."""
    ids, counts = np.unique(labels, return_counts=True)
    total = max(int(labels.size), 1)
    entries = []
    for class_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if class_id >= len(palette) or count / total < min_share:
            continue
        name = class_names[class_id] if class_id < len(class_names) else str(class_id)
        share = 100.0 * count / total
        entries.append((f"{name} {share:.0f}%" if share >= 1 else f"{name} <1%",
                        tuple(int(c) for c in palette[class_id])))
    return entries


def legend_panel(entries: Sequence[tuple[str, Sequence[int]]], height: int, font_size: int | None = None,
                 background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """``uint8[h, w, 3]``: a colour swatch and a text line per entry, in as many columns as ``height`` needs
    (``h`` is ``height``, or one line's height when ``height`` is smaller)."""
    size = font_size or int(np.clip(height / 32, 11, 28))
    face = font(size)
    pad, line = max(2, size // 3), size + max(2, size // 3)
    rows = max(1, (height - pad) // line)
    columns = [entries[i:i + rows] for i in range(0, len(entries), rows)] or [[]]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max((probe.textlength(text, font=face) for text, _ in col), default=0) for col in columns]
    swatch = size
    col_widths = [int(pad + swatch + pad + w + pad) for w in widths]
    panel = Image.new("RGB", (max(sum(col_widths), 1), max(height, line + pad)), tuple(background))
    draw = ImageDraw.Draw(panel)
    x = 0
    for col, width in zip(columns, col_widths, strict=True):
        for row, (text, colour) in enumerate(col):
            y = pad + row * line
            draw.rectangle([x + pad, y, x + pad + swatch - 1, y + swatch - 1], fill=tuple(colour), outline=(0, 0, 0))
            draw.text((x + pad + swatch + pad, y), text, fill=(0, 0, 0), font=face)
        x += width
    return np.asarray(panel)


def add_legend(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray,
               font_size: int | None = None) -> np.ndarray:
    """``image`` (``uint8[H, W, 3]``) with a legend of the classes present in ``labels[H, W]`` to its right:
    ``uint8[max(H, h), W + w, 3]``. The legend sits beside the picture rather than on it, so a small image is
    not hidden behind its own key."""
    panel = legend_panel(legend_entries(labels, class_names, palette), image.shape[0], font_size)
    height = max(image.shape[0], panel.shape[0])
    out = np.full((height, image.shape[1] + panel.shape[1], 3), 255, dtype=np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    out[:panel.shape[0], image.shape[1]:] = panel
    return out
