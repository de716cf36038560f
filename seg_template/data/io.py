"""The one reader of images and masks: datasets, predict, the pre-flight, the dataset doctor and the class-weight
script all read files through these functions, so every file is decoded the same way and every problem is
reported naming the file.

An image arrives as viewers show it: EXIF orientation applied, 16-bit and float samples scaled by their real
range (``decoding.py``). A mask keeps its stored integer values (8-, 16- or 1/2/4-bit grey, palette indices)
and its EXIF orientation too; a lossy mask (JPEG, lossy WebP) is refused unless the dataset accepts them
explicitly, and so is a mask with an alpha channel that is not fully opaque (which class a transparent pixel
has is a guess). Multi-page files and files over the pixel limit are refused, naming the page count or the size.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seg_template.data.decoding import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SWAPS_AXES,
    ImageInfo,
    check_pages,
    check_size,
    exif_orientation,
    header_info,
    image_rgb,
    index_values,
    own_size_check,
    tiff_unturned,
)
from seg_template.errors import ConfigError, DataError, MissingFileError

#: how a dataset accepts lossy masks, for the error message
LOSSY_OPTION = "data.train_set.lossy_masks=true (data=folder)"

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


def dangling_target(path: Path) -> str | None:
    """``"<link> -> <target>"`` when ``path`` is a symbolic link whose target does not exist, else None."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        try:
            return f"{path} -> {os.readlink(path)}"
        except OSError:
            return str(path)
    return None


def broken_link(path: Path) -> str | None:
    """What is wrong with ``path`` when it is a symbolic link that leads to no file, else None:
    ``"dangling symlink: <link> -> <target> (...)"`` or ``"symlink loop: <link> -> <target> (...)"``."""
    link = dangling_target(path)
    if link is None:
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link to itself, or a cycle of links
            return f"symlink loop: {link} (following it leads back to a link, never to a file)"
    return f"dangling symlink: {link} (the file it points to does not exist)"


def _missing(path: Path) -> MissingFileError:
    return MissingFileError(broken_link(path) or f"image file not found: {path}")


def open_image(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Image.Image, ImageInfo]:
    """Open and decode ``path``; raise naming the file when it is missing (or a dangling symlink), unreadable,
    multi-page or over ``max_pixels`` pixels (checked from the header, before decoding)."""
    path = Path(path)
    try:
        with own_size_check():
            img = Image.open(path)
            info = header_info(img)
            check_size(info, path, max_pixels)
            check_pages(info, path)
            unturned = tiff_unturned(path) if info.format == "TIFF" and info.orientation != 1 else None
            if unturned is not None:
                img.close()
                img = Image.open(unturned)
            img.load()  # decode now: PIL is lazy and a truncated file would only fail later, far from its name
    except FileNotFoundError as err:
        raise _missing(path) from err
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, OSError) and err.errno == errno.ELOOP:
            raise _missing(path) from err
        raise UnreadableImageError(f"cannot read image file {path}: {err}") from err
    # the orientation PIL left to apply to its pixels (a PNG's eXIf may follow the pixels; PIL turns a TIFF
    # itself unless it was decoded unturned)
    pending = info.orientation if unturned is not None else exif_orientation(img, loaded=True)
    if img.format == "PNG" and info.orientation == 1:
        info = replace(info, orientation=pending)
    return img, replace(info, pending=pending)


def probe_image(path: Path) -> ImageInfo | None:
    """The facts in ``path``'s header (format, mode, stored size, bit depth, orientation, pages, lossy) without
    decoding it or applying any limit; None when it is not a readable image (reading it names the cause)."""
    try:
        with own_size_check(), Image.open(path) as img:
            return header_info(img)
    except Exception:  # noqa: BLE001 - any failure is reported, with the file's name, when the file is read
        return None


def load_image(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """``(uint8[H, W, 3] RGB as viewers show it, the file's facts)``: EXIF orientation applied, 16-bit and float
    samples scaled by their real range, grey / palette / CMYK converted, alpha dropped."""
    img, info = open_image(path, max_pixels)
    return image_rgb(img, info, Path(path)), info


def read_image(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """RGB image as ``uint8[H, W, 3]``, as image viewers show it (see :func:`load_image`)."""
    return load_image(path, max_pixels)[0]


def _mask_image(path: Path, lossy_ok: bool, max_pixels: int | None) -> tuple[Image.Image, ImageInfo]:
    img, info = open_image(path, max_pixels)
    if info.lossy and not lossy_ok:
        kind = "a JPEG-compressed TIFF" if info.format == "TIFF" else info.format
        raise DataError(f"mask file {path} is {kind}, a lossy format: its compression changes labels "
                        "along edges (and invents values between classes). Save masks as PNG, or accept them "
                        f"as they are with {LOSSY_OPTION}")
    return img, info


def read_label_png(path: Path, lossy_ok: bool = False,
                   max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Single-channel label map as ``int64[H, W]``, in the orientation viewers show.

    A palette ('P') image yields its palette indices (VOC style), a grey one its values as stored (8-bit,
    16-bit, or 1/2/4-bit), an integer-valued float TIFF its values. An RGB file is refused here because its
    colours need a colour table (``read_rgb_mask``); a lossy file (JPEG, lossy WebP) unless ``lossy_ok``.
    """
    img, info = _mask_image(Path(path), lossy_ok, max_pixels)
    if img.mode in ("RGB", "RGBA"):
        raise DataError(f"mask file {path} is an {img.mode} colour image; index masks must be single-channel "
                        "(grey or palette PNG). For colour masks set the colour table (mask_format: rgb)")
    refuse_transparency(img, Path(path), "the ignore index (data.ignore_index) or their class id")
    return index_values(img, info, Path(path))


def read_rgb_mask(path: Path, colors: Sequence[Sequence[int]], ignore_colors: Iterable[Sequence[int]] = (),
                  ignore_index: int = 255, lossy_ok: bool = False,
                  max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Colour mask -> ``int64[H, W]`` class indices: ``colors[k]`` is class ``k``'s RGB triple.

    Pixels in ``ignore_colors`` become ``ignore_index``; any other colour raises naming colour and file.
    """
    img, info = _mask_image(Path(path), lossy_ok, max_pixels)
    refuse_transparency(img, Path(path), "an ignore colour (data.ignore_colors) or their class colour")
    rgb = image_rgb(img, info, Path(path)).astype(np.int64)
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


def refuse_transparency(img: Image.Image, path: Path, paint: str) -> None:
    """Raise ``DataError`` when the mask ``img`` has an alpha channel (RGBA, LA, PA) with a pixel that is not
    fully opaque, naming the file and the counts. A transparent pixel's class is a guess: the colour or index
    stored beneath it (often 0, whatever the annotator meant), "not labelled" (ignore), or background. A
    palette or colour-key transparency (PNG tRNS) belongs to a stored value, which names the class: accepted."""
    if img.mode not in ("RGBA", "LA", "PA"):
        return
    alpha = np.asarray(img.getchannel("A"))
    clear = int((alpha < 255).sum())
    if clear:
        invisible = int((alpha == 0).sum())
        raise DataError(f"mask file {path} has {clear:,} of its {alpha.size:,} pixels not fully opaque ({invisible:,} "
                        f"fully transparent): which class a transparent pixel has is ambiguous (the value stored "
                        f"beneath it, 'not labelled', or background), so it is not guessed. Save the mask without "
                        f"alpha, painting those pixels with {paint}")


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


def size_mismatch(image_hw: Sequence[int], mask_hw: Sequence[int], image_path: Path | str, mask_path: Path | str,
                  orientation: int = 1) -> str | None:
    """The message for an image ``[H, W, ...]`` and a mask ``[H, W]`` of different sizes (None if they agree); when
    the mask has the image's stored size but the image's EXIF orientation turns it, the message says so."""
    (ih, iw), (mh, mw) = image_hw[:2], mask_hw[:2]
    if (ih, iw) == (mh, mw):
        return None
    message = f"size mismatch: image {image_path} is {iw}x{ih} (WxH) but mask {mask_path} is {mw}x{mh}"
    if orientation in SWAPS_AXES and (iw, ih) == (mh, mw):
        message += (f"; the image's EXIF orientation {orientation} turns it, as every image viewer does, and the "
                    "mask matches the unturned image: turn the mask the same way (or remove the tag from the image "
                    "if the mask is right)")
    return message


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path,
                    orientation: int = 1) -> None:
    """Raise if image ``[H, W, 3]`` and mask ``[H, W]`` differ in size, naming both files."""
    message = size_mismatch(image.shape, mask.shape, image_path, mask_path, orientation)
    if message:
        raise DataError(message)


def list_images(folder: Path, recursive: bool = False, dangling: bool = False) -> list[Path]:
    """Image files (any of ``IMAGE_EXTENSIONS``, case-insensitive) in ``folder``, sorted; with ``dangling``
    also symbolic links to files that do not exist (so that the reader names them)."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(folder).glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS
                  and (p.is_file() or (dangling and dangling_target(p) is not None)))


def read_list_file(path: Path, whole_lines: bool = False) -> tuple[list[str], list[str]]:
    """``(names, notes)`` from a split list: the first token of each non-blank line (``whole_lines``: the
    whole stripped line, for names with spaces). A byte-order mark (which Windows editors write and which would
    glue itself invisibly to the first name), CRLF line ends and trailing spaces are dropped; ``notes`` says
    when a BOM was."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"split list {path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as "
                        "UTF-8, one name per line") from err
    notes = []
    if "\ufeff" in text:
        notes.append(f"split list {path} holds an invisible byte-order mark (U+FEFF), ignored")
        text = text.replace("\ufeff", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines if whole_lines else [line.split()[0] for line in lines]), notes


def format_paths(paths: Sequence[Path | str], limit: int = 10) -> str:
    """A readable, bounded list of file names for error messages."""
    shown = "\n  ".join(str(p) for p in list(paths)[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"
