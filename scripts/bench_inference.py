"""Peak memory and time of sliding-window inference on a huge image: stitching vs the bounded mode.

    python scripts/bench_inference.py                                  # 8192x8192, model=small, 19 classes
    python scripts/bench_inference.py --size 2048 --window-batches 1 8
    python scripts/bench_inference.py --size 256 --crop 64 64 --stride 48 48      # a quick smoke run

Every variant (mode x window_batch) segments the same random normalised image into uint8 class ids, as
predict.py does, with ``InferenceModel(...).predict_labels``: ``stitch`` holds the logits of the whole image
(the slide mode until now; ``window_batch=1``, one window per forward pass, is today's behaviour and the
baseline); ``bounded`` keeps one band of windows (``inference.bounded=true``). The network is
``configs/model/small.yaml`` (random weights, eval mode); the windows default to ``configs/inference/slide.yaml``.

Each variant runs in its own freshly spawned process, so one variant's peak cannot hide another's: peak RSS
is the process's VmHWM during the call (reset through /proc/self/clear_refs once the image and the network
exist), "added" is that peak minus the RSS just before the call (the image itself is in both). Time is the
wall time of the call after one warm-up window. "labels = today" is the share of pixels whose class equals
the baseline's (batches of other sizes may move a logit by an ulp; the bounded mode at the same
window_batch as a stitch run is equal bit for bit).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seg_template.build import build_net  # noqa: E402
from seg_template.inference import InferenceModel, window_starts  # noqa: E402
from seg_template.options import positive_int  # noqa: E402
from seg_template.paths import CONFIG_DIR  # noqa: E402

MIB = 1 << 20


def status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Make VmHWM the current RSS (Linux >= 4.0), so the peak counts from here."""
    Path("/proc/self/clear_refs").write_text("5")


def run_variant(mode: str, window_batch: int, args: argparse.Namespace, labels_file: str) -> dict[str, float]:
    """In a fresh process: segment the image once; returns seconds, peak RSS and RSS before (bytes)."""
    torch.set_num_threads(args.threads)
    cfg = OmegaConf.merge({"data": {"num_classes": args.classes}},
                          {"model": OmegaConf.load(CONFIG_DIR / "model" / "small.yaml")})
    torch.manual_seed(0)
    net, align_corners = build_net(cfg.model)
    net.eval()
    images = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    model = InferenceModel(net, mode="slide", crop_size=args.crop, stride=args.stride, align_corners=align_corners,
                           window_batch=window_batch, bounded=mode == "bounded")
    with torch.inference_mode():
        net(images[:, :, :args.crop[0], :args.crop[1]])  # warm-up: one window
        before = status_bytes("VmRSS")
        reset_peak()
        start = time.perf_counter()
        labels = model.predict_labels(images, dtype=torch.uint8)
        seconds = time.perf_counter() - start
        peak = status_bytes("VmHWM")
    torch.save(labels, labels_file)
    return {"seconds": seconds, "peak": peak, "before": before}


def measure(mode: str, window_batch: int, args: argparse.Namespace, labels_file: str) -> dict[str, float]:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_variant, mode, window_batch, args, labels_file).result()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    slide = OmegaConf.load(CONFIG_DIR / "inference" / "slide.yaml")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=positive_int, default=8192, help="image height and width (default 8192)")
    parser.add_argument("--classes", type=positive_int, default=19, help="num_classes of the network (default 19, Cityscapes)")
    parser.add_argument("--crop", type=positive_int, nargs=2, default=list(slide.crop_size), metavar=("H", "W"))
    parser.add_argument("--stride", type=positive_int, nargs=2, default=list(slide.stride), metavar=("H", "W"))
    parser.add_argument("--window-batches", type=positive_int, nargs="+", default=[1, 4], metavar="B",
                        help="inference.window_batch values; the first is the baseline's (default 1 4)")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), help="torch threads per run")
    args = parser.parse_args(argv)
    if args.classes > 256:
        parser.error("--classes: the labels are uint8, at most 256 classes")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    windows = len(window_starts(max(args.size, args.crop[0]), args.crop[0], args.stride[0])) * \
        len(window_starts(max(args.size, args.crop[1]), args.crop[1], args.stride[1]))
    load = os.getloadavg()[0]
    print(f"{args.size}x{args.size} image, model=small ({args.classes} classes), windows {args.crop[0]}x"
          f"{args.crop[1]} stride {args.stride[0]}x{args.stride[1]} ({windows} per image), {args.threads} "
          f"thread(s), one fresh process per row; load average {load:.2f}", flush=True)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("stitch", "bounded"):
            for window_batch in args.window_batches:
                labels_file = str(Path(tmp) / f"{mode}_{window_batch}.pt")
                rows.append({"mode": mode, "window_batch": window_batch, "labels": labels_file,
                             **measure(mode, window_batch, args, labels_file)})
        today = rows[0]
        baseline = torch.load(str(today["labels"]))
        for row in rows:
            row["agree"] = (torch.load(str(row["labels"])) == baseline).double().mean().item()
    header = (f"{'variant':<16}{'window_batch':>13}{'time s':>9}{'x today':>9}{'peak RSS MiB':>14}{'x today':>9}"
              f"{'added MiB':>11}{'x today':>9}{'labels = today':>16}")
    print(header)
    for row in rows:
        added, today_added = row["peak"] - row["before"], today["peak"] - today["before"]
        name = "stitch (today)" if row is today else str(row["mode"])
        print(f"{name:<16}{row['window_batch']:>13}{row['seconds']:>9.2f}{row['seconds'] / today['seconds']:>9.2f}"
              f"{row['peak'] / MIB:>14.0f}{row['peak'] / today['peak']:>9.2f}{added / MIB:>11.0f}"
              f"{added / max(today_added, 1):>9.2f}{100 * row['agree']:>15.3f}%")
    first, *others = args.window_batches
    for mode in ("stitch", "bounded"):
        times = {r["window_batch"]: r["seconds"] for r in rows if r["mode"] == mode}
        speedups = ", ".join(f"{b}: {times[first] / times[b]:.2f}x" for b in others)
        if speedups:
            print(f"window-batch speed-up of {mode} over window_batch={first}: {speedups}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return rows


if __name__ == "__main__":
    main()
