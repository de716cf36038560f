"""The rules every loss path follows, each written once: the input checks, "nothing to average -> 0",
OHEM's pixel selection and "non-finite logits -> NaN".

The eager losses (``cross_entropy.py``, ``ohem.py``) and the memory-efficient kernels
(``memory_efficient.py``) all call these, so the two paths cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
from torch import Tensor

from seg_template.errors import ConfigError, DataError


class CheckedTarget(NamedTuple):
    """What ``check_target`` learnt; the count and the finiteness stay on the logits' device."""

    safe: Tensor  # int64 like target, ignored pixels set to class 0: safe to gather or index with
    valid: Tensor  # bool like target: not ignore_index
    n_valid: Tensor | int  # number of valid pixels: a 0-dim int64 tensor, an int once a loss read it on the host
    finite: Tensor  # 0-dim bool: every logit is finite
    target: Tensor  # the target to compute with: out-of-range labels made ignore_index when checks are deferred


class LabelRange:
    """The lowest and highest label the losses met while their label check was deferred
    (:func:`deferred_label_checks`), kept on the device: ``update`` never waits for it, :meth:`check` reads it
    once and raises ``DataError`` naming the out-of-range labels."""

    def __init__(self) -> None:
        self.low: Tensor | None = None  # 0-dim int64
        self.high: Tensor | None = None
        self.limits: tuple[int, int] = (0, 0)  # (num_classes, ignore_index) of the last update

    def update(self, low: Tensor, high: Tensor, num_classes: int, ignore_index: int) -> None:
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        self.limits = (num_classes, ignore_index)

    def check(self, where: str = "in the training steps since the last check") -> None:
        """One host read of what was met since the last check (then forgotten); ``DataError`` when a label was
        outside ``[0, num_classes)`` and not the ignore index."""
        if self.low is None or self.high is None:
            return
        low, high = torch.stack((self.low, self.high)).tolist()
        self.low = self.high = None
        num_classes, ignore_index = self.limits
        if low < 0 or high >= num_classes:
            shown = ", ".join(str(v) for v in (low, high) if v < 0 or v >= num_classes)
            raise DataError(f"target had labels outside [0, {num_classes}) that are not ignore_index={ignore_index} "
                            f"{where} (e.g. {shown}); those pixels were left out of the loss. Fix the masks or "
                            "data.ignore_index / data.num_classes")


_DEFERRED: ContextVar[LabelRange | None] = ContextVar("deferred_label_checks", default=None)


@contextmanager
def deferred_label_checks(labels: LabelRange) -> Iterator[LabelRange]:
    """Within the block, losses do not read their labels' range on the host (a GPU sync per loss call): they
    record it in ``labels`` and leave out-of-range pixels out of the loss (never an index out of range), and
    whoever opened the block calls ``labels.check()`` at its own intervals (the training step: at logging
    steps and before any checkpoint)."""
    token = _DEFERRED.set(labels)
    try:
        yield labels
    finally:
        _DEFERRED.reset(token)


def check_target(logits: Tensor, target: Tensor, ignore_index: int,
                 weight: Tensor | None = None) -> CheckedTarget:
    """Validate shapes, weight length and labels before anything indexes with them; note non-finite logits.

    ``logits [N, C, ...]``, ``target [N, ...]`` integer. Labels outside ``[0, C)`` that are not
    ``ignore_index`` raise ``DataError`` here (one host read), so a GPU run reports them instead of a
    device-side assert; within :func:`deferred_label_checks` they are recorded instead and left out of the loss,
    with no host read at all.
    """
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if logits.dim() < 2 or target.dim() != logits.dim() - 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: "
                         "expected logits [N, C, ...] and target [N, ...]")
    if logits.dim() != 4 and target.shape[1:] != logits.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)}: spatial sizes differ "
                         "and only 4-D logits [N, C, h, w] are resized")
    num_classes = logits.shape[1]
    if weight is not None and weight.numel() != num_classes:
        raise ConfigError(f"class weights have {weight.numel()} entries but the logits have {num_classes} "
                          "classes (check data.class_weights / loss.main.weight)")
    valid = target != ignore_index
    safe = target.long() * valid  # cheaper than torch.where; ignored -> class 0
    # NaN propagates through min/max and an infinity shows in one of them: one pass, no [N, C, ...] mask
    finite = torch.isfinite(torch.stack(torch.aminmax(logits.detach()))).all()
    low, high = torch.aminmax(safe)
    deferred = _DEFERRED.get()
    if deferred is not None:
        deferred.update(low, high, num_classes, ignore_index)
        inside = (safe >= 0) & (safe < num_classes)  # out-of-range pixels: left out until the check raises
        valid = valid & inside
        safe = safe * inside
        target = target.masked_fill(~inside, ignore_index)
    else:
        low, high = torch.stack((low, high)).tolist()
        if low < 0 or high >= num_classes:
            values = torch.unique(target[valid & ((target < 0) | (target >= num_classes))]).tolist()
            raise DataError(f"target has labels {values[:20]} outside [0, {num_classes}) that are not "
                            f"ignore_index={ignore_index}; fix the masks or data.ignore_index / data.num_classes")
    return CheckedTarget(safe, valid, torch.count_nonzero(valid), finite, target)


def report_nonfinite(loss: Tensor, finite: Tensor) -> Tensor:
    """The loss, made NaN when any logit was NaN or infinite (``finite``: a 0-dim bool tensor, applied on the
    device).

    Masks, thresholds and the "nothing kept -> 0" rule can otherwise turn garbage logits into a finite (or
    0.0) loss while the gradient is NaN. Adding a NaN constant changes the value only: the gradient is
    whatever the computation gave.
    """
    return loss + torch.zeros_like(loss).masked_fill(~finite, math.nan)


def mean_or_zero(total: Tensor, count: Tensor | int) -> Tensor:
    """``total / count``, or exactly 0.0 when there is nothing to average (every pixel ignored, of weight 0,
    or not kept by OHEM). ``total`` is then an exact 0 that depends on the logits, so dividing by 1 keeps the
    graph: a zero gradient still flows (PyTorch's mean gives NaN there)."""
    return total / mean_divisor(count)


def mean_divisor(count: Tensor | int) -> Tensor | int:
    """``count``, or 1 when it is 0: what ``mean_or_zero`` divides by (the kernels divide their gradient by
    it in place). ``count`` is a pixel count or a summed class weight, on the host or the device."""
    if isinstance(count, Tensor):
        return torch.where(count > 0, count, 1)
    return max(count, 1)


def pixel_weight(weight: Tensor | None, safe: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Class weight of each pixel's target (1 without weights), 0 at ignored pixels; shaped like ``safe``."""
    return valid.to(dtype) if weight is None else weight.to(dtype)[safe] * valid


def below_thresh(nll: Tensor, thresh: float) -> Tensor:
    """OHEM's ``p < thresh`` for the target-class probability ``p = exp(-nll)``, written on nll.

    Ignored pixels carry nll 0 (p = 1): never below a threshold <= 1.
    """
    return nll > -math.log(thresh)


def select_hard_pixels(nll: Tensor, n_valid: Tensor | int, thresh: float,
                       min_kept: int) -> tuple[Tensor, Tensor, Tensor | int]:
    """OHEM's selection (HRNet): keep the pixels with ``p < max(p_k, thresh)``.

    ``nll`` is the unweighted per-pixel nll, 0 at ignored pixels (any shape, no gradient needed); p_k is the
    (min_kept+1)-th smallest valid p (the largest when fewer pixels are valid). Returns
    ``(kept, below, n_kept)``: the kept mask, the ``p < thresh`` mask (both shaped like ``nll``) and the
    number kept. The kept set is ``below`` itself unless at most ``min_kept`` pixels are below thresh.

    No sort: one count decides whether p_k can matter (more than k pixels below thresh means
    p_k < thresh), and only then ``kthvalue`` finds it. Ignored pixels have the smallest nll of all, so
    ranks over all pixels are the ranks among the valid ones and no masked copy is needed.
    """
    below = below_thresh(nll, thresh)
    n_valid = int(n_valid)  # the rank of p_k is needed on the host: OHEM's selection reads its counts (syncs)
    if n_valid == 0:
        return below, below, 0
    k = min(min_kept, n_valid - 1)  # 0-based rank of p_k among the valid pixels
    n_below = int(torch.count_nonzero(below))
    if n_below > k:
        return below, below, n_below
    # p_k >= thresh, so it is the threshold; kthvalue on -nll (= log p) is faster than on nll's
    # mostly-zero low end
    log_p_k = torch.kthvalue(-nll.flatten(), k + 1).values
    kept = nll > -log_p_k
    return kept, below, kept.sum()


#: smallest ``1 - p`` the focal factor's derivative divides by: ``(1 - p)^(gamma - 1)`` stays finite for
#: gamma < 1 at saturated pixels (p rounded to 1), where its product with nll = 0 is 0 anyway
_TINY = 1e-30


def focal_terms(nll: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """The softmax focal loss of each pixel and its slope, from the per-pixel cross-entropy ``nll``.

    With ``p = exp(-nll)`` the target-class probability: ``value = (1 - p)^gamma * nll`` and ``slope = k`` such
    that ``d value / d logits = k * (softmax - one_hot)`` (the CE gradient scaled per pixel):
    ``k = (1 - p)^gamma + gamma * p * nll * (1 - p)^(gamma - 1)``. Both shaped like ``nll`` (any shape, no
    gradient needed); gamma 0 gives ``(nll, 1)``, cross-entropy. ``1 - p`` is computed as ``-expm1(-nll)``,
    exact where p is close to 1.
    """
    if gamma == 0:
        return nll, torch.ones_like(nll)
    q = (-torch.expm1(-nll)).clamp_min(_TINY)
    q_gamma = q.pow(gamma)
    return q_gamma * nll, q_gamma + gamma * torch.exp(-nll) * nll * q_gamma / q


def dice_scores(intersection: Tensor, prob_sum: Tensor, count: Tensor, smooth: float,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Soft Dice per class from its sums over the valid pixels (each ``[C]``): ``I`` = summed probability at
    the class's own pixels, ``P`` = summed probability, ``T`` = pixel count. Returns ``(score, numerator,
    denominator)``: ``score = (I + smooth) / max((P + T) / 2 + smooth, eps)``, i.e. ``(2I + 2s) / (P + T + 2s)``
    (segmentation_models_pytorch's ``soft_dice_score`` with the same ``smooth`` and ``eps``)."""
    numerator = intersection + smooth
    denominator = (0.5 * (prob_sum + count) + smooth).clamp_min(eps)
    return numerator / denominator, numerator, denominator


def present_class_weights(count: Tensor, weight: Tensor | None) -> Tensor:
    """Each class's share in a per-class loss's mean: its class weight (1 without weights) where the class has a
    valid pixel (``count [C]`` > 0), 0 where it is absent; not normalised (``mean_or_zero`` divides by the sum)."""
    present = (count > 0).to(count.dtype)
    return present if weight is None else present * weight.to(count)
