#!/usr/bin/env python
"""Class weights from the training split's pixel statistics, written where `loss=wce` can load them.

    python scripts/compute_class_weights.py data=cityscapes data.root=/data/cityscapes \
        --method median --out weights/cityscapes_median.json
    python train.py data=cityscapes loss=wce data.class_weights=$PWD/weights/cityscapes_median.json

Methods (seg_template/data/class_weights.py): inverse (N / (C n_c)), median (median-frequency balancing,
Eigen & Fergus) and enet (1 / ln(1.02 + p_c)). All three are printed; --method picks the one written.
The file format follows the suffix: .json (a list), .npy or .txt (one weight per line). --out is checked before
any mask is read: its suffix, a folder that can take it, and an existing file only if it is a class-weights
file (one that loss=wce loads); anything else there (a checkpoint, notes) is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from seg_template.data.class_weights import METHODS, class_weights, pixel_statistics, save_weights  # noqa: E402
from seg_template.data.config import SPLITS, build_split, compose_data_config  # noqa: E402
from seg_template.errors import ConfigError, UserError, run_tool  # noqa: E402
from seg_template.options import positive_int  # noqa: E402

SUFFIXES = (".json", ".npy", ".txt")


def check_out(out: Path) -> Path:
    """``--out`` as an absolute path, checked before anything is read; a ``ConfigError`` naming it when it cannot
    take the weights: another suffix, a folder, a parent that is not a writable folder, or an existing file
    that is not a class-weights file (``loss=wce`` could not load it: a checkpoint or notes named ``.json``)."""
    from seg_template.losses.class_weights import load_class_weights

    path = Path(os.path.abspath(out.expanduser()))
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"--out {out}: the suffix {path.suffix!r} is none of {', '.join(SUFFIXES)}, which set the "
                          "file's format (e.g. --out class_weights.json)")
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a file in it, e.g. --out {path / 'class_weights.json'}")
    existing = next(p for p in (path.parent, *path.parent.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; name a file in a folder")
    try:  # the folder is made now and must take a file: a mistake shows before the scan, not after it
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write_test_"):
            pass
    except OSError as err:
        raise ConfigError(f"--out {out}: {path.parent} cannot take the file ({err.strerror or err}); name a file in a "
                          "writable folder") from None
    if os.path.lexists(path) and not path.is_file():
        raise ConfigError(f"--out {out} exists and is not a regular file; name a new file")
    if path.is_file() and path.stat().st_size > 0:
        try:
            load_class_weights(path)
        except UserError:
            raise ConfigError(f"--out {out} exists and is not a class-weights file (loss=wce could not load it: a "
                              "checkpoint, notes?), so it is never overwritten: name a new file, or move that "
                              "one") from None
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=voc data.root=/data/voc")
    parser.add_argument("--method", choices=METHODS, default="median", help="the weights written to --out")
    parser.add_argument("--out", type=Path, default=None, help="output file (.json/.npy/.txt); "
                        "default class_weights_<method>.json in the current directory")
    parser.add_argument("--split", default="train", choices=SPLITS, help="split to count pixels in (default train)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use only the first N masks")
    args = parser.parse_intermixed_args(argv)
    out = check_out(args.out or Path(f"class_weights_{args.method}.json"))  # before a single mask is read
    data_cfg = compose_data_config(args.overrides)
    if data_cfg.get(f"{args.split}_set") is None:
        raise ConfigError(f"--split {args.split}: this data config has no {args.split} split (data.{args.split}_set "
                          "is null); count another one, e.g. --split train")
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
    out = save_weights(table[args.method], out, names)
    print(f"wrote {args.method} weights to {out}\nuse: loss=wce data.class_weights={out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
