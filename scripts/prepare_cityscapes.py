#!/usr/bin/env python
"""Make Cityscapes `*_gtFine_labelTrainIds.png` from the gtFine polygon JSONs (19 train ids, 255 ignore).

    pip install cityscapesscripts        # or: pip install -e ".[cityscapes]"
    python scripts/prepare_cityscapes.py /data/cityscapes --nproc 8

Draws every `gtFine/<split>/<city>/*_gtFine_polygons.json` with cityscapesscripts' own
`json2labelImg(..., "trainIds")` (the official rasteriser, as MMSegmentation's converter does) and writes
the result next to it. Existing files are kept unless --overwrite. Without this step the dataset falls
back to `*_gtFine_labelIds.png` mapped through the official id -> train id table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from seg_template.data.cityscapes import LAYOUT  # noqa: E402
from seg_template.data.io import require_dir  # noqa: E402
from seg_template.errors import run_tool  # noqa: E402
from seg_template.options import positive_int  # noqa: E402

POLYGON_SUFFIX = "_gtFine_polygons.json"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"


def _json2label_img() -> Callable[[str, str, str], None]:
    try:
        from cityscapesscripts.preparation.json2labelImg import json2labelImg
    except ImportError as err:
        raise SystemExit(f"prepare_cityscapes needs the cityscapesscripts package ({err}).\n"
                         "Install it with `pip install cityscapesscripts` or `pip install -e \".[cityscapes]\"`.") from err
    return json2labelImg


def convert_one(json_path: Path) -> Path:
    """Rasterise one polygon JSON to its labelTrainIds PNG (same folder); return the PNG path."""
    out = json_path.with_name(json_path.name[: -len(POLYGON_SUFFIX)] + TRAIN_ID_SUFFIX)
    try:
        _json2label_img()(str(json_path), str(out), "trainIds")
    except SystemExit as err:  # cityscapesscripts exits on unknown labels instead of raising
        raise RuntimeError(f"cityscapesscripts could not convert {json_path} (see its message above)") from err
    return out


def prepare(root: Path, nproc: int = 1, overwrite: bool = False) -> list[Path]:
    """Convert every polygon JSON under ``<root>/gtFine``; return the PNGs written."""
    _json2label_img()  # fail before any work if the package is missing
    gt = require_dir(Path(root) / "gtFine", LAYOUT, "Cityscapes gtFine folder")
    jsons = sorted(gt.glob(f"*/*/*{POLYGON_SUFFIX}"))
    if not jsons:
        raise FileNotFoundError(f"no *{POLYGON_SUFFIX} files under {gt}; expected gtFine/<split>/<city>/ as in the "
                                "official gtFine_trainvaltest.zip")
    todo = [j for j in jsons if overwrite or not j.with_name(j.name[: -len(POLYGON_SUFFIX)] + TRAIN_ID_SUFFIX).exists()]
    if nproc > 1 and len(todo) > 1:
        with Pool(nproc) as pool:
            return pool.map(convert_one, todo, chunksize=8)
    return [convert_one(j) for j in todo]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="Cityscapes root (holds gtFine/ and leftImg8bit/)")
    parser.add_argument("--nproc", type=positive_int, default=1, help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="redo existing labelTrainIds files")
    args = parser.parse_args(argv)
    written = prepare(args.root, args.nproc, args.overwrite)
    print(f"wrote {len(written)} *{TRAIN_ID_SUFFIX} files under {args.root / 'gtFine'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
