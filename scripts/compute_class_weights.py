#!/usr/bin/env python
"""Class weights from the training split's pixel statistics, written where `loss=wce` can load them.

    python scripts/compute_class_weights.py data=cityscapes data.root=/data/cityscapes \
        --method median --out weights/cityscapes_median.json
    python train.py data=cityscapes loss=wce data.class_weights=$PWD/weights/cityscapes_median.json

Methods (seg_template/data/class_weights.py): inverse (N / (C n_c)), median (median-frequency balancing,
Eigen & Fergus) and enet (1 / ln(1.02 + p_c)). All three are printed; --method picks the one written.
The file format follows the suffix: .json (a list), .npy or .txt (one weight per line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from seg_template.data.class_weights import METHODS, class_weights, pixel_statistics, save_weights  # noqa: E402
from seg_template.data.config import build_split, compose_data_config  # noqa: E402
from seg_template.errors import run_tool  # noqa: E402
from seg_template.options import positive_int  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=voc data.root=/data/voc")
    parser.add_argument("--method", choices=METHODS, default="median", help="the weights written to --out")
    parser.add_argument("--out", type=Path, default=None, help="output file (.json/.npy/.txt); "
                        "default class_weights_<method>.json in the current directory")
    parser.add_argument("--split", default="train", help="split to count pixels in (default train)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use only the first N masks")
    args = parser.parse_intermixed_args(argv)
    data_cfg = compose_data_config(args.overrides)
    dataset = build_split(data_cfg, args.split, files_only=False)
    counts, present = pixel_statistics(dataset, args.limit)
    table = {m: class_weights(counts, present, m) for m in METHODS}
    names = list(data_cfg.get("class_names") or dataset.class_names)
    total = max(int(counts.sum()), 1)
    print(f"{len(dataset) if args.limit is None else min(args.limit, len(dataset))} masks of split "
          f"{args.split!r}, {total} labelled pixels")
    print(f"{'k':>3} {'class':<24} {'freq %':>9} " + " ".join(f"{m:>9}" for m in METHODS))
    for k in range(len(counts)):
        name = names[k] if k < len(names) else str(k)
        print(f"{k:>3} {name:<24} {100 * counts[k] / total:9.4f} " + " ".join(f"{table[m][k]:9.4f}" for m in METHODS))
    absent = [names[k] if k < len(names) else str(k) for k in range(len(counts)) if counts[k] == 0]
    if absent:
        print(f"warning: no pixels of {absent}; they get weight 0 (inverse, median) or 1/ln(1.02) (enet)")
    out = save_weights(table[args.method], args.out or Path(f"class_weights_{args.method}.json"), names)
    print(f"wrote {args.method} weights to {out.resolve()}\nuse: loss=wce data.class_weights={out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
