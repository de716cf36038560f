#!/usr/bin/env python
"""Check a dataset on disk before training on it.

    python scripts/check_dataset.py data=cityscapes data.root=/data/cityscapes
    python scripts/check_dataset.py data=folder data.root=/data/mine data.num_classes=3 \
        'data.class_names=[bg,road,car]' --splits train val --limit 100 --workers 4

Walks every split of the composed data config (configs/ at the repo root, any Hydra override works) and
prints image/mask counts, unpaired files and dangling symlinks, unreadable or refused files (lossy masks,
multi-page files, files over the pixel limit), size mismatches, label values outside [0, C) ∪ {ignore}
and per-class pixel frequencies (ERROR, naming the files); repeated class names and an ignore index that
is also a class occurring in the masks (WARNING); and what the reader does to files (NOTE: EXIF orientation
applied, 16-bit samples scaled, a byte-order mark dropped). Exits 1 on any error or warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from seg_template.data.config import SPLITS, compose_data_config  # noqa: E402
from seg_template.data.doctor import check_dataset, format_report  # noqa: E402
from seg_template.errors import run_tool  # noqa: E402
from seg_template.options import non_negative_int, positive_int  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=voc data.root=/data/voc")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to check")
    parser.add_argument("--limit", type=positive_int, default=None, help="read only the first N pairs of each split")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="read with N worker processes (0: in this one)")
    args = parser.parse_intermixed_args(argv)
    data_cfg = compose_data_config(args.overrides)
    reports = check_dataset(data_cfg, args.splits, args.limit, args.workers)
    print(format_report(reports, list(data_cfg.get("class_names") or [])))
    if not reports:
        print(f"no splits to check: the data config defines none of {args.splits}")
        return 1
    return 1 if any(r.errors or r.warnings for r in reports) else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
