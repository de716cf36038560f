"""Benchmark the model zoo: parameters, output stride, aux head, training and inference cost per image.

    python scripts/bench_models.py                       # all configs/model/*.yaml at 512x512, markdown table
    python scripts/bench_models.py --models hrnet_w18 lraspp_mobilenet_v3 --size 256 --reps 5
    python scripts/bench_models.py --models small lraspp_mobilenet_v3 --onnx   # + onnxruntime latency
    python scripts/bench_models.py --models smp_unet smp_unet:resnet18 --onnx   # <config>:<encoder> (smp configs)

Each model is built from its config (``num_classes`` from ``--num-classes``; ``<config>:<encoder>`` sets the
encoder of a config that has one) and run on random input: ``--warmup`` untimed steps, then the median of
``--reps`` timed ones. Without ``--models``, a config whose optional package is missing (the smp ones without
``pip install -e ".[smp]"``) is skipped with a line saying so.

- fwd+bwd: train mode, batch ``--batch`` (2 by default: DeepLabV3's image-pooling BatchNorm cannot train on a
  single image; the loss is a plain mean of the logits, so only the model is timed); seconds per image.
- GFLOPs: one forward pass of one image at eval time, counted by torch's own ``FlopCounterMode`` (a
  multiply-add counts 2), so no extra package is needed; operators it has no formula for count 0.
- PyTorch ms / ORT ms: eval-mode inference of one image (logits upsampled to the input size, as predict.py
  runs it); ORT only with ``--onnx`` (needs the onnx extra): the model is exported as export.py does, run by
  onnxruntime on the CPU with the same thread count.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seg_template.build import build_net  # noqa: E402
from seg_template.errors import ConfigError  # noqa: E402
from seg_template.models.outputs import split_outputs  # noqa: E402
from seg_template.options import non_negative_int, positive_int  # noqa: E402

MODEL_DIR = ROOT / "configs" / "model"


def build(spec: str, num_classes: int) -> torch.nn.Module:
    """The model of ``configs/model/<name>.yaml`` for ``spec`` = ``<name>`` or ``<name>:<encoder>`` (a config
    with an ``encoder`` key, the smp ones: ``smp_unet:resnet18``), without pretrained weights."""
    name, _, encoder = spec.partition(":")
    path = MODEL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--models: no config {path} (have: {sorted(p.stem for p in MODEL_DIR.glob('*.yaml'))})")
    model = OmegaConf.load(path)
    if encoder:
        if "encoder" not in model:
            raise SystemExit(f"--models {spec}: configs/model/{name}.yaml has no encoder to set")
        model.encoder = encoder
    cfg = OmegaConf.merge({"data": {"num_classes": num_classes}}, {"model": model})
    return build_net(cfg.model)[0]


def bench(name: str, size: int, batch: int, reps: int, warmup: int, num_classes: int,
          onnx: bool = False) -> dict[str, object]:
    """One table row: parameters (M), strides of "out" / "aux", median seconds per image of fwd+bwd, forward
    GFLOPs, and inference milliseconds in PyTorch (and onnxruntime when ``onnx``)."""
    torch.manual_seed(0)
    model = build(name, num_classes).train()
    images = torch.randn(batch, 3, size, size)
    times = []
    for step in range(warmup + reps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out, aux = split_outputs(model(images))
        (out.float().mean() + (0 if aux is None else aux.float().mean())).backward()
        if step >= warmup:
            times.append((time.perf_counter() - start) / batch)
    gflop = gflops(model, size)
    torch_ms, ort_ms = inference_ms(model, size, reps, warmup, onnx)
    return {
        "model": name,
        "gflops": gflop,
        "torch_ms": torch_ms,
        "ort_ms": ort_ms,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "stride": size // out.shape[-1],
        "aux": "no" if aux is None else f"yes (stride {size // aux.shape[-1]})",
        "seconds": statistics.median(times),
    }


def gflops(model: torch.nn.Module, size: int) -> float:
    """Forward GFLOPs of one ``size`` x ``size`` image in eval mode (torch's flop counter; a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _median_ms(run, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def inference_ms(model: torch.nn.Module, size: int, reps: int, warmup: int, onnx: bool) -> tuple[float, float | None]:
    """Median milliseconds of one image's eval-mode logits at the input size: PyTorch, and onnxruntime when
    ``onnx`` (None otherwise)."""
    import tempfile

    from seg_template.onnx_model import ImageSizeLogits

    wrapped = ImageSizeLogits(model.eval()).eval()
    image = torch.randn(1, 3, size, size)

    def torch_run() -> None:
        with torch.inference_mode():
            wrapped(image)

    pytorch = _median_ms(torch_run, reps, max(warmup, 1))
    if not onnx:
        return pytorch, None
    from seg_template.onnx_model import export_onnx, ort_session

    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", image)
        session = ort_session(path, "cpu", threads=torch.get_num_threads())
        feed = {"images": image.numpy()}
        return pytorch, _median_ms(lambda: session.run(None, feed), reps, max(warmup, 1))


def markdown(rows: list[dict[str, object]], size: int, batch: int) -> str:
    onnx = any(r.get("ort_ms") is not None for r in rows)
    lines = [f"| model | params (M) | output stride | aux head | fwd+bwd s / {size}x{size} image | GFLOPs | "
             f"PyTorch ms |" + (" ORT ms |" if onnx else ""),
             "|---|---:|---:|---|---:|---:|---:|" + ("---:|" if onnx else "")]
    for r in rows:
        line = (f"| {r['model']} | {r['params']:.1f} | {r['stride']} | {r['aux']} | {r['seconds']:.2f} | "
                f"{r['gflops']:.2f} | {r['torch_ms']:.0f} |")
        if onnx:
            line += f" {r['ort_ms']:.0f} |" if r.get("ort_ms") is not None else " - |"
        lines.append(line)
    lines.append(f"\nCPU: {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}, "
                 f"torch {torch.__version__}; fwd+bwd: batch {batch}, time per image; GFLOPs and ms: one image, "
                 "eval-mode inference" + (", onnxruntime with as many threads" if onnx else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_models = sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if p.stem != "small")
    parser.add_argument("--models", nargs="+", default=all_models)
    parser.add_argument("--size", type=positive_int, default=512)
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--reps", type=positive_int, default=3)
    parser.add_argument("--warmup", type=non_negative_int, default=1)
    parser.add_argument("--num-classes", type=positive_int, default=19)
    parser.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--onnx", action="store_true",
                        help="also time onnxruntime (exports each model first; needs pip install -e '.[onnx]')")
    args = parser.parse_args(argv)
    if args.onnx:
        from seg_template.onnx_model import require_onnx

        try:
            require_onnx("onnx", "onnxruntime", "onnxscript")
        except ValueError as err:
            raise SystemExit(f"--onnx: {err}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        try:
            rows.append(bench(name, args.size, args.batch, args.reps, args.warmup, args.num_classes, args.onnx))
        except Exception as err:  # Hydra wraps the builder's ConfigError (a missing optional package: smp)
            cause = err if isinstance(err, ConfigError) else err.__cause__
            if not isinstance(cause, ConfigError):
                raise
            if args.models is not all_models:  # asked for by name: say why it cannot be built
                raise SystemExit(f"--models {name}: {cause}") from None
            print(f"{name}: skipped ({cause})", file=sys.stderr, flush=True)
            continue
        print(f"{name}: {rows[-1]['seconds']:.2f} s/image fwd+bwd, {rows[-1]['gflops']:.1f} GFLOPs",
              file=sys.stderr, flush=True)
    table = markdown(rows, args.size, args.batch)
    print(table)
    return table


if __name__ == "__main__":
    main()
