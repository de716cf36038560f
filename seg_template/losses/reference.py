"""Slow, readable definitions of the losses: what the fast paths must equal.

Each one materialises the upsampled logits ``[N, C, H, W]`` and, for OHEM, sorts the target-class
probability of every valid pixel, as HRNet's ``lib/core/criterion.py`` does. They share no code with the
losses on purpose, so a bug cannot hide in both; the tests and ``scripts/bench_losses.py`` compare against
them. Shapes: ``logits [N, C, h, w]``, ``target [N, H, W]`` int64 in ``[0, C)`` or ``ignore_index``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def upsample(logits: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``[N, C, h, w]`` logits to ``size`` (unchanged when already that size)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def cross_entropy_reference(logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = 255,
                            align_corners: bool = False, reduction: str = "mean") -> Tensor:
    """Upsample, then ``F.cross_entropy``; a "mean" over no pixel of non-zero weight is 0.0 (PyTorch: NaN)."""
    up = upsample(logits, tuple(target.shape[-2:]), align_corners)
    if reduction != "mean":
        return F.cross_entropy(up, target, weight, ignore_index=ignore_index, reduction=reduction)
    total = F.cross_entropy(up, target, weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    denominator = valid.sum() if weight is None else weight[target[valid]].sum()
    return total / denominator if denominator > 0 else total


def _target_probability(up: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Softmax probability of each pixel's target class, ``[N, H, W]`` (1 at ignored pixels), no gradient."""
    safe = target.masked_fill(target == ignore_index, 0)
    prob = F.softmax(up.detach(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    return prob.masked_fill(target == ignore_index, 1.0)


def ohem_threshold(logits: Tensor, target: Tensor, thresh: float, min_kept: int, ignore_index: int = 255,
                   align_corners: bool = False) -> float:
    """``max(p_k, thresh)``: p_k is the (min_kept+1)-th smallest target-class probability among the valid
    pixels (the largest when fewer are valid). ``thresh`` when no pixel is valid."""
    prob = _target_probability(upsample(logits, tuple(target.shape[-2:]), align_corners), target, ignore_index)
    return _threshold(prob[target != ignore_index], thresh, min_kept)


def _threshold(valid_prob: Tensor, thresh: float, min_kept: int) -> float:
    ranked = valid_prob.sort().values
    if ranked.numel() == 0:
        return thresh
    return max(ranked[min(min_kept, ranked.numel() - 1)].item(), thresh)


def ohem_reference(logits: Tensor, target: Tensor, thresh: float, min_kept: int, weight: Tensor | None = None,
                   ignore_index: int = 255, align_corners: bool = False) -> Tensor:
    """OHEM cross-entropy: the plain mean of the class-weighted cross-entropy of the valid pixels whose
    target-class probability is below ``ohem_threshold``; 0.0 (graph kept) when no pixel is kept, where
    HRNet gives NaN."""
    up = upsample(logits, tuple(target.shape[-2:]), align_corners)
    losses = F.cross_entropy(up, target, weight, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    prob = _target_probability(up, target, ignore_index)
    kept = valid & (prob < _threshold(prob[valid], thresh, min_kept))
    if not kept.any():
        return losses.sum() * 0
    return losses[kept].mean()
