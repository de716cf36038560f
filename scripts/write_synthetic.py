#!/usr/bin/env python
"""Write the built-in synthetic shapes to disk in the generic folder layout, to show the on-disk format
that ``data=folder`` reads (and to look at the data)::

    <out>/images/<split>/<name>.png    RGB images
    <out>/masks/<split>/<name>.png     palette PNGs: the pixel value is the class index, 255 = ignore

    python scripts/write_synthetic.py --out data/shapes --split train --length 200
    python scripts/write_synthetic.py --out data/shapes --split val --length 50
    python train.py data=folder data.root=data/shapes data.num_classes=6 \
        'data.class_names=[background,circle,rectangle,triangle,ring,cross]'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from seg_template.data.synthetic import CLASS_NAMES, PALETTE, SyntheticShapes  # noqa: E402
from seg_template.errors import ConfigError, run_tool  # noqa: E402
from seg_template.options import int_at_least, positive_int, seed_int  # noqa: E402


def palette_bytes(ignore_index: int) -> list[int]:
    """256 RGB entries: the class colours, white for the ignore index, black elsewhere."""
    colours = [(0, 0, 0)] * 256
    colours[: len(PALETTE)] = PALETTE
    colours[ignore_index] = (255, 255, 255)
    return [v for rgb in colours for v in rgb]


def write_split(out: Path, split: str, length: int, image_size: list[int], seed: int,
                ignore_index: int = 255) -> int:
    """Write ``length`` samples of ``split``; returns the number written. The split's two folders must be
    new or empty: the names written (``train_000000.png``...) could be a dataset's own files."""
    if not split or split in (".", "..") or any(c in split for c in "/\\\0"):
        raise ConfigError(f"--split {split!r}: expected a plain folder name (e.g. --split val)")
    for folder in (out / "images" / split, out / "masks" / split):
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"--out {out}: {folder} is not a new or empty folder, and writing the {split} split "
                              "there could overwrite files of yours. Remove it, or pick another --out / --split.")
    dataset = SyntheticShapes(split, length, image_size=image_size, seed=seed, cache=False,
                              ignore_index=ignore_index)
    image_dir, mask_dir = out / "images" / split, out / "masks" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    pal = palette_bytes(ignore_index)
    for index in range(len(dataset)):
        image, mask, name = dataset.load(index)
        Image.fromarray(image).save(image_dir / f"{name}.png")
        label = Image.fromarray(mask.astype(np.uint8), mode="P")
        label.putpalette(pal)
        label.save(mask_dir / f"{name}.png")
    return len(dataset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write into")
    parser.add_argument("--split", default="train", help="split name (train / val / test / any)")
    parser.add_argument("--length", type=positive_int, default=100, help="number of samples")
    parser.add_argument("--image-size", type=int_at_least(16), nargs="+", default=[64, 64], metavar="PX",
                        help="H W (or one value for square images); default data=synthetic's 64 x 64")
    parser.add_argument("--seed", type=seed_int, default=0)
    args = parser.parse_args(argv)
    if len(args.image_size) not in (1, 2):
        parser.error(f"--image-size takes H W or one value, got {args.image_size}")
    size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
    n = write_split(args.out, args.split, args.length, size, args.seed)
    print(f"wrote {n} {args.split} samples to {args.out}/{{images,masks}}/{args.split}/ "
          f"({len(CLASS_NAMES)} classes: {', '.join(CLASS_NAMES)}; 255 = ignore)")


if __name__ == "__main__":
    sys.exit(run_tool(main))
