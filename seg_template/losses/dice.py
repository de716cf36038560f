"""Soft Dice loss over C classes: per class over the batch, then the mean over the classes present."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seg_template.losses.class_weights import WeightSpec
from seg_template.losses.cross_entropy import PixelCrossEntropy
from seg_template.losses.memory_efficient import memory_efficient_dice_loss
from seg_template.losses.rules import (
    CheckedTarget,
    dice_scores,
    mean_or_zero,
    present_class_weights,
    report_nonfinite,
)
from seg_template.losses.sweep import compute_dtype, no_autocast
from seg_template.options import require


class DiceLoss(PixelCrossEntropy):
    """``1 - Dice`` of the softmax probabilities and the one-hot labels, per class, averaged over classes.

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar``. After bilinear upsampling and a softmax, over
    the valid pixels of the whole batch (ignored pixels count nowhere), class c has ``I_c`` = the summed
    probability of c at the pixels labelled c, ``P_c`` = the summed probability of c and ``T_c`` = the number
    of pixels labelled c; ``dice_c = (2 I_c + 2 smooth) / (P_c + T_c + 2 smooth)`` (the denominator clamped at
    ``2 eps``) and the loss is the mean of ``1 - dice_c`` over the classes present in the batch's labels
    (``T_c > 0``), weighted by ``weight`` when given.

    Classes absent from the batch's labels are left out of the mean: their Dice is undefined (0/0 without
    smoothing), and predicting them is already penalised through the present classes' probabilities.
    Relation to segmentation_models_pytorch's ``DiceLoss(mode="multiclass", smooth, eps, ignore_index)``: the
    per-class values are equal; smp zeroes the absent classes but still divides by C (and, with
    ``class_weights``, by every class's weight), so its loss is ours times (present share).

    Every pixel ignored (or every present class of weight 0) gives 0.0 with a zero gradient that still
    flows; a NaN or infinite logit gives NaN. Computed in float32 (float64 stays float64), also under
    autocast. ``memory_efficient``: two chunked sweeps (``memory_efficient.py``), never the batch's
    full-resolution probabilities; the same values and gradients.
    """

    name = "dice"

    def __init__(self, smooth: float = 1.0, ignore_index: int = 255, weight: WeightSpec = None,
                 align_corners: bool = False, memory_efficient: bool = False, eps: float = 1e-7) -> None:
        super().__init__(ignore_index, weight, align_corners, memory_efficient)
        self.smooth = float(require("loss.main.smooth", smooth))
        self.eps = float(require("loss.main.eps", eps))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        checked = self.check(logits, target)
        return report_nonfinite(self._loss(logits, checked.target, checked), checked.finite)

    def _loss(self, logits: Tensor, target: Tensor, checked: CheckedTarget) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"DiceLoss needs logits [N, C, h, w], got {tuple(logits.shape)}")
        if self.uses_kernels(logits):
            return memory_efficient_dice_loss(logits, target, self.smooth, self.eps, self.weight,
                                              self.ignore_index, self.align_corners)
        dtype = compute_dtype(logits)
        with no_autocast(logits.device):
            up = logits.to(dtype)
            if up.shape[-2:] != target.shape[-2:]:
                up = F.interpolate(up, size=target.shape[-2:], mode="bilinear", align_corners=self.align_corners)
            on = checked.valid.to(dtype).unsqueeze(1)  # [N, 1, H, W]
            prob = torch.softmax(up, 1) * on
            labels = F.one_hot(checked.safe, up.shape[1]).permute(0, 3, 1, 2).to(dtype) * on
            count = labels.sum((0, 2, 3))
            score, _, _ = dice_scores((prob * labels).sum((0, 2, 3)), prob.sum((0, 2, 3)), count, self.smooth,
                                      self.eps)
            share = present_class_weights(count, self.weight)
            return mean_or_zero(((1 - score) * share).sum(), share.sum())

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, eps={self.eps}, {super().extra_repr()}"
