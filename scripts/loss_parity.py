"""Parity of every loss term with an independent reference: max |Δloss| and max |Δgrad|, and gradcheck.

    python scripts/loss_parity.py             # float64, 3 random batches per row
    python scripts/loss_parity.py --seeds 10

Each row runs a term (eager and memory-efficient paths) and its reference on random logits at native stride
(``[N, C, h, w]``, upsampled inside) with ~20 % ignored pixels (label 255), class weights where the term takes
them, and a class absent from the labels; it prints the largest difference of the loss and of its gradient
w.r.t. the logits over the seeds, and whether ``torch.autograd.gradcheck`` passes on a small shape.

References (none shares code with the terms):

- CE: ``torch.nn.functional.cross_entropy`` after ``F.interpolate``;
- OHEM: ``seg_template/losses/reference.py``'s sort-based HRNet definition;
- Dice: segmentation_models_pytorch's ``DiceLoss`` per class (``classes=[c]``), averaged over the present
  classes (``pip install segmentation-models-pytorch``; rows skipped without it);
- Focal: the formula ``-w_t (1 - p)^gamma log p`` written out with ``log_softmax``; gamma 0: torch's CE;
- Lovász: segmentation_models_pytorch's ``LovaszLoss`` (a port of Berman et al.'s reference code), run in
  float64 (its ``.float()`` calls made float64 for the call).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seg_template.losses import CrossEntropy, DiceLoss, FocalLoss, LovaszSoftmax, OhemCrossEntropy  # noqa: E402
from seg_template.losses.reference import ohem_reference, ohem_threshold  # noqa: E402
from seg_template.options import positive_int  # noqa: E402

IGNORE = 255
WEIGHT = [0.5, 2.0, 1.0, 0.0, 3.0]

Term = Callable[[Tensor, Tensor], Tensor]


def batch(seed: int, low: tuple[int, int] = (9, 11), size: tuple[int, int] = (37, 43)) -> tuple[Tensor, Tensor]:
    """Logits [2, 5, *low] float64 (leaf) and labels [2, *size]: class 2 absent, ~20 % ignored."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, 5, *low, generator=gen, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 5, (2, *size), generator=gen)
    target[target == 2] = 3
    target[torch.rand(target.shape, generator=gen) < 0.2] = IGNORE
    return logits, target


def upsampled(logits: Tensor, target: Tensor) -> Tensor:
    return F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)


def focal_formula(gamma: float, weight: list[float] | None, thresh: float | None = None,
                  min_kept: int = 0) -> Term:
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        valid = target != IGNORE
        up, index = upsampled(logits, target), torch.where(valid, target, 0)[:, None]
        log_p = torch.log_softmax(up, 1).gather(1, index)[:, 0]
        w = torch.ones_like(log_p) if weight is None else torch.tensor(weight, dtype=log_p.dtype)[target * valid]
        focal = -w * (1 - log_p.exp()) ** gamma * log_p
        if thresh is None:
            return (focal * valid).sum() / (w * valid).sum()
        p = torch.softmax(up.detach(), 1).gather(1, index)[:, 0]  # as ohem_threshold computes p: ties stay ties
        kept = valid & (p < ohem_threshold(logits.detach(), target, thresh, min_kept, IGNORE))
        return focal[kept].mean()

    return loss


def torch_ce(weight: list[float] | None) -> Term:
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        w = None if weight is None else torch.tensor(weight, dtype=logits.dtype)
        return F.cross_entropy(upsampled(logits, target), target, w, ignore_index=IGNORE)

    return loss


def smp_dice(smooth: float, weight: list[float] | None) -> Term:
    import segmentation_models_pytorch as smp

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        up = upsampled(logits, target)
        per_class = torch.stack([smp.losses.DiceLoss("multiclass", classes=[c], smooth=smooth,
                                                     ignore_index=IGNORE)(up, target) for c in range(up.shape[1])])
        present = torch.stack([(target == c).any() for c in range(up.shape[1])]).to(up.dtype)
        share = present if weight is None else present * torch.tensor(weight, dtype=up.dtype)
        return (per_class * share).sum() / share.sum()

    return loss


@contextlib.contextmanager
def float_is_double() -> Iterator[None]:
    """smp's Lovász casts its Jaccard weights with ``.float()``; make that float64 for a float64 comparison."""
    original = torch.Tensor.float
    torch.Tensor.float = torch.Tensor.double
    try:
        yield
    finally:
        torch.Tensor.float = original


def smp_lovasz(per_image: bool) -> Term:
    import segmentation_models_pytorch as smp

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        with float_is_double():
            return smp.losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE,
                                         from_logits=True)(upsampled(logits, target), target)

    return loss


def ohem(thresh: float, min_kept: int) -> Term:
    return lambda logits, target: ohem_reference(logits, target, thresh, min_kept, torch.tensor(WEIGHT).double(),
                                                 IGNORE)


#: name -> (term factory taking memory_efficient, reference factory, reference's name)
ROWS: dict[str, tuple[Callable[[bool], Term], Callable[[], Term], str]] = {
    "ce (weighted)": (lambda me: CrossEntropy(IGNORE, WEIGHT, memory_efficient=me), lambda: torch_ce(WEIGHT),
                      "torch F.cross_entropy"),
    "ohem 0.7 / 200": (lambda me: OhemCrossEntropy(0.7, 200, IGNORE, WEIGHT, memory_efficient=me),
                       lambda: ohem(0.7, 200), "sort-based HRNet OHEM"),
    "ohem p_k (0.05 / 2000)": (lambda me: OhemCrossEntropy(0.05, 2000, IGNORE, WEIGHT, memory_efficient=me),
                               lambda: ohem(0.05, 2000), "sort-based HRNet OHEM"),
    "dice (smooth 1)": (lambda me: DiceLoss(1.0, IGNORE, None, memory_efficient=me), lambda: smp_dice(1.0, None),
                        "smp DiceLoss per class"),
    "dice (smooth 0, weighted)": (lambda me: DiceLoss(0.0, IGNORE, WEIGHT, memory_efficient=me),
                                  lambda: smp_dice(0.0, WEIGHT), "smp DiceLoss per class"),
    "focal (gamma 2, weighted)": (lambda me: FocalLoss(2.0, IGNORE, WEIGHT, memory_efficient=me),
                                  lambda: focal_formula(2.0, WEIGHT), "the formula"),
    "focal (gamma 0.5)": (lambda me: FocalLoss(0.5, IGNORE, None, memory_efficient=me),
                          lambda: focal_formula(0.5, None), "the formula"),
    "focal (gamma 0) = ce": (lambda me: FocalLoss(0.0, IGNORE, WEIGHT, memory_efficient=me),
                             lambda: torch_ce(WEIGHT), "torch F.cross_entropy"),
    "focal + ohem (0.05 / 2000)": (
        lambda me: FocalLoss(2.0, IGNORE, WEIGHT, memory_efficient=me, thresh=0.05, min_kept=2000),
        lambda: focal_formula(2.0, WEIGHT, 0.05, 2000), "the formula, sort-based threshold"),
    "lovasz (batch)": (lambda me: LovaszSoftmax(IGNORE), lambda: smp_lovasz(False), "smp LovaszLoss (Berman)"),
    "lovasz (per image)": (lambda me: LovaszSoftmax(IGNORE, per_image=True), lambda: smp_lovasz(True),
                           "smp LovaszLoss (Berman)"),
}


def value_and_grad(loss: Term, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


def row(name: str, seeds: int) -> list[str]:
    make_term, make_reference, reference_name = ROWS[name]
    try:
        reference = make_reference()
    except ImportError:
        return [name, reference_name, "skipped: pip install segmentation-models-pytorch", "", "", "", ""]
    cells = []
    for memory_efficient in (False, True):
        d_loss = d_grad = 0.0
        for seed in range(seeds):
            logits, target = batch(seed)
            ours, ours_grad = value_and_grad(make_term(memory_efficient), logits, target)
            theirs, theirs_grad = value_and_grad(reference, logits, target)
            d_loss = max(d_loss, (ours - theirs).abs().item())
            d_grad = max(d_grad, (ours_grad - theirs_grad).abs().max().item())
        cells += [f"{d_loss:.1e}", f"{d_grad:.1e}"]
    small, small_target = batch(0, (3, 4), (6, 8))
    term = make_term(True)
    passed = torch.autograd.gradcheck(lambda x: term(x, small_target), (small.detach().requires_grad_(),),
                                      raise_exception=False)
    return [name, reference_name, *cells, "pass" if passed else "FAIL"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=3, help="random batches per row (default 3)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # OHEM's "min_kept covers the batch" note, at gradcheck's tiny shape
    header = ["term", "reference", "eager |dloss|", "eager |dgrad|", "efficient |dloss|", "efficient |dgrad|",
              "gradcheck"]
    rows = [row(name, args.seeds) for name in ROWS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip())
    print(f"\nfloat64; logits [2, 5, 9, 11] upsampled to [2, 37, 43], ~20 % ignored, class 2 absent; max over "
          f"{args.seeds} seeds. "
          f"gradcheck: float64 [2, 5, 3, 4] -> [2, 6, 8], the memory-efficient path.")
    print("FAILED: " + ", ".join(r[0] for r in rows if r[-1] == "FAIL") if any(r[-1] == "FAIL" for r in rows)
          else "every gradcheck passed")
    return 1 if any(r[-1] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
