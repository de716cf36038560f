"""The loss family: terms (cross-entropy plain or class-weighted, HRNet-style OHEM, Dice, Focal, Lovasz-softmax),
their weighted sums, the aux-head wrapper, class weights, and the memory-efficient kernels behind
``loss.memory_efficient``.

Shapes: ``logits`` float ``[N, C, h, w]`` at the model's native stride, ``target`` integer ``[N, H, W]`` holding
``[0, C)`` or ``ignore_index``; the logits are bilinearly upsampled to ``(H, W)`` inside the loss.

    cross_entropy.py     CrossEntropy, weighted_cross_entropy (loss=ce, loss=wce)
    ohem.py              OhemCrossEntropy (loss=ohem)
    dice.py              DiceLoss (loss=dice)
    focal.py             FocalLoss, with OHEM's selection when thresh is set (loss=focal)
    lovasz.py            LovaszSoftmax (loss=lovasz)
    terms.py             TERMS by name, build_term, TermSum: a weighted sum of terms (loss=ce_dice)
    aux.py               SegmentationLoss: main term(s) + aux-head term, what every loss config builds
    class_weights.py     load_class_weights: a list or a .npy / .json / .txt file
    rules.py             the rules every path shares: label checks, nothing to average -> 0, OHEM's
                         selection, non-finite logits -> NaN, the focal factor, Dice's per-class scores
    memory_efficient.py  the kernels: loss and gradient without [N, C, H, W] upsampled logits
    sweep.py, resize.py  their chunked sweep and the chunked bilinear resize with its adjoint
    reference.py         slow, readable definitions the tests and scripts/bench_losses.py compare against
"""

from seg_template.losses.aux import SegmentationLoss
from seg_template.losses.class_weights import WeightSpec, load_class_weights
from seg_template.losses.cross_entropy import CrossEntropy, upsampled_nll, weighted_cross_entropy
from seg_template.losses.dice import DiceLoss
from seg_template.losses.focal import FocalLoss
from seg_template.losses.lovasz import LovaszSoftmax
from seg_template.losses.memory_efficient import (
    memory_efficient_cross_entropy,
    memory_efficient_dice_loss,
    memory_efficient_focal_loss,
    memory_efficient_ohem_cross_entropy,
)
from seg_template.losses.ohem import OhemCrossEntropy
from seg_template.losses.rules import check_target
from seg_template.losses.terms import TERMS, TermSum, build_term

__all__ = [
    "TERMS",
    "CrossEntropy",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmax",
    "OhemCrossEntropy",
    "SegmentationLoss",
    "TermSum",
    "build_term",
    "WeightSpec",
    "check_target",
    "load_class_weights",
    "memory_efficient_cross_entropy",
    "memory_efficient_dice_loss",
    "memory_efficient_focal_loss",
    "memory_efficient_ohem_cross_entropy",
    "upsampled_nll",
    "weighted_cross_entropy",
]
