"""What an image file holds, decoded the way image viewers show it: the facts the reader in ``io.py`` acts on.

- **Orientation**: the EXIF orientation tag (JPEG, PNG ``eXIf``, TIFF, WebP) is applied, as every viewer and
  annotation tool displays the file (PIL ``ImageOps.exif_transpose``'s mapping, on the decoded array).
- **Bit depth**: 16-bit grey and colour samples are scaled to 8 bits by ``round(v * 255 / 65535)`` (PIL turns
  16-bit grey into all-white RGB and 16-bit colour into the high byte); 1/2/4-bit grey masks keep their
  stored values (PIL scales them to 0..255 for display).
- **Pages**: a multi-page file (TIFF pages, animated GIF / PNG / WebP) is refused: which page is meant is not
  ours to guess. A camera's MPO JPEG is not: its first picture is the photo, the others are previews.
- **GIF masks**: GIF stores palette indices only, and its writers renumber them, so a GIF index mask's class
  ids are the grey levels its palette shows (a grey mask saved as GIF); one with a colour palette is refused
  (read it by colour, ``mask_format: rgb``). A single-frame GIF image is read as any palette image.
- **Non-finite**: a float image or mask with NaN or inf samples is refused, naming how many.
- **Size**: a file over ``max_pixels`` (PIL's decompression-bomb limit by default) is refused before it is
  decoded, naming its size and the option that raises the limit.
"""

from __future__ import annotations

import io
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seg_template.errors import ConfigError, DataError

#: PIL's own default for ``Image.MAX_IMAGE_PIXELS`` (1024 * 1024 * 1024 // 4 // 3): about 89.5 Mpx
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: how to raise the limit, for the error message (dataset configs, predict.yaml)
LIMIT_OPTIONS = "data.train_set.max_image_pixels=<pixels> (val/test follow it) or predict's max_image_pixels=<pixels>"

EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> (what a viewer does to show it, numpy equivalent of PIL's Transpose on an [H, W, ...] array)
ORIENTATIONS = {
    2: ("mirrored left-right", lambda a: a[:, ::-1]),
    3: ("rotated 180°", lambda a: a[::-1, ::-1]),
    4: ("mirrored top-bottom", lambda a: a[::-1]),
    5: ("transposed", lambda a: a.swapaxes(0, 1)),
    6: ("rotated 90° clockwise", lambda a: np.rot90(a, -1)),
    7: ("transversed", lambda a: np.rot90(a, 2).swapaxes(0, 1)),
    8: ("rotated 90° counter-clockwise", lambda a: np.rot90(a, 1)),
}
#: the orientations that swap width and height
SWAPS_AXES = (5, 6, 7, 8)
#: TIFF compressions that lose information (PIL's names)
LOSSY_TIFF = ("jpeg", "tiff_jpeg", "webp")


@dataclass(frozen=True)
class ImageInfo:
    """The facts about one image file, read from its header: PIL ``format`` and ``mode``, the stored ``size``
    ``(W, H)``, ``bits`` per sample as stored, EXIF ``orientation`` (1: none), ``pages`` and ``lossy``.
    ``pending``: the orientation still to apply to the pixels PIL decodes (PIL turns a TIFF itself)."""

    format: str
    mode: str
    size: tuple[int, int]
    bits: int
    orientation: int
    pages: int
    lossy: bool
    pending: int = 1

    @property
    def displayed_size(self) -> tuple[int, int]:
        """``(W, H)`` as viewers show the file (after its orientation)."""
        return self.size[::-1] if self.orientation in SWAPS_AXES else self.size

    def describe_orientation(self) -> str:
        return f"EXIF orientation {self.orientation}: {ORIENTATIONS[self.orientation][0]}" \
            if self.orientation in ORIENTATIONS else "no EXIF orientation"


# ---- the size limit: ours, not PIL's global, so that it travels with each dataset / loader ---------------------

_limit_lock = threading.Lock()
_limit_users = 0
_pil_limit: int | None = None


@contextmanager
def own_size_check() -> Iterator[None]:
    """PIL's global bomb check lifted while our reader opens a file: the reader checks the header size itself,
    against the limit its caller configured (PIL's check would stop a legitimately raised limit, and only
    with a traceback). Counted, so that concurrent readers restore PIL's value once, when the last leaves."""
    global _limit_users, _pil_limit
    with _limit_lock:
        if _limit_users == 0:
            _pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit


def pixel_limit(value: Any, key: str = "data.train_set.max_image_pixels") -> int | None:
    """``max_image_pixels`` as a positive int, or None (no limit); a ``ConfigError`` naming ``key`` else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive number of pixels or null (no limit), got {value!r}, "
                          f"e.g. {key}={4 * DEFAULT_MAX_IMAGE_PIXELS}")
    return int(value)


def check_size(info: ImageInfo, path: Path, max_pixels: int | None) -> None:
    """Raise ``DataError`` when the file has more than ``max_pixels`` pixels (None: no limit)."""
    width, height = info.size
    if max_pixels is not None and width * height > int(max_pixels):
        raise DataError(f"image file {path} is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{int(max_pixels):,} that guards against decompression bombs (a small file that decodes "
                        f"to a huge image). If the image is genuine, raise the limit: {LIMIT_OPTIONS} "
                        "(null: no limit)")


def check_pages(info: ImageInfo, path: Path) -> None:
    if info.pages > 1 and info.format != "MPO":
        raise DataError(f"image file {path} holds {info.pages} pages/frames ({info.format}); only single-page "
                        "images are read, as which page is meant cannot be guessed: save the page you mean "
                        "as a file of its own")


# ---- facts from the header ------------------------------------------------------------------------------------

def _rawmode(img: Image.Image) -> str:
    """How the file stores its samples (``'I;16B'``, ``'RGB;16B'``, ``'L;4'``); only known before ``load()``."""
    if not img.tile:
        return img.mode
    args = img.tile[0].args
    return str(args[0] if isinstance(args, tuple) and args else args)


def _bits(img: Image.Image) -> int:
    tiff_bits = getattr(img, "tag_v2", {}).get(258) if img.format == "TIFF" else None
    if tiff_bits:
        return int(max(tiff_bits) if isinstance(tiff_bits, tuple) else tiff_bits)
    if img.mode in ("P", "PA"):
        return 8  # the index width of a palette says nothing about its colours
    found = re.search(r";(\d+)", _rawmode(img))
    if found:
        return int(found.group(1))
    return {"1": 1, "I": 32, "F": 32}.get(img.mode, 16 if img.mode.startswith("I;16") else 8)


def exif_orientation(img: Image.Image, loaded: bool) -> int:
    """The EXIF orientation tag of ``img`` (1 when absent, broken or not 2..8); PIL removes it from a TIFF once
    it has turned the pixels."""
    # a PNG's eXIf chunk may follow the pixel data: PIL's getexif() would then decode the file to find it
    if img.format == "PNG" and not loaded and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: viewers show the file as stored, so do we
        return 1
    return int(value) if value in ORIENTATIONS else 1


def _webp_is_lossy(img: Image.Image) -> bool:
    """A WebP's first image chunk: ``VP8 `` is lossy, ``VP8L`` lossless (``VP8X`` files list chunks first)."""
    fp = img.fp
    if fp is None:
        return True
    position = fp.tell()
    try:
        fp.seek(12)
        while True:
            header = fp.read(8)
            if len(header) < 8:
                return True  # no image chunk found: say lossy, the safe side for a mask
            fourcc, length = header[:4], int.from_bytes(header[4:], "little")
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8 "
            if fourcc == b"ANMF":  # an animation frame: its image chunk follows a 16-byte frame header
                fp.seek(16, 1)
                continue
            fp.seek(length + (length & 1), 1)
    finally:
        fp.seek(position)


def _lossy(img: Image.Image) -> bool:
    if img.format in ("JPEG", "MPO", "JPEG2000"):
        return True
    if img.format == "WEBP":
        return _webp_is_lossy(img)
    if img.format == "TIFF":
        return img.info.get("compression") in LOSSY_TIFF
    return False


def header_info(img: Image.Image, loaded: bool = False) -> ImageInfo:
    """What ``img`` (opened, ideally not yet loaded: the stored bit depth is only known before) holds."""
    orientation = exif_orientation(img, loaded)
    size = img.size
    if img.format == "TIFF" and orientation in SWAPS_AXES:
        size = size[::-1]  # PIL's TIFF reader reports the turned size from the start
    return ImageInfo(format=str(img.format), mode=img.mode, size=size, bits=_bits(img), orientation=orientation,
                     pages=int(getattr(img, "n_frames", 1) or 1), lossy=_lossy(img), pending=orientation)


def tiff_unturned(path: Path) -> io.BytesIO | None:
    """The TIFF file's bytes with its first page's orientation tag set to 1, or None (no such tag, a BigTIFF,
    a malformed file). PIL turns TIFF pixels itself while decoding, unreliably: PIL 13 scrambles 8- and 16-bit
    grey pages tagged 5..8. So the reader decodes them unturned and turns them itself, as every other format."""
    try:
        data = bytearray(Path(path).read_bytes())
        order = {b"II": "<", b"MM": ">"}[bytes(data[:2])]
        if struct.unpack(order + "H", data[2:4])[0] != 42:
            return None
        ifd = struct.unpack(order + "I", data[4:8])[0]
        for entry in range(struct.unpack(order + "H", data[ifd:ifd + 2])[0]):
            at = ifd + 2 + 12 * entry
            if struct.unpack(order + "HH", data[at:at + 4]) == (EXIF_ORIENTATION, 3):  # a SHORT
                data[at + 8:at + 10] = struct.pack(order + "H", 1)
                return io.BytesIO(bytes(data))
    except (KeyError, struct.error, OSError):
        pass
    return None


# ---- decoding ---------------------------------------------------------------------------------------------------

def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array[H, W, ...]`` turned as a viewer shows a file with that EXIF ``orientation``."""
    if orientation not in ORIENTATIONS:
        return array
    return np.ascontiguousarray(ORIENTATIONS[orientation][1](array))


def _scale16(values: np.ndarray) -> np.ndarray:
    """uint16 samples -> uint8 by ``round(v * 255 / 65535)``."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _colour16(path: Path) -> np.ndarray | None:
    """A 16-bit colour PNG / TIFF as ``uint16[H, W, 3]`` RGB read by OpenCV (PIL keeps only the high byte of
    each sample); None when OpenCV cannot read it."""
    import cv2

    data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3:
        return None
    if data.shape[2] <= 2:  # grey (+ alpha)
        return np.repeat(data[..., :1], 3, axis=2)
    return data[..., 2::-1]  # BGR (+ alpha): the alpha channel is dropped, as for 8-bit RGBA images


def _nonfinite(values: np.ndarray) -> str:
    """``"<n> NaN and <m> inf pixel(s) (of <total>)"`` for the non-finite samples of ``values``; ``""`` if none."""
    nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if not nan and not inf:
        return ""
    counts = " and ".join(f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
    return f"{counts} pixel(s) (of {values.size:,})"


def image_rgb(img: Image.Image, info: ImageInfo, path: Path) -> np.ndarray:
    """The loaded ``img`` as ``uint8[H, W, 3]`` RGB as viewers show it, scaled by its real bit depth."""
    rgb = orient(_pil_rgb(img, info, path), info.pending)
    if info.bits == 16 and img.mode in ("RGB", "RGBA", "LA"):
        wide = _colour16(path)
        # OpenCV turns a TIFF by its orientation tag but not a PNG by its eXIf chunk (4.x / 5.x): of the two
        # candidates, the one whose high bytes are PIL's (correctly turned) pixels is the right one
        for candidate in () if wide is None else (wide, orient(wide, info.orientation)):
            if candidate.shape == rgb.shape and np.array_equal(candidate >> 8, rgb):
                return _scale16(candidate)
    return rgb  # 16-bit colour that OpenCV could not read: PIL's high byte, within one level of rounding


def _pil_rgb(img: Image.Image, info: ImageInfo, path: Path) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        grey = _scale16(np.asarray(img).astype(np.uint16))
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "I":
        raise DataError(f"image file {path} holds {info.bits}-bit signed integers (mode I): no standard range maps "
                        "them to colours; save it as 8- or 16-bit unsigned")
    if mode == "F":
        values = np.asarray(img, dtype=np.float32)
        nonfinite = _nonfinite(values)
        if nonfinite:
            raise DataError(f"image file {path} holds {nonfinite}: they have no intensity to show or learn from; "
                            "replace them with numbers in [0, 1] (float images are read as [0, 1] intensities), or "
                            "save it as 8- or 16-bit")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (low >= 0.0 and high <= 1.0):
            raise DataError(f"image file {path} holds floating-point values in [{low:g}, {high:g}]; float images "
                            "are read as [0, 1] intensities: scale it to [0, 1], or save it as 8- or 16-bit")
        grey = np.rint(values * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


#: single-channel modes whose samples are the class ids
INDEX_MODES = ("P", "L", "1", "I", "F", "PA", "LA")


def index_values(img: Image.Image, info: ImageInfo, path: Path) -> np.ndarray:
    """The loaded ``img``'s samples as ``int64[H, W]`` class ids, exactly as stored, as viewers orient them."""
    mode = img.mode
    if mode not in INDEX_MODES and not mode.startswith("I;16"):
        raise DataError(f"mask file {path} is a {mode} image; index masks must be single-channel (grey, 16-bit "
                        "grey or palette PNG)")
    values = np.asarray(img)
    if mode in ("PA", "LA"):
        if info.bits > 8:
            raise DataError(f"mask file {path} is {info.bits}-bit grey + alpha; save it as a single-channel image")
        values = values[..., 0]  # the index / grey channel; alpha carries no class
    if mode in ("L", "LA") and info.bits < 8:
        values = values // (255 // (2 ** info.bits - 1))  # PIL stretched 1/2/4-bit grey to 0..255 for display
    if mode == "F" and _nonfinite(values):
        raise DataError(f"mask file {path} holds {_nonfinite(values)}; masks hold class ids: paint those pixels "
                        "with a class id or the ignore index")
    if mode == "F" and not np.array_equal(values, np.round(values)):
        raise DataError(f"mask file {path} holds non-integer floating-point values; masks hold class ids")
    if info.format == "GIF" and mode == "P":
        values = _gif_greys(img, values, path)
    return orient(values.astype(np.int64), info.pending)


def _gif_greys(img: Image.Image, indices: np.ndarray, path: Path) -> np.ndarray:
    """A GIF mask's class ids: the grey levels its palette shows. GIF stores every picture as palette indices,
    and writers renumber them (Pillow's GIF writer drops unused palette entries by default and renumbers the
    rest: a VOC mask's ignore index 255 comes back as a small class id), so the indices are not reliable class
    ids; the colours survive. A grey mask
    saved as GIF shows its ids as grey levels: those are read. A colour palette names no ids: refused."""
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    used = np.unique(indices)
    if used.size and int(used.max()) >= len(palette):
        palette = np.concatenate([palette, np.zeros((int(used.max()) + 1 - len(palette), 3), np.int64)])
    colours = palette[used]
    if not (colours == colours[:, :1]).all():
        shown = ", ".join(str(tuple(c)) for c in colours[:4].tolist()) + (" ..." if len(colours) > 4 else "")
        raise DataError(f"mask file {path} is a GIF with colours ({shown}): GIF writers renumber palette entries, "
                        "so its indices are not reliable class ids. Save masks as PNG (index or palette), or read "
                        "them by colour (data.train_set.mask_format=rgb with data.train_set.colors)")
    return palette[:, 0][indices]
