"""Reading images and masks from disk with errors that name the file at fault.

Every dataset family reads through these helpers, so a corrupt JPEG, a mask with an
unknown colour or a label out of range is reported the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seg_template.errors import ConfigError, DataError, MissingFileError

#: the image files the datasets, the dataset tools and predict.py accept (compared lower-case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetLayoutError(MissingFileError):
    """The files on disk do not match the layout a dataset expects (missing root, unpaired files...)."""


class UnreadableImageError(DataError, OSError):
    """An image or mask file that cannot be decoded (truncated, not an image). Still an ``OSError``, which
    is what PIL raises and what callers reading files have always caught."""


def require_dir(path: Path, layout: str, what: str = "dataset root") -> Path:
    """Return ``path`` if it is a directory, else raise with the layout that was expected there."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetLayoutError(f"{what} not found: {path}\nexpected this layout under it:\n{layout}")
    return path


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now: PIL is lazy and a truncated file would only fail later, far from its name
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image file {path}: {err}") from err
    return img


def read_image(path: Path) -> np.ndarray:
    """RGB image as ``uint8[H, W, 3]`` (grey and RGBA are converted)."""
    return np.asarray(_open(Path(path)).convert("RGB"))


def read_label_png(path: Path) -> np.ndarray:
    """Single-channel label map as ``int64[H, W]``.

    A palette ('P') PNG yields its palette indices (VOC style), an 'L'/'I' PNG its values. An RGB file
    is refused here because its colours need a colour table (``read_rgb_mask``).
    """
    img = _open(Path(path))
    if img.mode in ("RGB", "RGBA"):
        raise DataError(f"mask file {path} is an {img.mode} colour image; index masks must be single-channel "
                        "(grey or palette PNG). For colour masks set the colour table (mask_format: rgb)")
    if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        img = img.convert("L")
    return np.asarray(img).astype(np.int64)


def read_rgb_mask(path: Path, colors: Sequence[Sequence[int]], ignore_colors: Iterable[Sequence[int]] = (),
                  ignore_index: int = 255) -> np.ndarray:
    """Colour mask -> ``int64[H, W]`` class indices: ``colors[k]`` is class ``k``'s RGB triple.

    Pixels in ``ignore_colors`` become ``ignore_index``; any other colour raises naming colour and file.
    """
    rgb = np.asarray(_open(Path(path)).convert("RGB")).astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {_code(c): k for k, c in enumerate(colors)}
    table.update({_code(c): ignore_index for c in ignore_colors})
    uniq, inverse = np.unique(codes, return_inverse=True)
    unknown = [u for u in uniq.tolist() if u not in table]
    if unknown:
        shown = ", ".join(str(_rgb(u)) for u in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise DataError(f"mask file {path}: unknown colour(s) {shown} (RGB) not in the colour table "
                        f"({len(table)} colours: data.colors / data.ignore_colors)")
    return np.asarray([table[u] for u in uniq.tolist()], dtype=np.int64)[inverse].reshape(codes.shape)


def _code(color: Sequence[int]) -> int:
    if len(color) != 3 or not all(0 <= int(v) <= 255 for v in color):
        raise ConfigError(f"colour table entry {list(color)} is not an RGB triple of 0..255 values")
    r, g, b = (int(v) for v in color)
    return (r << 16) | (g << 8) | b


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path | str) -> np.ndarray:
    """Raise if ``mask`` holds values outside ``[0, num_classes)`` ∪ {ignore_index}, naming them and the file."""
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)
    if bad.any():
        values = np.unique(mask[bad])
        shown = values[:10].tolist()
        raise DataError(f"mask file {path}: label value(s) {shown}{' ...' if values.size > 10 else ''} outside "
                        f"[0, {num_classes}) and not the ignore index {ignore_index}")
    return mask


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    """Raise if image ``[H, W, 3]`` and mask ``[H, W]`` differ in size, naming both files."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but mask "
                        f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (any of ``IMAGE_EXTENSIONS``, case-insensitive) in ``folder``, sorted."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def format_paths(paths: Sequence[Path | str], limit: int = 10) -> str:
    """A readable, bounded list of file names for error messages."""
    shown = "\n  ".join(str(p) for p in list(paths)[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"
