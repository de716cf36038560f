"""The one reader of images and masks: datasets, predict, the pre-flight, the dataset doctor and the class-weight
script all read files through these functions, so every file is decoded the same way and every problem is
reported naming the file.

An image arrives as viewers show it: EXIF orientation applied, 16-bit and float samples scaled by their real
range (``decoding.py``). A mask keeps its stored integer values (8-, 16- or 1/2/4-bit grey, palette indices)
and its EXIF orientation too; a lossy mask (JPEG, lossy WebP) is refused unless the dataset accepts them
explicitly, and so is a mask with an alpha channel that is not fully opaque (which class a transparent pixel
has is a guess). Multi-page files and files over the pixel limit are refused, naming the page count or the size;
an empty (0-byte) file is named as empty.

The one listing of image files is here too (``find_images``): datasets and predict take the files whose
extension is in ``IMAGE_EXTENSIONS``, follow folder links (each real folder once, loops not followed), and
get back what was left out (files with other extensions, links not followed) to name it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
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
#: (GIF: palette images, lossless; an animated one is refused as multi-page, as a multi-page TIFF is)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


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
        if _empty(path):
            raise UnreadableImageError(f"cannot read image file {path}: the file is empty (0 bytes), as an "
                                       "interrupted copy or download leaves one: copy it again") from err
        raise UnreadableImageError(f"cannot read image file {path}: {err}") from err
    # the orientation PIL left to apply to its pixels (a PNG's eXIf may follow the pixels; PIL turns a TIFF
    # itself unless it was decoded unturned)
    pending = info.orientation if unturned is not None else exif_orientation(img, loaded=True)
    if img.format == "PNG" and info.orientation == 1:
        info = replace(info, orientation=pending)
    return img, replace(info, pending=pending)


def _empty(path: Path) -> bool:
    """Whether ``path`` is a file of 0 bytes (PIL only says it "cannot identify" it)."""
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


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
                        "(grey or palette PNG). For colour masks give the colour table: data.train_set.mask_format=rgb "
                        "with data.train_set.colors")
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
                        f"({len(table)} colours: data.train_set.colors / data.train_set.ignore_colors)")
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


@dataclass
class ImageListing:
    """What :func:`find_images` found under a folder: ``files``, the image files (and, when asked, symbolic links
    named like images that lead to no file, so that the reader names them); ``left_out``, files whose extension
    is not read; ``skipped``, messages for what else was not listed (folder links not followed, dangling links
    without an image extension, folders that cannot be listed). Paths lie lexically under the folder listed,
    also those reached through a followed folder link."""

    files: list[Path] = field(default_factory=list)
    left_out: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def left_out_lines(self, limit: int = 5) -> list[str]:
        """One line per kind of thing left out, naming (up to ``limit`` of) them; empty when nothing was."""
        lines = []
        if self.left_out:
            shown = ", ".join(str(p) for p in self.left_out[:limit])
            more = f", ... and {len(self.left_out) - limit} more" if len(self.left_out) > limit else ""
            lines.append(f"{len(self.left_out)} file(s) with extensions that are not read left out (read: "
                         f"{' '.join(IMAGE_EXTENSIONS)}): {shown}{more}")
        lines += self.skipped
        return lines


def find_images(folder: Path, recursive: bool = False, dangling: bool = False) -> ImageListing:
    """List the image files (any of ``IMAGE_EXTENSIONS``, case-insensitive) in ``folder``, and with ``recursive``
    in its sub-folders, sorted: the one listing that datasets and predict share.

    Folder links are followed (Python's recursive glob does not), each real folder once: a link that leads to
    a folder holding the link (a loop) or to a folder already listed is not followed, and named in
    ``skipped``. Files with other extensions are returned in ``left_out`` (hidden files, whose names start with
    a dot, such as ``.DS_Store``, are not named); hidden folders (``.git``) are not searched. With ``dangling``, symbolic links named like images that lead
    to no file are listed too (so that the reader names them); otherwise, and for other names, they are named
    in ``skipped``."""
    root = Path(folder)
    found = ImageListing()
    listed: dict[tuple[int, int], Path] = {}  # (device, inode) of each folder listed -> the path it was listed as
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            stat = directory.stat()
            key = (stat.st_dev, stat.st_ino)
            if key in listed:  # a folder reached twice (through a link): listed once, where first met
                found.skipped.append(f"folder {directory} is {listed[key]}, already listed (a folder link leads "
                                     "there): not listed twice")
                continue
            listed[key] = directory
            with os.scandir(directory) as entries:
                items = sorted(entries, key=lambda e: e.name)
        except OSError as err:
            found.skipped.append(f"folder {directory} cannot be listed ({err.strerror or err}): left out")
            continue
        subfolders = []
        for entry in items:
            path = directory / entry.name
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:
                is_dir = is_file = False
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS
            if is_dir:
                if recursive and not entry.name.startswith("."):  # hidden folders (.git, .ipynb_checkpoints)
                    loop = entry.is_symlink() and _holds(path, directory)
                    if loop:
                        found.skipped.append(f"folder link not followed: {path} -> {os.readlink(path)} is a symlink "
                                             "loop (it leads to a folder that holds the link)")
                    else:
                        subfolders.append(path)
            elif is_file:
                if is_image:
                    found.files.append(path)
                elif not entry.name.startswith("."):
                    found.left_out.append(path)
            elif entry.is_symlink():
                if is_image and dangling:
                    found.files.append(path)  # the reader names it as a dangling link or a loop
                else:
                    found.skipped.append(f"{broken_link(path) or f'symlink {path} leads to no file'}: left out")
        pending += reversed(subfolders)
    found.files.sort()
    found.left_out.sort()
    return found


def _holds(link: Path, directory: Path) -> bool:
    """Whether the folder that ``link`` leads to holds ``directory`` (or is it): following it would loop."""
    try:
        return Path(os.path.realpath(directory)).is_relative_to(os.path.realpath(link))
    except (OSError, ValueError):
        return True


def list_images(folder: Path, recursive: bool = False, dangling: bool = False) -> list[Path]:
    """The image files of :func:`find_images` (``recursive``: sub-folders too, folder links followed); with
    ``dangling`` also symbolic links named like images that lead to no file (so that the reader names them)."""
    return find_images(folder, recursive, dangling).files


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
