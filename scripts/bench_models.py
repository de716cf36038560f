"""Benchmark the model zoo: parameters, output stride, aux head, forward+backward time per image.

    python scripts/bench_models.py                       # all configs/model/*.yaml at 512x512, markdown table
    python scripts/bench_models.py --models hrnet_w18 lraspp_mobilenet_v3 --size 256 --reps 5

Each model is built from its config (``num_classes`` from ``--num-classes``), in train mode, and timed on
random input: ``--warmup`` untimed steps, then the median of ``--reps`` timed forward+backward steps (the loss
is a plain mean of the logits, so only the model is timed). The batch defaults to 2 because DeepLabV3's
image-pooling BatchNorm cannot train on a single image; times are reported per image.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL_DIR = ROOT / "configs" / "model"


def build(name: str, num_classes: int) -> torch.nn.Module:
    path = MODEL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--models: no config {path} (have: {sorted(p.stem for p in MODEL_DIR.glob('*.yaml'))})")
    cfg = OmegaConf.merge({"data": {"num_classes": num_classes}}, {"model": OmegaConf.load(path)})
    return instantiate(cfg.model)


def bench(name: str, size: int, batch: int, reps: int, warmup: int, num_classes: int) -> dict[str, object]:
    """One table row: parameters (M), strides of "out" / "aux", median seconds per image of fwd+bwd."""
    torch.manual_seed(0)
    model = build(name, num_classes).train()
    images = torch.randn(batch, 3, size, size)
    times = []
    for step in range(warmup + reps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        outputs = model(images)
        parts = outputs if isinstance(outputs, dict) else {"out": outputs}
        sum(p.float().mean() for p in parts.values()).backward()
        if step >= warmup:
            times.append((time.perf_counter() - start) / batch)
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "stride": size // parts["out"].shape[-1],
        "aux": f"yes (stride {size // parts['aux'].shape[-1]})" if "aux" in parts else "no",
        "seconds": statistics.median(times),
    }


def markdown(rows: list[dict[str, object]], size: int, batch: int) -> str:
    lines = [f"| model | params (M) | output stride | aux head | fwd+bwd s / {size}x{size} image |",
             "|---|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:.1f} | {r['stride']} | {r['aux']} | {r['seconds']:.2f} |")
    lines.append(f"\nCPU: {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}, "
                 f"torch {torch.__version__}; batch {batch}, times per image.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_models = sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if p.stem != "small")
    parser.add_argument("--models", nargs="+", default=all_models)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows.append(bench(name, args.size, args.batch, args.reps, args.warmup, args.num_classes))
        print(f"{name}: {rows[-1]['seconds']:.2f} s/image", file=sys.stderr, flush=True)
    table = markdown(rows, args.size, args.batch)
    print(table)
    return table


if __name__ == "__main__":
    main()
