"""The loss family: cross-entropy (plain or class-weighted), HRNet-style OHEM, the aux-head wrapper, class
weights, and the memory-efficient kernels behind ``loss.memory_efficient``.

Shapes: ``logits`` float ``[N, C, h, w]`` at the model's native stride, ``target`` integer ``[N, H, W]`` holding
``[0, C)`` or ``ignore_index``; the logits are bilinearly upsampled to ``(H, W)`` inside the loss.

    cross_entropy.py     CrossEntropy, weighted_cross_entropy (loss=ce, loss=wce)
    ohem.py              OhemCrossEntropy (loss=ohem)
    aux.py               SegmentationLoss: main loss + aux-head term, what every loss config builds
    class_weights.py     load_class_weights: a list or a .npy / .json / .txt file
    rules.py             the rules every path shares: label checks, nothing to average -> 0, OHEM's
                         selection, non-finite logits -> NaN
    memory_efficient.py  the kernels: loss and gradient without [N, C, H, W] upsampled logits
    sweep.py, resize.py  their chunked sweep and the chunked bilinear resize with its adjoint
    reference.py         slow, readable definitions the tests and scripts/bench_losses.py compare against
"""

from seg_template.losses.aux import SegmentationLoss
from seg_template.losses.class_weights import WeightSpec, load_class_weights
from seg_template.losses.cross_entropy import CrossEntropy, upsampled_nll, weighted_cross_entropy
from seg_template.losses.memory_efficient import (
    memory_efficient_cross_entropy,
    memory_efficient_ohem_cross_entropy,
)
from seg_template.losses.ohem import OhemCrossEntropy
from seg_template.losses.rules import check_target

__all__ = [
    "CrossEntropy",
    "OhemCrossEntropy",
    "SegmentationLoss",
    "WeightSpec",
    "check_target",
    "load_class_weights",
    "memory_efficient_cross_entropy",
    "memory_efficient_ohem_cross_entropy",
    "upsampled_nll",
    "weighted_cross_entropy",
]
