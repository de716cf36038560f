"""Forward+backward wall time and peak memory of the losses, as ratios to plain cross-entropy.

    python scripts/bench_losses.py                       # shapes a and b, CPU, 5 reps
    python scripts/bench_losses.py --shapes a --reps 3 --device cuda
    python scripts/bench_losses.py --shapes 2x19x64x128:256x512

Timing: for each shape x inputs, one spawned process builds the inputs once and times every row, the rows
taking turns rep by rep after warm-up. The table gives each row's median time and, as "x CE", the median
over reps of (row time / baseline time in the same rep), so load changes on a shared machine cancel out.
Peak memory: each (shape, inputs, row) runs in its own fresh spawned process, so on CPU it is the rise of
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS once the inputs exist; on
CUDA it is ``torch.cuda.max_memory_allocated`` above the allocation after the inputs. Either way it counts
what two forward+backward passes add on top of the inputs (logits, labels), gradient included.

Inputs: ``random`` logits give every pixel p ~ 1/C, so OHEM's count says "more than min_kept below thresh"
and no selection runs; ``confident`` logits (a blocky label map with a large margin, like a trained model)
leave few pixels below thresh, so OHEM finds p_k with one ``kthvalue``.

To add a row, add one line to ROWS: a name and a zero-argument factory returning ``loss(logits, target)``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seg_template.losses import CrossEntropy, OhemCrossEntropy  # noqa: E402
from seg_template.losses.reference import ohem_reference  # noqa: E402
from seg_template.options import non_negative_int, positive_int  # noqa: E402

IGNORE = 255
SHAPES = {"a": "2x19x128x256:512x1024", "b": "8x150x128x128:512x512"}  # (a) Cityscapes-like, (b) ADE20K-like


def plain_ce(logits: Tensor, target: Tensor) -> Tensor:
    """The baseline: bilinear upsampling then torch's cross-entropy (mean over valid pixels)."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


ROWS: dict[str, Callable[[], Callable[[Tensor, Tensor], Tensor]]] = {
    "plain CE (torch)": lambda: plain_ce,
    "CrossEntropy": lambda: CrossEntropy(ignore_index=IGNORE),
    "OhemCrossEntropy": lambda: OhemCrossEntropy(thresh=0.7, min_kept=100000, ignore_index=IGNORE),
    # HRNet's way: softmax, gather, sort every valid pixel (the readable definition the tests use)
    "OHEM sort reference": lambda: functools.partial(ohem_reference, thresh=0.7, min_kept=100000,
                                                     ignore_index=IGNORE),
    # loss.memory_efficient=true (seg_template/losses/memory_efficient.py), what the loss configs use by default
    "CE (memory_efficient)": lambda: CrossEntropy(ignore_index=IGNORE, memory_efficient=True),
    "OHEM (memory_efficient)": lambda: OhemCrossEntropy(thresh=0.7, min_kept=100000, ignore_index=IGNORE,
                                                        memory_efficient=True),
}
BASELINE = "plain CE (torch)"


def parse_shape(spec: str) -> tuple[tuple[int, ...], tuple[int, int]]:
    """``"NxCxhxw:HxW"`` (or a key of SHAPES) -> ((N, C, h, w), (H, W))."""
    try:
        logits, labels = SHAPES.get(spec, spec).split(":")
        logits_shape, label_size = tuple(map(int, logits.split("x"))), tuple(map(int, labels.split("x")))
    except ValueError as err:
        raise SystemExit(f"--shapes: {spec!r} is neither one of {list(SHAPES)} nor NxCxhxw:HxW") from err
    if len(logits_shape) != 4 or len(label_size) != 2:
        raise SystemExit(f"--shapes: {spec!r} is neither one of {list(SHAPES)} nor NxCxhxw:HxW")
    return logits_shape, label_size


def make_inputs(shape: str, kind: str, device: str) -> tuple[Tensor, Tensor]:
    """Logits [N, C, h, w] (leaf, requires grad) and labels [N, H, W] with ~10% ignored pixels."""
    (n, c, h, w), (big_h, big_w) = parse_shape(shape)
    gen = torch.Generator().manual_seed(0)
    if kind == "random":
        logits = torch.randn(n, c, h, w, generator=gen)
        target = torch.randint(0, c, (n, big_h, big_w), generator=gen)
    else:  # blocks of 16x16 logit pixels, each one class, scored with a margin of 6 over unit noise
        blocks = torch.randint(0, c, (n, 1, max(1, h // 16), max(1, w // 16)), generator=gen).float()
        labels_low = F.interpolate(blocks, size=(h, w), mode="nearest")[:, 0].long()
        logits = torch.randn(n, c, h, w, generator=gen) + 6.0 * F.one_hot(labels_low, c).permute(0, 3, 1, 2)
        target = F.interpolate(blocks, size=(big_h, big_w), mode="nearest")[:, 0].long()
    target[torch.rand(target.shape, generator=gen) < 0.1] = IGNORE
    return logits.to(device).requires_grad_(), target.to(device)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _loss_fns(rows: list[str], device: str) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    fns = {row: ROWS[row]() for row in rows}
    return {row: fn.to(device) if isinstance(fn, torch.nn.Module) else fn for row, fn in fns.items()}


def _step(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, target: Tensor) -> float:
    """One forward+backward; seconds."""
    start = time.perf_counter()
    loss_fn(logits, target).backward()
    if logits.is_cuda:
        torch.cuda.synchronize()
    logits.grad = None
    return time.perf_counter() - start


def time_rows(rows: list[str], shape: str, kind: str, device: str, reps: int,
              warmup: int) -> dict[str, list[float]]:
    """Forward+backward seconds per row, one per rep. The rows take turns rep by rep (the baseline first),
    so each rep's times share the machine's load at that moment and can be compared pairwise."""
    logits, target = make_inputs(shape, kind, device)
    fns = _loss_fns(rows, device)
    for fn in fns.values():
        for _ in range(warmup):
            _step(fn, logits, target)
    times: dict[str, list[float]] = {row: [] for row in rows}
    for _ in range(reps):
        for row, fn in fns.items():
            times[row].append(_step(fn, logits, target))
    return times


def peak_memory(row: str, shape: str, kind: str, device: str, steps: int = 2) -> float:
    """MiB that ``steps`` forward+backward passes add at their peak on top of the inputs (fresh process)."""
    logits, target = make_inputs(shape, kind, device)
    (fn,) = _loss_fns([row], device).values()
    if logits.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # "5" resets VmHWM to the current RSS (Linux >= 4.0); without it the peak also counts input creation
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kib("VmRSS") * 1024
    for _ in range(steps):
        _step(fn, logits, target)
    peak = torch.cuda.max_memory_allocated() if logits.is_cuda else _rss_kib("VmHWM") * 1024
    return (peak - base) / 2**20


def _in_fresh_process(func: Callable, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="a,b", help="comma list of a, b or NxCxhxw:HxW (default a,b)")
    parser.add_argument("--inputs", default="random,confident", help="comma list of random, confident")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list from: {', '.join(ROWS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per case (median reported)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed repetitions first")
    args = parser.parse_args(argv)
    shapes, kinds = args.shapes.split(","), args.inputs.split(",")
    rows = [BASELINE] + [r for r in args.rows.split(",") if r != BASELINE]
    for name, known, what in ((kinds, ("random", "confident"), "--inputs"), (rows, ROWS, "--rows")):
        unknown = [x for x in name if x not in known]
        if unknown:
            raise SystemExit(f"{what}: unknown {unknown}; choose from {list(known)}")
    for shape in shapes:
        parse_shape(shape)

    print(f"device={args.device} threads={torch.get_num_threads()} reps={args.reps} warmup={args.warmup} "
          f"torch={torch.__version__}")
    header = f"{'shape':<24} {'inputs':<10} {'loss':<24} {'median ms':>10} {'x CE':>6} {'peak MiB':>9} {'x CE':>6}"
    print(header + "\n" + "-" * len(header), flush=True)
    for shape in shapes:
        for kind in kinds:
            times = _in_fresh_process(time_rows, rows, shape, kind, args.device, args.reps, args.warmup)
            mib = {row: _in_fresh_process(peak_memory, row, shape, kind, args.device) for row in rows}
            for row in rows:
                # a tiny shape may not raise the peak RSS at all: no memory ratio then
                mem_ratio = f"{mib[row] / mib[BASELINE]:>6.2f}" if mib[BASELINE] > 0 else f"{'-':>6}"
                # the median of per-rep ratios: a load change between reps cancels out of each ratio
                ratio = statistics.median(t / b for t, b in zip(times[row], times[BASELINE], strict=True))
                print(f"{SHAPES.get(shape, shape):<24} {kind:<10} {row:<24} "
                      f"{statistics.median(times[row]) * 1e3:>10.1f} {ratio:>6.2f} {mib[row]:>9.1f} {mem_ratio}",
                      flush=True)


if __name__ == "__main__":
    main()
