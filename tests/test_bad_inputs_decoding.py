"""Catalogue of bad inputs, family "decoding" (issue 17): what a file holds is decoded right, by the one reader
(``seg_template/data/io.py``) that datasets, predict, the pre-flight and the dataset doctor share.

Each case builds its files in a tmp folder and asserts the right outcome (an image upright, samples scaled by
their real depth, a mask's values kept) or one short message naming the file (a ``UserError``), and that the
dataset doctor (``scripts/check_dataset.py``) never says "OK: no problems found" on any of them.

    pytest tests/test_bad_inputs_decoding.py -v          # the family; -m slow adds the real scripts
"""

from __future__ import annotations

import functools
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from seg_template.cli import user_message
from seg_template.data.datamodule import SegDataModule
from seg_template.data.decoding import orient
from seg_template.data.doctor import check_dataset, format_report
from seg_template.data.folder import FolderDataset
from seg_template.data.io import read_image, read_label_png, read_rgb_mask
from seg_template.data.transforms import eval_transform
from seg_template.data.voc import VOCDataset
from seg_template.errors import DataError, MissingFileError
from seg_template.predict import run_predict
from seg_template.predict_inputs import image_loader, input_files
from seg_template.train import train
from tests.bad_input_files import FOLDER, PREDICT, Workspace, assert_short_named, raised_user_error
from tests.fixtures import folder_class_names, make_folder, make_voc
from tests.helpers import data_cfg, run_script

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

NAMES = folder_class_names(3)
H, W = 32, 48  # make_folder's default size: the displayed size every image of a case must have


# ---- file writers --------------------------------------------------------------------------------------------

def scene(h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """An upright ``(rgb uint8[h, w, 3], mask uint8[h, w])``: four quadrants of distinct colours and classes
    (top-left red = 1, top-right green = 2, bottom-left blue = 0, bottom-right yellow = 1)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for (rows, cols), colour, label in (((slice(0, h // 2), slice(0, w // 2)), (255, 0, 0), 1),
                                        ((slice(0, h // 2), slice(w // 2, w)), (0, 255, 0), 2),
                                        ((slice(h // 2, h), slice(0, w // 2)), (0, 0, 255), 0),
                                        ((slice(h // 2, h), slice(w // 2, w)), (255, 255, 0), 1)):
        rgb[rows, cols], mask[rows, cols] = colour, label
    return rgb, mask


#: what a file must store so that a viewer applying its EXIF orientation shows the upright array
STORED = {6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1), 3: lambda a: a[::-1, ::-1]}


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def save_exif(path: Path, upright: np.ndarray, orientation: int) -> Path:
    """``upright`` stored turned, with the EXIF orientation that turns it back (JPEG for images, PNG for masks)."""
    stored = np.ascontiguousarray(STORED[orientation](upright))
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(stored).save(path, exif=exif(orientation), **options)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, width: int = 10_000, height: int = 10_000) -> Path:
    """A PNG whose header says ``width x height`` (100 Mpx: over PIL's limit) but holds almost no data: the
    shape of a decompression bomb, in 60 bytes. A reader that decodes it before checking would fail."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + _chunk(b"IEND", b""))
    return path


def ramp16(h: int = H, w: int = W, channels: int = 1) -> np.ndarray:
    """``uint16[h, w(, c)]`` spanning 0..65535 (every value of a channel distinct enough to tell rounding)."""
    values = np.linspace(0, 65535, h * w * channels).round().astype(np.uint16)
    return values.reshape((h, w, channels) if channels > 1 else (h, w))


def scaled(values: np.ndarray) -> np.ndarray:
    """What the reader must give for 16-bit samples: ``round(v * 255 / 65535)``."""
    return np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def folder(tmp_path: Path, **kwargs) -> Path:
    return make_folder(tmp_path / "data", splits={"train": 3, "val": 1}, **kwargs)


def replace_image(root: Path, new_name: str, write: Callable[[Path], object], old: str = "train_000.jpg") -> Path:
    (root / "images" / "train" / old).unlink()
    path = root / "images" / "train" / new_name
    write(path)
    return path


def dataset(root: Path, **kwargs) -> FolderDataset:
    return FolderDataset(root, kwargs.pop("class_names", NAMES), kwargs.pop("split", "train"), **kwargs)


def doctor(root: Path, *overrides: str, num_classes: int = 3) -> tuple[str, list]:
    """The dataset doctor on a folder root: ``(printed report, reports)``."""
    names = ",".join(folder_class_names(num_classes))
    reports = check_dataset(data_cfg("folder", root, f"data.num_classes={num_classes}",
                                     f"data.class_names=[{names}]", *overrides))
    return format_report(reports, folder_class_names(num_classes)), reports


# ---- EXIF orientation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_photo_reaches_the_model_upright(tmp_path: Path, orientation: int) -> None:
    """A phone JPEG stored sideways with orientation 6 / 8 and a mask drawn on the upright picture: every
    quadrant of the image arrives where its class is (square, so a size check could never have told)."""
    root = folder(tmp_path, size=(32, 32))
    rgb, mask = scene(32, 32)
    path = replace_image(root, "train_000.jpg", lambda p: save_exif(p, rgb, orientation))
    Image.fromarray(mask).save(root / "masks" / "train" / "train_000.png")
    stored = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert np.abs(stored - rgb).mean() > 50  # read as stored (the old reader), every quadrant was elsewhere
    sample = dataset(root)[0]
    image = (sample["image"].numpy().transpose(1, 2, 0) * 255).round().astype(int)
    inner = np.ones((32, 32), bool)  # away from the quadrant borders, where JPEG's chroma subsampling blurs
    inner[12:20], inner[:, 12:20] = False, False
    assert np.abs(image - rgb)[inner].max() < 40 and np.abs(image - rgb).mean() < 8
    assert np.array_equal(sample["mask"].numpy(), mask)
    text, _ = doctor(root)
    assert f"{path} (EXIF orientation {orientation}:" in text and "OK: no problems found" not in text


def test_exif_on_a_mask_is_applied_too(tmp_path: Path) -> None:
    _, mask = scene()
    path = save_exif(tmp_path / "mask.png", mask, 6)
    assert Image.open(path).size == (H, W)  # stored sideways
    assert np.array_equal(read_label_png(path), mask)


def test_exif_size_mismatch_says_the_mask_matches_the_stored_image(tmp_path: Path) -> None:
    """A mask drawn on the sideways (stored) picture: refused, and the message says why the sizes differ."""
    root = folder(tmp_path)
    rgb, _ = scene()
    path = replace_image(root, "train_000.jpg", lambda p: save_exif(p, rgb, 6))
    Image.fromarray(np.zeros((W, H), np.uint8)).save(root / "masks" / "train" / "train_000.png")
    err = raised_user_error(lambda: dataset(root)[0])
    assert isinstance(err, DataError)
    assert_short_named(user_message(err), rf"size mismatch: image {re.escape(str(path))}.*EXIF orientation 6.*"
                                          "unturned image")


def test_predict_writes_masks_in_the_displayed_orientation(compose_cfg, tmp_path: Path) -> None:
    """Stored 40x24 (WxH) with orientation 6: displayed 24x40, and so are its mask, colours and overlay."""
    images = tmp_path / "images"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (40, 24, 3), dtype=np.uint8)  # upright: 24 wide, 40 high
    save_exif(images / "phone.jpg", rgb, 6)
    assert Image.open(images / "phone.jpg").size == (40, 24)
    workspace = Workspace(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    out = tmp_path / "out"
    cfg = compose_cfg("predict", [*PREDICT, "device=cpu", f"ckpt_path={workspace['good']}", f"input={images}"],
                      output_dir=out)
    cfg.output_dir = str(out)
    run_predict(cfg, [])
    assert np.asarray(Image.open(out / "masks" / "phone.png")).shape == (40, 24)
    assert np.asarray(Image.open(out / "color" / "phone.png")).shape[:2] == (40, 24)


def _png_rgb48_exif(path: Path, values: np.ndarray, orientation: int) -> None:
    """A 48-bit PNG (OpenCV writes it; PIL cannot) with an eXIf chunk before its pixels."""
    ok, data = cv2.imencode(".png", values[..., ::-1])
    data = data.tobytes()
    at = data.index(b"IDAT") - 4
    Path(path).write_bytes(data[:at] + _chunk(b"eXIf", exif(orientation)[6:]) + data[at:])  # no "Exif\0\0"


def _tiff_rgb48(path: Path, values: np.ndarray, orientation: int) -> None:
    """An uncompressed 16-bit RGB TIFF with an orientation tag, written field by field (neither PIL nor
    OpenCV writes one)."""
    h, w, _ = values.shape
    pixels = values.astype("<u2").tobytes()
    bits_at, pixels_at = 8 + 2 + 12 * 11 + 4, 8 + 2 + 12 * 11 + 4 + 6

    def short(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    def long(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    entries = [long(256, w), long(257, h), struct.pack("<HHII", 258, 3, 3, bits_at), short(259, 1), short(262, 2),
               long(273, pixels_at), short(274, orientation), short(277, 3), long(278, h), long(279, len(pixels)),
               short(284, 1)]
    Path(path).write_bytes(b"II" + struct.pack("<HIH", 42, 8, len(entries)) + b"".join(entries)
                           + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels)


def _pil_exif(suffix: str, dtype, channels: int = 1):
    def write(path: Path, values: np.ndarray, orientation: int) -> None:
        Image.fromarray(values).save(path.with_suffix(suffix), exif=exif(orientation))
    return suffix, dtype, channels, write


#: format -> (suffix, sample type, channels, writer(path, stored values, orientation))
ORIENTED_FORMATS = {
    "png_grey": _pil_exif(".png", np.uint8), "tiff_grey": _pil_exif(".tif", np.uint8),
    "tiff_grey16": _pil_exif(".tif", np.uint16), "tiff_rgb": _pil_exif(".tif", np.uint8, 3),
    "png_rgb48": (".png", np.uint16, 3, _png_rgb48_exif), "tiff_rgb48": (".tif", np.uint16, 3, _tiff_rgb48),
}
#: the orientation that undoes each one (6 and 8 undo each other; the others undo themselves)
UNDO = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def test_orientations_are_those_of_pil() -> None:
    """The reader turns decoded arrays itself: each orientation does what PIL's ``exif_transpose`` does."""
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for orientation in range(2, 9):
        stored = Image.fromarray(array)
        stored.getexif()[0x0112] = orientation
        assert np.array_equal(orient(array, orientation), np.asarray(ImageOps.exif_transpose(stored)))


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("fmt", ORIENTED_FORMATS)
def test_every_format_arrives_as_displayed(tmp_path: Path, fmt: str, orientation: int) -> None:
    """PNG eXIf, TIFF tags (PIL 13 turns 8/16-bit grey TIFFs tagged 5..8 into scrambled pixels itself; OpenCV
    turns TIFFs but not PNGs): whatever the libraries do, the reader gives the displayed array."""
    suffix, dtype, channels, write = ORIENTED_FORMATS[fmt]
    shape = (4, 6, channels) if channels > 1 else (4, 6)
    upright = np.random.default_rng(orientation).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    path = tmp_path / f"file{suffix}"
    write(path, orient(upright, UNDO[orientation]), orientation)
    if channels == 1:
        assert np.array_equal(read_label_png(path), upright)
    expected = scaled(upright) if dtype == np.uint16 else upright
    expected = expected if channels > 1 else np.repeat(expected[..., None], 3, axis=2)
    assert np.array_equal(read_image(path), expected)


# ---- bit depth ---------------------------------------------------------------------------------------------------

def _grey16_png(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values).save(path)  # PIL writes uint16 arrays as 16-bit grey (mode I;16)


def _rgb48_png(path: Path, values: np.ndarray) -> None:
    cv2.imwrite(str(path), values[..., ::-1])  # OpenCV writes uint16 BGR as a 48-bit PNG / 16-bit RGB TIFF


@pytest.mark.parametrize(("suffix", "write", "values"), [
    (".png", _grey16_png, ramp16()),
    (".tif", _grey16_png, ramp16()),
    (".png", _rgb48_png, ramp16(channels=3)),
    (".tif", _rgb48_png, ramp16(channels=3)),
], ids=["grey16_png", "grey16_tiff", "rgb48_png", "rgb48_tiff"])
def test_16_bit_images_are_scaled_by_their_depth(tmp_path: Path, suffix: str, write, values: np.ndarray) -> None:
    """Not all white (16-bit grey through PIL's RGB conversion), not the high byte (PIL's 16-bit colour):
    ``round(v * 255 / 65535)``, through the reader and through a dataset."""
    root = folder(tmp_path)
    path = replace_image(root, f"train_000{suffix}", lambda p: write(p, values))
    expected = scaled(values if values.ndim == 3 else np.repeat(values[..., None], 3, axis=2))
    assert np.array_equal(read_image(path), expected)
    image = dataset(root)[0]["image"].numpy().transpose(1, 2, 0)
    assert np.array_equal((image * 255).round().astype(np.uint8), expected)
    assert (expected == 255).mean() < 0.01  # the old all-white image
    text, _ = doctor(root)
    assert f"{path} (16-bit" in text and "OK: no problems found" not in text


def test_float_image_outside_0_1_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((4, 4), 300.0, np.float32)).save(path)
    err = raised_user_error(lambda: read_image(path))
    assert_short_named(user_message(err), rf"{re.escape(str(path))} holds floating-point values in \[300, 300\]")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)  # [0, 1] intensities are read as such
    assert (read_image(path) == 128).all()


def test_4_bit_and_16_bit_index_masks_keep_their_values(tmp_path: Path) -> None:
    mask = np.arange(16, dtype=np.uint8).reshape(2, 8)
    Image.fromarray(mask).save(tmp_path / "m4.png", bits=4)  # PIL reads 4-bit grey as 0, 17, 34 ... 255
    assert Image.open(tmp_path / "m4.png").tile[0].args == "L;4"
    assert np.array_equal(read_label_png(tmp_path / "m4.png"), mask)
    wide = (np.arange(16, dtype=np.uint16) * 1000).reshape(2, 8)
    Image.fromarray(wide).save(tmp_path / "m16.png")
    assert np.array_equal(read_label_png(tmp_path / "m16.png"), wide)


# ---- lossy masks ---------------------------------------------------------------------------------------------------

def _jpeg_mask(root: Path) -> Path:
    png = root / "masks" / "train" / "train_001.png"
    path = png.with_suffix(".jpg")
    Image.open(png).convert("L").save(path, quality=90)
    png.unlink()
    return path


def test_jpeg_mask_is_refused_naming_the_file(tmp_path: Path) -> None:
    root = folder(tmp_path)
    path = _jpeg_mask(root)
    err = raised_user_error(lambda: dataset(root))
    assert isinstance(err, DataError)
    assert_short_named(user_message(err), rf"lossy mask \(JPEG\): {re.escape(str(path))}.*lossy_masks=true")
    accepted = dataset(root, lossy_masks=True)  # explicitly: read as they are
    assert accepted[1]["mask"].shape == (H, W)
    text, _ = doctor(root)
    assert f"lossy mask (JPEG): {path}" in text and "FAILED" in text
    text, _ = doctor(root, "data.train_set.lossy_masks=true")
    assert f"{path} (JPEG)" in text and "OK: no problems found" not in text


def test_jpeg_mask_stops_training_even_with_a_full_preflight(compose_cfg, tmp_path: Path) -> None:
    """It used to pass ``data.preflight=full`` and train on labels the compression had changed."""
    root = folder(tmp_path)
    path = _jpeg_mask(root)
    cfg = compose_cfg("train", [*FOLDER, f"data.root={root}", "data.preflight=full"], output_dir=tmp_path / "out")
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, DataError)
    assert_short_named(user_message(err), rf"lossy mask \(JPEG\): {re.escape(str(path))}")


def test_png_named_mask_holding_a_jpeg_is_refused(tmp_path: Path) -> None:
    """The format is read from the file, not its name (a VOC mask re-saved by a careless tool)."""
    root = make_voc(tmp_path, splits={"train": 2, "val": 1})
    mask = root / "VOCdevkit/VOC2012/SegmentationClass/2007_train_0000.png"
    Image.open(mask).convert("L").save(mask, format="JPEG")
    err = raised_user_error(lambda: VOCDataset(root, "train")[0])
    assert_short_named(user_message(err), rf"mask file {re.escape(str(mask))} is JPEG, a lossy format")


def test_lossy_webp_mask_is_refused_lossless_accepted(tmp_path: Path) -> None:
    """WebP may be either: its header says (``VP8 `` lossy, ``VP8L`` lossless). WebP has no grey mode, so a
    colour mask is the WebP case."""
    _, mask = scene()
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    rgb = np.asarray(colours, np.uint8)[mask]
    Image.fromarray(rgb).save(tmp_path / "lossy.webp", quality=80)
    Image.fromarray(rgb).save(tmp_path / "lossless.webp", lossless=True)
    err = raised_user_error(lambda: read_rgb_mask(tmp_path / "lossy.webp", colours))
    assert_short_named(user_message(err), r"lossy\.webp is WEBP, a lossy format")
    assert np.array_equal(read_rgb_mask(tmp_path / "lossless.webp", colours), mask)


# ---- pages and size --------------------------------------------------------------------------------------------------

def _three_pages(path: Path) -> None:
    pages = [Image.fromarray(np.full((H, W, 3), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def test_multi_page_tiff_is_refused_naming_the_page_count(compose_cfg, tmp_path: Path) -> None:
    root = folder(tmp_path)
    path = replace_image(root, "train_000.tif", _three_pages)
    cfg = compose_cfg("train", [*FOLDER, f"data.root={root}", "data.preflight=full"], output_dir=tmp_path / "out")
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, DataError)
    assert_short_named(user_message(err), rf"{re.escape(str(path))} holds 3 pages/frames \(TIFF\)")


def test_animated_png_mask_is_refused(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 1)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    err = raised_user_error(lambda: read_label_png(tmp_path / "anim.png"))
    assert_short_named(user_message(err), r"anim\.png holds 2 pages/frames \(PNG\)")


def test_bomb_sized_image_stops_training_naming_file_and_size(compose_cfg, tmp_path: Path) -> None:
    root = folder(tmp_path)
    path = replace_image(root, "train_000.png", huge_png)
    limit = Image.MAX_IMAGE_PIXELS
    cfg = compose_cfg("train", [*FOLDER, f"data.root={root}", "data.preflight=full"], output_dir=tmp_path / "out")
    err = raised_user_error(lambda: train(cfg))
    assert_short_named(user_message(err), rf"{re.escape(str(path))} is 10000x10000 = 100,000,000 pixels, over "
                                          r"the limit of 89,478,485.*data\.train_set\.max_image_pixels")
    assert limit == Image.MAX_IMAGE_PIXELS  # PIL's own limit is left as it was


def test_pixel_limit_is_an_option(tmp_path: Path) -> None:
    """Lowered through the dataset option (no huge file needed), it refuses; raised, it reads."""
    root = folder(tmp_path)
    err = raised_user_error(lambda: dataset(root, max_image_pixels=1000)[0])
    assert_short_named(user_message(err), rf"train_000\.jpg is {W}x{H} = {W * H:,} pixels, over the limit of 1,000")
    assert dataset(root, max_image_pixels=W * H)[0]["image"].shape == (3, H, W)
    text, _ = doctor(root, "data.train_set.max_image_pixels=1000")
    assert "over the limit of 1,000" in text and "FAILED" in text


def test_predict_names_and_skips_a_bomb_sized_image(compose_cfg, tmp_path: Path) -> None:
    """It used to stop the run with a 43-line DecompressionBombError traceback."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(images / name)
    huge_png(images / "b.png")
    workspace = Workspace(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    out = tmp_path / "out"
    cfg = compose_cfg("predict", [*PREDICT, "device=cpu", f"ckpt_path={workspace['good']}", f"input={images}"],
                      output_dir=out)
    cfg.output_dir = str(out)
    err = raised_user_error(lambda: run_predict(cfg, []))
    assert_short_named(user_message(err), r"1 of 3 input images .*b\.png is 10000x10000")
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "c.png"]


def test_predict_loader_takes_the_pixel_limit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, size in (("small.png", (10, 10)), ("large.png", (40, 40))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    loader = functools.partial(image_loader, input_files(str(tmp_path)), lambda image: {"image": image},
                               batch_size=2, num_workers=0)
    batches = list(loader(max_image_pixels=1000))
    assert [b["name"] for b in batches if "image" in b] == [["small.png"]]
    (errors,) = [b["errors"] for b in batches if b["errors"]]
    assert errors[0][0].endswith("large.png") and "40x40 = 1,600 pixels" in errors[0][1]
    assert sum(len(b["name"]) for b in loader(max_image_pixels=None)) == 2


# ---- split lists and links --------------------------------------------------------------------------------------------

def test_bom_crlf_and_trailing_spaces_in_a_split_list(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", splits={"train": 3, "val": 1}, split_mode="lists")
    names = ["train_000", "train_001", "train_002"]
    (root / "splits" / "train.txt").write_bytes(("\ufeff" + "".join(f"{n}  \r\n" for n in names)).encode())
    assert [s[0].stem for s in dataset(root).samples] == names  # the BOM used to hide train_000
    text, _ = doctor(root)
    assert "byte-order mark" in text and "OK: no problems found" not in text


def test_listed_name_not_found_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", splits={"train": 2, "val": 1}, split_mode="lists")
    (root / "splits" / "train.txt").write_text("train_000\ntrain_0001\n")
    err = raised_user_error(lambda: dataset(root))
    assert_short_named(user_message(err), r"listed in .*train\.txt but no image .*train_0001")


def test_dangling_symlink_is_named_as_such(compose_cfg, tmp_path: Path) -> None:
    root = folder(tmp_path)
    link = root / "images" / "train" / "train_001.jpg"
    link.unlink()
    os.symlink(tmp_path / "moved" / "train_001.jpg", link)
    cfg = compose_cfg("train", [*FOLDER, f"data.root={root}"], output_dir=tmp_path / "out")
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, MissingFileError)
    message = user_message(err)
    assert_short_named(message, rf"dangling symlink: {re.escape(str(link))} -> {re.escape(str(tmp_path / 'moved'))}")
    assert "mask without image" not in message
    text, _ = doctor(root)
    assert "dangling symlink" in text and "mask without image" not in text and "FAILED" in text


def test_split_list_names_with_spaces(tmp_path: Path) -> None:
    """A line names the file with its spaces when there is one (``my img`` -> ``images/my img.png``; it used to
    look for ``my.<ext>``), else its first word (lists that add a column after the name)."""
    root = make_folder(tmp_path / "data", splits={"train": 3, "val": 1}, split_mode="lists")
    for folder_name in ("images", "masks"):
        suffix = ".jpg" if folder_name == "images" else ".png"
        (root / folder_name / f"train_000{suffix}").rename(root / folder_name / f"my img{suffix}")
    (root / "splits" / "train.txt").write_text("my img\ntrain_001.jpg train_001.png\ntrain_002 \n")
    assert [s[0].name for s in dataset(root).samples] == ["my img.jpg", "train_001.jpg", "train_002.jpg"]
    text, _ = doctor(root)
    assert text.splitlines()[-1] == "OK: no problems found", text
    (root / "splits" / "train.txt").write_text("my image\ntrain_001\n")
    err = raised_user_error(lambda: dataset(root))
    assert_short_named(user_message(err), r"listed in .*train\.txt but no image '.*/images/my image\.<ext>' \(the "
                                          r"whole line\) nor '.*/images/my\.<ext>' \(its first word\)")


def test_symlink_loop_is_named_as_one(compose_cfg, tmp_path: Path) -> None:
    root = folder(tmp_path)
    for link in (root / "images" / "train" / "loop.jpg", root / "masks" / "train" / "loop.png"):
        os.symlink(link.name, link)  # a link to itself
    cfg = compose_cfg("train", [*FOLDER, f"data.root={root}"], output_dir=tmp_path / "out")
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, MissingFileError)
    message = user_message(err)
    assert_short_named(message, r"symlink loop: .*images/train/loop\.jpg -> loop\.jpg \(following it leads back")
    assert "does not exist" not in message
    text, _ = doctor(root)
    assert "ERROR symlink loop: " in text and "does not exist" not in text and "FAILED" in text
    with pytest.raises(MissingFileError, match=r"input=.*loop\.jpg is a symlink loop: "):
        input_files(str(root / "images" / "train" / "loop.jpg"))
    with pytest.raises(MissingFileError, match=r"symlink loop: .*loop\.jpg -> loop\.jpg"):
        read_image(root / "images" / "train" / "loop.jpg")


# ---- predict: two inputs, one output name ----------------------------------------------------------------------------

def _same_output(tmp_path: Path) -> Path:
    inputs = tmp_path / "in"
    for name in ("a.png", "a.jpg", "a.PNG", "other/b.png", "more/b.png"):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(inputs / name, format="PNG")
    return inputs


@pytest.mark.parametrize(("spec", "culprit"), [
    ("{in}", r"masks/a\.png: .*a\.PNG, .*a\.jpg, .*a\.png: names that differ only in their extension, in one folder; "
             r".*rename all but one"),
    (["{in}/a.png", "{in}/a.png"], r"masks/a\.png: .*in/a\.png: the same file given more than once.*give each image once"),
    (["{in}", "{in}/a.jpg"], r"in/a\.jpg: the same file given more than once"),
    (["{in}/other/b.png", "{in}/more/b.png"], r"masks/b\.png: .*other/b\.png, .*more/b\.png: the same file name in "
                                              r"different folders; pass their common parent folder .*/in instead"),
], ids=["extensions_in_one_folder", "listed_twice", "folder_and_file", "different_folders"])
def test_predict_inputs_with_one_output_name_are_named(tmp_path: Path, spec, culprit: str) -> None:
    inputs = _same_output(tmp_path)
    if isinstance(spec, str):
        spec = spec.format(**{"in": inputs})
    else:
        spec = [s.format(**{"in": inputs}) for s in spec]
    err = raised_user_error(lambda: input_files(spec))
    assert_short_named(user_message(err), culprit)


def test_predict_with_one_output_name_writes_nothing(compose_cfg, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    out = tmp_path / "out"
    cfg = compose_cfg("predict", [*PREDICT, "device=cpu", f"ckpt_path={workspace['good']}",
                                  f"input={_same_output(tmp_path)}"], output_dir=out)
    cfg.output_dir = str(out)
    err = raised_user_error(lambda: run_predict(cfg, []))
    assert_short_named(user_message(err), r"masks/a\.png: .*differ only in their extension")
    assert not list(out.rglob("*.png"))


# ---- transparent masks ---------------------------------------------------------------------------------------------------

COLOURS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]  # make_folder's first three class colours
RGB_MASKS = ["data.train_set.mask_format=rgb", f"data.train_set.colors={COLOURS}".replace(" ", "")]


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")


def test_rgba_colour_mask_with_transparent_pixels_is_refused(compose_cfg, tmp_path: Path) -> None:
    """A painted layer exported with its unpainted pixels transparent: their RGB beneath is (0, 0, 0), which
    used to become class 0 without a word. Whether they mean background or "not labelled" is not guessed."""
    root = make_folder(tmp_path / "data", splits={"train": 3, "val": 1}, mask_format="rgb")
    mask_path = root / "masks" / "train" / "train_000.png"
    rgb = np.asarray(Image.open(mask_path).convert("RGB"))
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:4] = 0  # four transparent rows (RGB (0, 0, 0) beneath), one half-transparent pixel
    alpha[10, 10] = 128
    _rgba(np.where(alpha[..., None] == 0, 0, rgb), alpha).save(mask_path)
    cfg = compose_cfg("train", [*FOLDER, f"data.root={root}", *RGB_MASKS, "data.preflight=full"],
                      output_dir=tmp_path / "out")
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, DataError)
    assert_short_named(user_message(err), rf"mask file .*train_000\.png has {4 * W + 1} of its {H * W:,} pixels not "
                                          rf"fully opaque \({4 * W} fully transparent\).*ambiguous.*without alpha.*"
                                          r"data\.ignore_colors")
    text, _ = doctor(root, *RGB_MASKS)
    assert "not fully opaque" in text and "FAILED" in text


def test_opaque_rgba_and_palette_transparency_keep_their_classes(tmp_path: Path) -> None:
    """An alpha channel that is opaque everywhere says nothing: read as RGB. A palette entry marked transparent
    (PNG tRNS) belongs to an index, which is the class: kept."""
    rgb = np.asarray(COLOURS, np.uint8)[np.array([[0, 1], [2, 1]])]
    _rgba(rgb, np.full((2, 2), 255)).save(tmp_path / "opaque.png")
    assert read_rgb_mask(tmp_path / "opaque.png", COLOURS).tolist() == [[0, 1], [2, 1]]
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    palette.putpalette([v for c in COLOURS for v in c])
    palette.save(tmp_path / "trns.png", transparency=0)
    assert read_label_png(tmp_path / "trns.png").tolist() == [[0, 1], [2, 1]]


def test_grey_alpha_index_mask_with_a_transparent_pixel_is_refused(tmp_path: Path) -> None:
    values = np.array([[0, 1], [2, 1]], np.uint8)  # (PNG has no palette + alpha mode: PA never reaches a file)
    Image.fromarray(np.dstack([values, np.array([[255, 0], [255, 255]], np.uint8)]), "LA").save(tmp_path / "la.png")
    err = raised_user_error(lambda: read_label_png(tmp_path / "la.png"))
    assert_short_named(user_message(err), r"la\.png has 1 of its 4 pixels not fully opaque \(1 fully "
                                          r"transparent\).*data\.ignore_index")


# ---- class names and the ignore index ----------------------------------------------------------------------------------

def test_doctor_reports_repeated_class_names(tmp_path: Path) -> None:
    root = folder(tmp_path)
    reports = check_dataset(data_cfg("folder", root, "data.num_classes=3", "data.class_names=[bg,car,car]"))
    text = format_report(reports, ["bg", "car", "car"])
    assert "ERROR data.class_names: 'car' is given 2 times (classes [1, 2])" in text
    assert text.splitlines()[-1].startswith("FAILED")


def _ignore_three(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data", splits={"train": 4, "val": 2}, num_classes=5)


def test_ignore_index_that_is_a_class_in_the_masks_warns_once(tmp_path: Path, caplog) -> None:
    root = _ignore_three(tmp_path)
    names = folder_class_names(5)
    split = functools.partial(FolderDataset, root=root, class_names=names)
    dm = SegDataModule(train_set=functools.partial(split, split="train"), val_set=functools.partial(split, split="val"),
                       val_transform=eval_transform(), num_classes=5, ignore_index=3, class_names=names, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        dm.preflight()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert_short_named(warning, r"data\.ignore_index=3 is also a class id \(class 3 \('class_3'\).*\d+ of the 6 masks "
                                r"read hold [\d,]+ pixels of value 3")
    text, _ = doctor(root, "data.ignore_index=3", num_classes=5)
    assert "WARNING data.ignore_index=3 is also a class id" in text and "FAILED" in text


# ---- the doctor never says OK ------------------------------------------------------------------------------------------

def _fault(root: Path, tmp_path: Path, fault: str) -> list[str]:
    """Plant ``fault`` in a folder dataset; return the extra doctor overrides it needs."""
    rgb, mask = scene()
    if fault == "exif":
        replace_image(root, "train_000.jpg", lambda p: save_exif(p, rgb, 8))
    elif fault == "mask_exif":
        save_exif(root / "masks" / "train" / "train_000.png", mask, 6)
    elif fault == "grey16":
        replace_image(root, "train_000.png", lambda p: _grey16_png(p, ramp16()))
    elif fault == "jpeg_mask":
        _jpeg_mask(root)
    elif fault == "multi_page":
        replace_image(root, "train_000.tif", _three_pages)
    elif fault == "bomb":
        replace_image(root, "train_000.png", huge_png)
    elif fault == "dangling":
        (root / "images" / "train" / "train_002.jpg").unlink()
        os.symlink(tmp_path / "gone.jpg", root / "images" / "train" / "train_002.jpg")
    elif fault == "transparent_mask":
        values = np.asarray(Image.open(root / "masks" / "train" / "train_000.png"))
        Image.fromarray(np.dstack([values, np.where(values == 0, 0, 255).astype(np.uint8)]), "LA").save(
            root / "masks" / "train" / "train_000.png")
    elif fault == "symlink_loop":
        os.symlink("loop.jpg", root / "images" / "train" / "loop.jpg")
    elif fault == "class_names":
        return ["data.class_names=[a,a,b]"]
    elif fault == "ignore_index":
        return ["data.ignore_index=2"]
    return []


@pytest.mark.parametrize("fault", ["exif", "mask_exif", "grey16", "jpeg_mask", "multi_page", "bomb", "dangling",
                                   "symlink_loop", "transparent_mask", "class_names", "ignore_index"])
def test_the_doctor_never_says_ok(tmp_path: Path, fault: str) -> None:
    root = folder(tmp_path)
    clean, _ = doctor(root)
    assert clean.splitlines()[-1] == "OK: no problems found"
    text, _ = doctor(root, *_fault(root, tmp_path, fault))
    assert "OK: no problems found" not in text and "Traceback" not in text, text


@pytest.mark.slow
def test_check_dataset_script_names_every_fault(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", splits={"train": 4, "val": 1})
    for fault in ("jpeg_mask", "multi_page", "dangling"):  # train_001, train_000, train_002
        _fault(root, tmp_path, fault)
    rgb, _ = scene()
    replace_image(root, "train_003.jpg", lambda p: save_exif(p, rgb, 8), old="train_003.jpg")
    result = run_script("scripts/check_dataset.py", "data=folder", f"data.root={root}", "data.num_classes=3",
                        f"data.class_names=[{','.join(NAMES)}]")
    assert result.returncode == 1, result.stdout + result.stderr
    for named in ("lossy mask (JPEG)", "holds 3 pages/frames", "dangling symlink", "EXIF orientation 8"):
        assert named in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


# ---- what the listing takes, follows and leaves out (issue: GIF, folder links, other extensions) ---------------------

def _grey_gif(values: np.ndarray, path: Path) -> Path:
    """A grey mask saved as GIF the way Pillow does by default (its writer renumbers the palette entries)."""
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def test_gif_image_and_mask_are_read(tmp_path: Path) -> None:
    """A pair saved as GIF used to be left out without a word (``.gif`` was not listed, yet readable). GIF is
    read: an image as any palette image, a grey mask by the grey levels its palette shows."""
    root = folder(tmp_path)
    rgb, mask = scene()
    replace_image(root, "train_000.gif", lambda p: Image.fromarray(rgb).save(p))
    (root / "masks" / "train" / "train_000.png").unlink()
    _grey_gif(mask, root / "masks" / "train" / "train_000.gif")
    samples = dataset(root).samples
    assert [s[0].name for s in samples] == ["train_000.gif", "train_001.jpg", "train_002.jpg"]
    assert np.array_equal(read_label_png(samples[0][1]), mask)
    assert np.array_equal(read_image(samples[0][0]), rgb)
    text, _ = doctor(root)
    assert "images: 3  masks: 3  pairs: 3" in text and text.splitlines()[-1] == "OK: no problems found", text


def test_gif_mask_ids_are_its_grey_levels_not_renumbered_indices(tmp_path: Path) -> None:
    """Pillow's GIF writer renumbers palette entries: the indices of a grey mask 0, 5, 200, 7 come back as 0, 1,
    3, 2; the grey levels are the ids. A colour-palette GIF names no ids: refused, naming the file."""
    assert read_label_png(_grey_gif(np.array([[0, 5, 200, 7]]), tmp_path / "grey.gif")).tolist() == [[0, 5, 200, 7]]
    voc = Image.fromarray(np.array([[0, 1, 255, 3]], np.uint8), "P")
    voc.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    voc.save(tmp_path / "voc.gif")
    err = raised_user_error(lambda: read_label_png(tmp_path / "voc.gif"))
    assert_short_named(user_message(err), r"mask file .*voc\.gif is a GIF with colours .*renumber palette entries.*"
                                          r"Save masks as PNG.*data\.train_set\.mask_format=rgb with data\.train_set\.colors")
    coloured = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    coloured.putpalette([v for c in COLOURS for v in c])
    coloured.save(tmp_path / "coloured.gif")
    assert read_rgb_mask(tmp_path / "coloured.gif", COLOURS).tolist() == [[0, 1], [2, 1]]


def test_animated_gif_is_refused_as_multi_page(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (0, 120, 240)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    err = raised_user_error(lambda: read_image(tmp_path / "anim.gif"))
    assert_short_named(user_message(err), r"anim\.gif holds 3 pages/frames \(GIF\)")


def test_unpaired_mask_names_its_image_with_an_extension_not_read(tmp_path: Path) -> None:
    """An image ``train_000.heic`` beside mask ``train_000.png`` used to give "mask without image" alone."""
    root = folder(tmp_path)
    heic = replace_image(root, "train_000.heic", lambda p: p.write_bytes(b"not read"))
    err = raised_user_error(lambda: dataset(root))
    assert_short_named(user_message(err), rf"mask without image: .*masks/train/train_000\.png \({re.escape(str(heic))} "
                                          r"has its name but is not read: its extension '\.heic' is not one of "
                                          r"\.png .*\.gif")
    text, _ = doctor(root)
    assert "NOTE 1 file(s) with extensions that are not read left out (read: .png" in text and str(heic) in text


@pytest.mark.parametrize("where", ["images", "masks"])
def test_files_with_extensions_not_read_are_named(tmp_path: Path, caplog, where: str) -> None:
    """Files the listing does not take (a README, a file without extension) are named: one NOTE of the doctor,
    which then never says plain OK, and one warning when training builds the split."""
    root = folder(tmp_path)
    (root / where / "train" / "README.txt").write_text("annotated by ...")
    (root / where / "train" / "train_009").write_bytes(b"\x89PNG")
    assert len(dataset(root).samples) == 3
    text, _ = doctor(root)
    assert (f"NOTE 2 file(s) with extensions that are not read left out (read: .png .jpg .jpeg .bmp .tif .tiff "
            f".webp .gif): {root / where / 'train' / 'README.txt'}, {root / where / 'train' / 'train_009'}") in text
    assert text.splitlines()[-1].startswith("OK: nothing to fix, but read the NOTEs above"), text
    split = functools.partial(FolderDataset, root=root, class_names=NAMES)
    dm = SegDataModule(train_set=functools.partial(split, split="train"), val_set=functools.partial(split, split="val"),
                       val_transform=eval_transform(), num_classes=3, class_names=NAMES, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        dm.setup("fit")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert_short_named(warning, r"data\.train_set: 2 file\(s\) with extensions that are not read left out .*README\.txt")


def _linked_subfolders(tmp_path: Path) -> Path:
    """A folder root whose ``images/train/more`` and ``masks/train/more`` are links to 2 pairs kept elsewhere."""
    root = folder(tmp_path)
    extra = make_folder(tmp_path / "elsewhere", splits={"more": 2})
    for kind in ("images", "masks"):
        os.symlink(extra / kind / "more", root / kind / "train" / "more")
    return root


def test_symlinked_subfolders_are_followed(tmp_path: Path) -> None:
    """Python 3.11's recursive glob does not follow folder links: the pairs in ``more/`` were left out of the
    datasets, the doctor and predict without a word. The one listing follows them."""
    root = _linked_subfolders(tmp_path)
    names = [s[0].relative_to(root / "images" / "train").as_posix() for s in dataset(root).samples]
    assert names == ["more/more_000.jpg", "more/more_001.jpg", "train_000.jpg", "train_001.jpg", "train_002.jpg"]
    text, _ = doctor(root)
    assert "[train] images: 5  masks: 5  pairs: 5  checked: 5  errors: 0" in text, text
    outputs = [name.as_posix() for _, name in input_files(str(root / "images" / "train"))]
    assert outputs == ["more/more_000.png", "more/more_001.png", "train_000.png", "train_001.png", "train_002.png"]


def test_folder_symlink_loop_is_named_and_not_followed(tmp_path: Path, caplog) -> None:
    """A folder link back to a folder above it (a loop) and a second link to a folder already listed are not
    followed (no hang, no sample listed twice), and named."""
    root = _linked_subfolders(tmp_path)
    os.symlink("..", root / "images" / "train" / "loop")
    os.symlink("more", root / "images" / "train" / "same")
    assert len(dataset(root).samples) == 5
    text, _ = doctor(root)
    assert re.search(r"NOTE folder link not followed: .*images/train/loop -> \.\. is a symlink loop", text), text
    assert re.search(r"NOTE folder .*images/train/same is .*images/train/more, already listed", text), text
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        assert len(input_files(str(root / "images"))) == 5 + 1  # train (5) and val (1), once each
    assert any("symlink loop" in r.getMessage() for r in caplog.records)


def test_predict_folder_names_the_files_it_leaves_out(tmp_path: Path, caplog) -> None:
    """``input=<folder>`` used to leave a file without extension out in silence (``input=<that file>`` reads it)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.gif", "scan"):
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(inputs / name, format="PNG" if name != "b.gif" else None)
    with caplog.at_level(logging.WARNING, logger="seg_template"):
        files = input_files(str(inputs))
    assert [f.name for f, _ in files] == ["a.png", "b.gif"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert_short_named(warning, rf"input={re.escape(str(inputs))}: 1 file\(s\) with extensions that are not read left "
                                rf"out .*: {re.escape(str(inputs / 'scan'))}")
    assert [f.name for f, _ in input_files(str(inputs / "scan"))] == ["scan"]  # named: read whatever its extension
    (inputs / "a.png").unlink()
    (inputs / "b.gif").unlink()
    err = raised_user_error(lambda: input_files(str(inputs)))
    assert_short_named(user_message(err), r"input folder .*in holds no images .*; 1 file\(s\) with extensions that "
                                          r"are not read left out .*in/scan")


# ---- what a file holds: NaN pixels, empty files ------------------------------------------------------------------------

def test_float_image_with_nan_pixels_is_named_as_nan(tmp_path: Path) -> None:
    """It used to say "holds floating-point values in [nan, nan] ... scale it to [0, 1]"."""
    values = np.full((4, 6), 0.5, np.float32)
    values[1, 1], values[2, 3] = np.nan, np.inf
    Image.fromarray(values, "F").save(tmp_path / "nan.tif")
    err = raised_user_error(lambda: read_image(tmp_path / "nan.tif"))
    message = user_message(err)
    assert_short_named(message, r"image file .*nan\.tif holds 1 NaN and 1 inf pixel\(s\) \(of 24\)")
    assert "[nan" not in message
    Image.fromarray(np.where(np.isfinite(values), 1.0, np.nan).astype(np.float32), "F").save(tmp_path / "mask.tif")
    err = raised_user_error(lambda: read_label_png(tmp_path / "mask.tif"))
    assert_short_named(user_message(err), r"mask file .*mask\.tif holds 2 NaN pixel\(s\) \(of 24\)")


@pytest.mark.parametrize("kind", ["image", "mask"])
def test_empty_file_is_named_as_empty(tmp_path: Path, kind: str) -> None:
    """A 0-byte file (an interrupted copy) used to be reported as "cannot identify image file"."""
    root = folder(tmp_path)
    path = root / f"{kind}s" / "train" / ("train_001.jpg" if kind == "image" else "train_001.png")
    path.write_bytes(b"")
    err = raised_user_error(lambda: dataset(root)[1])
    assert_short_named(user_message(err), rf"cannot read image file {re.escape(str(path))}: the file is empty "
                                          r"\(0 bytes\)")
    text, _ = doctor(root)
    assert "the file is empty (0 bytes)" in text and "cannot identify" not in text


# ---- the README says what the code reads -------------------------------------------------------------------------------

def test_readme_names_the_class_weight_files_that_are_read(tmp_path: Path) -> None:
    """The typed-options bullet said ``data.class_weights`` may name a ``.pt`` file, which is refused."""
    from seg_template.losses.class_weights import load_class_weights

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = re.search(r"`data\.class_weights` has .*?\)", readme, re.S)
    assert sentence, "the README no longer describes data.class_weights in the typed-options bullet"
    suffixes = re.findall(r"`(\.[a-z]+)`", sentence.group(0))
    assert suffixes, sentence.group(0)
    writers = {".npy": lambda p: np.save(p, np.array([1.0, 2.0])), ".json": lambda p: p.write_text("[1.0, 2.0]"),
               ".txt": lambda p: p.write_text("1.0 2.0\n")}
    for suffix in suffixes:
        path = tmp_path / f"w{suffix}"
        writers.get(suffix, _torch_save)(path)
        assert load_class_weights(str(path)).tolist() == [1.0, 2.0], suffix


def _torch_save(path: Path) -> None:
    """A tensor file (``.pt``) of the weights the test reads back."""
    import torch

    torch.save(torch.tensor([1.0, 2.0]), path)
