"""Forward+backward wall time and peak memory of every loss term: memory-efficient path against naive path.

    python scripts/bench_losses.py                       # shapes a and b, every term, CPU, 5 reps
    python scripts/bench_losses.py --shapes b --inputs random          # the issue's ADE20K-like table
    python scripts/bench_losses.py --shapes a --terms dice,focal --reps 3 --device cuda
    python scripts/bench_losses.py --shapes 2x6x16x16:64x64 --reps 2   # a quick check (N x C x h x w : H x W)

Shapes: ``a`` Cityscapes-like (2x19x128x256 logits -> 512x1024 labels), ``b`` ADE20K-like (8x150x128x128 ->
512x512), or any ``NxCxhxw:HxW``. Terms (``--terms``, default all): ``ce`` (CrossEntropy), ``ohem``
(OhemCrossEntropy), ``dice`` (DiceLoss), ``focal`` (FocalLoss), ``focal_ohem`` (FocalLoss with OHEM's
selection) and ``lovasz`` (LovaszSoftmax).

The first table has one line per shape x inputs x term. A term's naive row is the term built with
``memory_efficient=False`` (bilinear interpolation to the labels' size, then the loss, with autograd); its
efficient row is the same term with ``memory_efficient=True`` (the chunked kernels of
``seg_template/losses/memory_efficient.py``). Columns: ``naive ms`` / ``naive MiB`` the naive row's median
time and peak memory, ``eff ms`` / ``eff MiB`` the efficient row's, ``time x naive`` and ``memory x naive``
the efficient row as a multiple of the naive one, and ``goal met``: yes when memory x naive <= 0.25 and
time x naive <= 1.2 (the goal for CE, OHEM, Dice, Focal; Focal+OHEM is held to it too), no otherwise, "?"
when the naive row's peak is too small to measure (a tiny shape: memory x naive shows "-").

``lovasz``: LovaszSoftmax sorts: for each of the K classes present in the labels, the errors ``|fg - p_c|``
of all P = N*H*W valid pixels are sorted, O(K P log P) time, whichever path. Its naive (eager) path holds the
full-resolution probabilities ``[N, C, H, W]`` (kept by autograd) plus several ``[K, P]`` tensors (errors,
int64 sort order, foreground masks, weights); at shape b, K ~ 150 and P ~ 1.9e6, one float32 ``[K, P]``
tensor is ~1.1 GiB, the int64 order ~2.1 GiB. Its memory-efficient path keeps the probabilities and their
gradient (two ``[N, C, H, W]``) and sorts a group of classes at a time; it has no goal ("n/a"): the second
table says what each path costs over plain CE.

The second table lists every measured row against plain torch cross-entropy (``plain CE (torch)``: interpolate,
then ``F.cross_entropy``), as ``x CE`` for time and peak memory; ``--rows`` adds rows to it (e.g.
``--rows "OHEM sort reference"``, HRNet's sort-based OHEM, measured by default with ``ohem``).

Timing: for each shape x inputs, one spawned process builds the inputs once and times every row, the rows
taking turns rep by rep after warm-up. A time reported is the row's median; a time ratio is the median over
reps of (row time / its baseline's time in the same rep), so load changes on a shared machine cancel out.
Peak memory: each (shape, inputs, row) runs in its own fresh spawned process, so on CPU it is the rise of
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS once the inputs exist
(freed heap pages handed back first with glibc's ``malloc_trim``, so that none is reused unseen); on CUDA it
is ``torch.cuda.max_memory_allocated`` above the allocation after the inputs. Either way it counts what two
forward+backward passes add on top of the inputs (logits, labels), gradient included, after one unmeasured
pass (one-off costs such as lazy initialisation and thread pools would otherwise dominate small shapes). A memory ratio is
(row MiB / baseline MiB). Shape b on the CPU needs the machine alone (several GiB per naive row, Lovász
most) and takes a while: Lovász sorts ~2.8e8 values per pass.

Inputs: ``random`` logits give every pixel p ~ 1/C, so OHEM's count says "more than min_kept below thresh"
and no selection runs; ``confident`` logits (a blocky label map with a large margin, like a trained model)
leave few pixels below thresh, so OHEM finds p_k with one ``kthvalue``.

To add a row, add one line to ROWS: a name and a zero-argument factory returning ``loss(logits, target)``;
to add a term, a line to TERMS naming its naive and efficient rows.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seg_template.losses import (  # noqa: E402
    CrossEntropy,
    DiceLoss,
    FocalLoss,
    LovaszSoftmax,
    OhemCrossEntropy,
)
from seg_template.losses.reference import ohem_reference  # noqa: E402
from seg_template.options import non_negative_int, positive_int  # noqa: E402

IGNORE = 255
SHAPES = {"a": "2x19x128x256:512x1024", "b": "8x150x128x128:512x512"}  # (a) Cityscapes-like, (b) ADE20K-like
OHEM = {"thresh": 0.7, "min_kept": 100000}  # HRNet's settings
MEMORY_GOAL, TIME_GOAL = 0.25, 1.2  # the efficient path: at most this share of the naive peak, this much time

LossFn = Callable[[Tensor, Tensor], Tensor]


def plain_ce(logits: Tensor, target: Tensor) -> Tensor:
    """The baseline: bilinear upsampling then torch's cross-entropy (mean over valid pixels)."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


ROWS: dict[str, Callable[[], LossFn]] = {
    "plain CE (torch)": lambda: plain_ce,
    # memory_efficient=False: interpolate to (H, W), then the loss with autograd (the naive path)
    "CrossEntropy": lambda: CrossEntropy(ignore_index=IGNORE),
    "OhemCrossEntropy": lambda: OhemCrossEntropy(**OHEM, ignore_index=IGNORE),
    # HRNet's way: softmax, gather, sort every valid pixel (the readable definition the tests use)
    "OHEM sort reference": lambda: functools.partial(ohem_reference, **OHEM, ignore_index=IGNORE),
    # loss.memory_efficient=true (seg_template/losses/memory_efficient.py), what the loss configs use by default
    "CE (memory_efficient)": lambda: CrossEntropy(ignore_index=IGNORE, memory_efficient=True),
    "OHEM (memory_efficient)": lambda: OhemCrossEntropy(**OHEM, ignore_index=IGNORE, memory_efficient=True),
    "DiceLoss": lambda: DiceLoss(ignore_index=IGNORE),
    "Dice (memory_efficient)": lambda: DiceLoss(ignore_index=IGNORE, memory_efficient=True),
    "FocalLoss": lambda: FocalLoss(gamma=2.0, ignore_index=IGNORE),
    "Focal (memory_efficient)": lambda: FocalLoss(gamma=2.0, ignore_index=IGNORE, memory_efficient=True),
    "Focal+OHEM": lambda: FocalLoss(gamma=2.0, **OHEM, ignore_index=IGNORE),
    "Focal+OHEM (memory_efficient)": lambda: FocalLoss(gamma=2.0, **OHEM, ignore_index=IGNORE,
                                                       memory_efficient=True),
    # it sorts every present class's errors over all pixels, either way (see the module docstring)
    "LovaszSoftmax": lambda: LovaszSoftmax(ignore_index=IGNORE),
    "Lovasz (memory_efficient)": lambda: LovaszSoftmax(ignore_index=IGNORE, memory_efficient=True),
}
BASELINE = "plain CE (torch)"


@dataclass(frozen=True)
class Term:
    """A line of the per-term table: ``row`` measured against ``naive`` (both names in ROWS)."""

    label: str
    naive: str
    row: str
    goal: bool = True  # whether MEMORY_GOAL and TIME_GOAL apply
    extra: tuple[str, ...] = ()  # rows measured with the term for the every-row table only


TERMS: dict[str, Term] = {
    "ce": Term("ce", "CrossEntropy", "CE (memory_efficient)"),
    "ohem": Term("ohem", "OhemCrossEntropy", "OHEM (memory_efficient)", extra=("OHEM sort reference",)),
    "dice": Term("dice", "DiceLoss", "Dice (memory_efficient)"),
    "focal": Term("focal", "FocalLoss", "Focal (memory_efficient)"),
    "focal_ohem": Term("focal+ohem", "Focal+OHEM", "Focal+OHEM (memory_efficient)"),
    # no goal: both paths sort every present class's errors; the every-row table compares them with CE
    "lovasz": Term("lovasz", "LovaszSoftmax", "Lovasz (memory_efficient)", goal=False, extra=("CrossEntropy",)),
}
LOVASZ_NOTE = ("lovasz: both paths sort each present class's errors over all N*H*W pixels, O(K P log P) time; the "
               "naive one keeps the [N, C, H, W] probabilities plus [K, P] errors, sort order and weights for "
               "autograd (K classes present, P valid pixels), the memory-efficient one the probabilities and their "
               "gradient and one group of classes at a time. No goal: the table below compares both with CE.")


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


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that an allocation reusing them raises the RSS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _loss_fns(rows: list[str], device: str) -> dict[str, LossFn]:
    fns = {row: ROWS[row]() for row in rows}
    return {row: fn.to(device) if isinstance(fn, torch.nn.Module) else fn for row, fn in fns.items()}


def _step(loss_fn: LossFn, logits: Tensor, target: Tensor) -> float:
    """One forward+backward; seconds."""
    start = time.perf_counter()
    loss_fn(logits, target).backward()
    if logits.is_cuda:
        torch.cuda.synchronize()
    logits.grad = None
    return time.perf_counter() - start


def time_rows(rows: list[str], shape: str, kind: str, device: str, reps: int,
              warmup: int) -> dict[str, list[float]]:
    """Forward+backward seconds per row, one per rep. The rows take turns rep by rep (in the order given),
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


def peak_memory(row: str, shape: str, kind: str, device: str, steps: int = 2, warmup: int = 1) -> float:
    """MiB that ``steps`` forward+backward passes add at their peak on top of the inputs (fresh process), after
    ``warmup`` unmeasured passes (one-off costs: lazy initialisation, thread pools, library workspaces)."""
    logits, target = make_inputs(shape, kind, device)
    (fn,) = _loss_fns([row], device).values()
    for _ in range(warmup):
        _step(fn, logits, target)
    if logits.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _trim_heap()
        # "5" resets VmHWM to the current RSS (Linux >= 4.0); without it the peak also counts input creation
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kib("VmRSS") * 1024
    for _ in range(steps):
        _step(fn, logits, target)
    peak = torch.cuda.max_memory_allocated() if logits.is_cuda else _rss_kib("VmHWM") * 1024
    return (peak - base) / 2**20


def _in_fresh_process(func: Callable[..., Any], *args: Any) -> Any:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)


def _in_this_process(func: Callable[..., Any], *args: Any) -> Any:
    """For tests: no spawned process (memory then also depends on what ran before in this process)."""
    return func(*args)


def time_ratio(times: dict[str, list[float]], row: str, baseline: str) -> float:
    """The median over reps of (row time / baseline time in the same rep)."""
    return statistics.median(t / b for t, b in zip(times[row], times[baseline], strict=True))


def memory_ratio(mib: dict[str, float], row: str, baseline: str) -> float | None:
    """Row peak / baseline peak; None when the baseline's peak did not rise measurably (a tiny shape)."""
    return mib[row] / mib[baseline] if mib[baseline] > 0 else None


@dataclass(frozen=True)
class TermResult:
    """One line of the per-term table (times in ms, memory in MiB, ratios of ``row`` to ``naive``)."""

    shape: str
    kind: str
    term: str
    naive_ms: float
    naive_mib: float
    ms: float
    mib: float
    time_ratio: float
    memory_ratio: float | None
    goal_met: str  # "yes", "no", "?" (memory unmeasured) or "n/a" (no goal)


def goal_verdict(goal: bool, time_x: float, memory_x: float | None) -> str:
    """"yes" / "no" against MEMORY_GOAL and TIME_GOAL (NaN: "no"); "?" unmeasured; "n/a" without a goal."""
    if not goal:
        return "n/a"
    if memory_x is None:
        return "?"
    return "yes" if memory_x <= MEMORY_GOAL and time_x <= TIME_GOAL else "no"


def term_result(term: str, shape: str, kind: str, times: dict[str, list[float]],
                mib: dict[str, float]) -> TermResult:
    spec = TERMS[term]
    time_x, memory_x = time_ratio(times, spec.row, spec.naive), memory_ratio(mib, spec.row, spec.naive)
    return TermResult(SHAPES.get(shape, shape), kind, spec.label, statistics.median(times[spec.naive]) * 1e3,
                      mib[spec.naive], statistics.median(times[spec.row]) * 1e3, mib[spec.row], time_x, memory_x,
                      goal_verdict(spec.goal, time_x, memory_x))


def _ratio(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"


TERM_HEADER = (f"{'shape':<24} {'inputs':<10} {'term':<13} {'naive ms':>10} {'naive MiB':>10} {'eff ms':>10} "
               f"{'eff MiB':>10} {'time x naive':>12} {'memory x naive':>14} {'goal met':>8}")
ROW_HEADER = f"{'shape':<24} {'inputs':<10} {'row':<30} {'median ms':>10} {'x CE':>6} {'peak MiB':>9} {'x CE':>6}"


def term_line(r: TermResult) -> str:
    return (f"{r.shape:<24} {r.kind:<10} {r.term:<13} {r.naive_ms:>10.1f} {r.naive_mib:>10.1f} {r.ms:>10.1f} "
            f"{r.mib:>10.1f} {_ratio(r.time_ratio, 12)} {_ratio(r.memory_ratio, 14)} {r.goal_met:>8}")


def row_lines(shape: str, kind: str, rows: list[str], times: dict[str, list[float]],
              mib: dict[str, float]) -> list[str]:
    """Every row against BASELINE (which must be in ``rows``)."""
    return [f"{SHAPES.get(shape, shape):<24} {kind:<10} {row:<30} {statistics.median(times[row]) * 1e3:>10.1f} "
            f"{time_ratio(times, row, BASELINE):>6.2f} {mib[row]:>9.1f} {_ratio(memory_ratio(mib, row, BASELINE), 6)}"
            for row in rows]


def rows_for(terms: Iterable[str], extra_rows: Iterable[str] = ()) -> list[str]:
    """BASELINE, then each term's naive, efficient and extra rows, then ``extra_rows``; no row twice."""
    rows = [BASELINE]
    for term in terms:
        spec = TERMS[term]
        rows += [spec.naive, spec.row, *spec.extra]
    rows += list(extra_rows)
    return list(dict.fromkeys(rows))


def run(shapes: list[str], kinds: list[str], terms: list[str], extra_rows: list[str], device: str, reps: int,
        warmup: int, runner: Callable[..., Any] = _in_fresh_process,
        echo: Callable[[str], None] | None = None) -> list[TermResult]:
    """Measure every shape x inputs, print (``echo``, default print) the per-term table as it goes and the
    every-row table at the end; return the per-term lines."""
    echo = echo or functools.partial(print, flush=True)
    rows = rows_for(terms, extra_rows)
    echo(f"device={device} threads={torch.get_num_threads()} reps={reps} warmup={warmup} torch={torch.__version__}")
    echo("\nPer term: memory-efficient path vs the same term's naive path (interpolate, then the loss), "
         "measured side by side")
    echo(TERM_HEADER + "\n" + "-" * len(TERM_HEADER))
    results: list[TermResult] = []
    detail: list[str] = []
    for shape in shapes:
        for kind in kinds:
            times = runner(time_rows, rows, shape, kind, device, reps, warmup)
            mib = {row: runner(peak_memory, row, shape, kind, device) for row in rows}
            for term in terms:
                results.append(term_result(term, shape, kind, times, mib))
                echo(term_line(results[-1]))
            detail += row_lines(shape, kind, rows, times, mib)
    echo(f"goal met: memory x naive <= {MEMORY_GOAL} and time x naive <= {TIME_GOAL}; '?': the naive peak was "
         "too small to measure; 'n/a': no goal")
    if "lovasz" in terms:
        echo(LOVASZ_NOTE)
    echo(f"\nEvery row vs {BASELINE} (interpolate, then F.cross_entropy)")
    echo(ROW_HEADER + "\n" + "-" * len(ROW_HEADER))
    for line in detail:
        echo(line)
    return results


def _choices(option: str, value: str, known: Iterable[str]) -> list[str]:
    chosen = [x for x in value.split(",") if x]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise SystemExit(f"{option}: unknown {unknown}; choose from {list(known)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="a,b", help="comma list of a, b or NxCxhxw:HxW (default a,b)")
    parser.add_argument("--inputs", default="random,confident", help="comma list of random, confident")
    parser.add_argument("--terms", default=",".join(TERMS), help=f"comma list from: {', '.join(TERMS)} (default all)")
    parser.add_argument("--rows", default="", help=f"extra rows for the every-row table, comma list from: "
                                                   f"{', '.join(ROWS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per case (median reported)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed repetitions first")
    args = parser.parse_args(argv)
    kinds = _choices("--inputs", args.inputs, ("random", "confident"))
    terms = _choices("--terms", args.terms, TERMS)
    extra_rows = _choices("--rows", args.rows, ROWS)
    if not kinds or not (terms or extra_rows):
        raise SystemExit("--inputs and --terms (or --rows) need at least one entry each")
    shapes = args.shapes.split(",")
    for shape in shapes:
        parse_shape(shape)
    run(shapes, kinds, terms, extra_rows, args.device, args.reps, args.warmup)


if __name__ == "__main__":
    main()
