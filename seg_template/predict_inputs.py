"""What predict.py reads: the input files, and a DataLoader that batches images of one size together.

Images are read by the datasets' reader (``data/io.py``): upright as viewers show them (EXIF orientation),
scaled by their real bit depth, refused when multi-page or over ``max_image_pixels``. Images of different
sizes cannot share a batch tensor, so the loader's batches are grouped by the size a file displays at (read
from its header, without decoding): a folder of same-size camera frames runs in full batches, a mixed folder
still works. An unreadable or refused file does not stop the run: its item carries the error, and the caller
names and skips it. A folder is listed as the datasets list theirs (``data/io.py``'s ``find_images``): what it
leaves out (other extensions, folder links not followed) is named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg_template.data.decoding import DEFAULT_MAX_IMAGE_PIXELS, pixel_limit
from seg_template.data.io import IMAGE_EXTENSIONS, broken_link, find_images, probe_image, read_image
from seg_template.errors import ConfigError, DataError, MissingFileError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

# torch is imported inside the functions: predict.py --help answers without loading it. A DataLoader takes
# any object with __getitem__ / __len__ as a dataset and any iterable of index lists as a batch sampler.


def input_files(spec: str | Sequence[str]) -> list[tuple[Path, Path]]:
    """``(file, output name)`` pairs for ``spec``: one image, a folder (recursive, folder links followed, as
    the datasets list theirs; the output name keeps the sub-folder, with a ``.png`` suffix) or a list of images
    (named by their file names). A folder's files with extensions that are not read and the links not followed
    are named in one warning line each; a file given by name is read whatever its extension."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[tuple[Path, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            # the datasets' listing: folder links followed; a dangling link is named, then skipped
            listing = find_images(path, recursive=True, dangling=True)
            left_out = listing.left_out_lines()
            if not listing.files:
                said = "".join(f"; {line}" for line in left_out)
                raise MissingFileError(f"input folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}){said}")
            for line in left_out:  # what a folder holds besides images is said, never left out silently
                log.warning("input=%s: %s", path, line)
            files.extend((f, f.relative_to(path).with_suffix(".png")) for f in listing.files)
        elif path.is_file():
            files.append((path, Path(path.name).with_suffix(".png")))
        elif broken_link(path):
            raise MissingFileError(f"input={path} is a {broken_link(path)}")
        else:
            raise MissingFileError(f"input={path} is neither an image file nor a folder")
    refuse_shared_outputs(files)
    return files


def refuse_shared_outputs(files: Sequence[tuple[Path, Path]]) -> None:
    """Raise a ``ConfigError`` when two inputs would write the same output (``masks/<name>.png``), naming the
    files and the fix for each case: one file listed twice, names that differ only in their extension (one
    folder), or one file name in different folders."""
    import os

    sources: dict[Path, list[Path]] = {}
    for file, name in files:
        sources.setdefault(name, []).append(file)
    clashes = {name: paths for name, paths in sources.items() if len(paths) > 1}
    if not clashes:
        return
    lines = []
    for name, paths in list(clashes.items())[:5]:
        absolute = [os.path.abspath(p) for p in paths]
        head = f"masks/{name.as_posix()}: "
        listed = ", ".join(str(p) for p in paths)
        if len(set(absolute)) < len(absolute):
            twice = sorted({p for p in absolute if absolute.count(p) > 1})
            lines.append(f"{head}{', '.join(twice)}: the same file given more than once (listed, or also inside a folder "
                         f"given); give each image once")
        elif len({os.path.dirname(p) for p in absolute}) == 1:
            lines.append(f"{head}{listed}: names that differ only in their extension, in one folder; an output is named "
                         f"after the file name with .png, so rename all but one of them")
        else:
            lines.append(f"{head}{listed}: the same file name in different folders; pass their common parent folder "
                         f"{os.path.commonpath(absolute)} instead (its sub-folders are kept in the outputs), or "
                         f"predict each folder into an output_dir of its own")
    more = f"\n  ... and {len(clashes) - 5} more" if len(clashes) > 5 else ""
    raise ConfigError(f"input: {len(clashes)} output name(s) would be written by more than one image, whose masks "
                      f"would overwrite each other:\n  " + "\n  ".join(lines) + more)


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` as the file displays (its EXIF orientation applied) from its header, without
    decoding; None when the file is not an image (the loader names the cause when it reads it)."""
    info = probe_image(path)
    return None if info is None else info.displayed_size


class ImageFiles:
    """``files[i] = (path, name)`` -> ``{"image": float[3, H, W] (normalised by transform), "rgb": uint8[H, W, 3]
    (numpy, for the overlay), "name": str, "path": str}``, or ``{"error": str, "name", "path"}`` when the file
    cannot be read or is refused (multi-page, over ``max_image_pixels`` pixels; None: no limit)."""

    def __init__(self, files: Sequence[tuple[Path, Path]], transform: Callable[..., dict[str, Any]],
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.files, self.transform = list(files), transform
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, name = self.files[index]
        item: dict[str, Any] = {"name": str(name), "path": str(path)}
        try:
            rgb = read_image(path, self.max_image_pixels)
        except (DataError, OSError) as err:  # OSError: a file removed or unreadable since it was listed
            return {**item, "error": str(err)}
        from seg_template.data.base import image_tensor

        item["image"] = image_tensor(self.transform(image=rgb)["image"])
        item["rgb"] = rgb
        return item


class SameSizeBatches:
    """Batches of at most ``batch_size`` indices whose images have the same size, in order of first
    appearance; an image whose size is unknown (not readable) is a batch of its own."""

    def __init__(self, sizes: Sequence[tuple[int, int] | None], batch_size: int) -> None:
        groups: dict[Any, list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size if size is not None else ("unknown", index), []).append(index)
        self.batches = [members[i:i + batch_size] for members in groups.values()
                        for i in range(0, len(members), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"image": float[N, 3, H, W], "rgb": [uint8[H, W, 3], ...], "name": [...], "path": [...], "errors":
    [(path, reason), ...]}`` for the readable items (``image``/``rgb`` absent when none is)."""
    import torch

    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {"name": [it["name"] for it in good], "path": [it["path"] for it in good],
                             "errors": [(it["path"], it["error"]) for it in items if "error" in it]}
    if good:
        shapes = {tuple(it["image"].shape) for it in good}
        if len(shapes) > 1:  # same-size files may still differ after a transform that depends on content
            raise DataError(f"data.val_transform made different sizes {sorted(shapes)} from images of one size; "
                            "run predict with batch_size=1")
        batch["image"] = torch.stack([it["image"] for it in good])
        batch["rgb"] = [it["rgb"] for it in good]
    return batch


def image_loader(files: Sequence[tuple[Path, Path]], transform: Callable[..., dict[str, Any]], batch_size: int,
                 num_workers: int, pin_memory: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> DataLoader:
    """A DataLoader over ``files`` yielding :func:`collate` batches of same-size images; a file over
    ``max_image_pixels`` pixels (predict's option of that name; None: no limit) is named and skipped."""
    from torch.utils.data import DataLoader

    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if int(num_workers) < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    sampler = SameSizeBatches([header_size(path) for path, _ in files], int(batch_size))
    limit = pixel_limit(max_image_pixels, "max_image_pixels")
    return DataLoader(ImageFiles(files, transform, limit), batch_sampler=sampler, num_workers=int(num_workers),
                      collate_fn=collate, pin_memory=pin_memory)
