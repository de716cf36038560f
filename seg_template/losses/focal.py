"""The softmax focal loss (Lin et al., 2017, for C classes), optionally over OHEM's hard pixels only."""

from __future__ import annotations

from torch import Tensor

from seg_template.losses.class_weights import WeightSpec
from seg_template.losses.cross_entropy import PixelCrossEntropy, upsampled_nll
from seg_template.losses.memory_efficient import (
    memory_efficient_focal_loss,
    memory_efficient_ohem_cross_entropy,
)
from seg_template.losses.rules import (
    CheckedTarget,
    focal_terms,
    mean_or_zero,
    report_nonfinite,
    select_hard_pixels,
)
from seg_template.options import require


class FocalLoss(PixelCrossEntropy):
    """Cross-entropy that down-weights the pixels the model already gets right.

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar``. After bilinear upsampling, with ``p`` the
    softmax probability of a pixel's target class and ``w_t`` its class weight (1 without ``weight``):
    ``FL = w_t * (1 - p)^gamma * (-log p)``, and the loss is ``sum(FL) / sum(w_t)`` over the valid pixels - the
    class weights play the role of the paper's per-class alpha, and ``gamma=0`` is exactly ``CrossEntropy``
    with the same weights. Softmax over the C classes, as the model's argmax and the CE family use (smp's and
    MMSegmentation's focal losses are per-class sigmoids instead: another loss).

    ``thresh`` (None: off) applies OHEM's pixel selection first, exactly as ``OhemCrossEntropy`` selects (ranked
    by ``p``, ``min_kept`` per process batch, ``rules.select_hard_pixels``), and the loss is then the plain mean
    of ``FL`` over the kept pixels, HRNet's convention for OHEM. Every pixel ignored (or nothing kept, or
    every weight 0) gives 0.0 with a zero gradient that still flows; a NaN or infinite logit gives NaN.
    Computed in float32 (float64 stays float64) also under autocast. ``memory_efficient``: the chunked kernels
    (``memory_efficient.py``; same values and gradients, one sweep like CE's).
    """

    name = "focal"

    def __init__(self, gamma: float = 2.0, ignore_index: int = 255, weight: WeightSpec = None,
                 align_corners: bool = False, memory_efficient: bool = False, thresh: float | None = None,
                 min_kept: int = 100000) -> None:
        super().__init__(ignore_index, weight, align_corners, memory_efficient)
        self.gamma = float(require("loss.main.gamma", gamma))
        self.thresh = None if thresh is None else float(require("loss.main.thresh", thresh))
        self.min_kept = int(require("loss.main.min_kept", min_kept))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        checked = self.check(logits, target)
        return report_nonfinite(self._loss(logits, checked.target, checked), checked.finite)

    def _loss(self, logits: Tensor, target: Tensor, checked: CheckedTarget) -> Tensor:
        if self.uses_kernels(logits):
            if self.thresh is None:
                return memory_efficient_focal_loss(logits, target, self.gamma, self.weight, self.ignore_index,
                                                   self.align_corners)
            return memory_efficient_ohem_cross_entropy(logits, target, self.thresh, self.min_kept, self.weight,
                                                       self.ignore_index, self.align_corners,
                                                       n_valid=checked.n_valid, gamma=self.gamma)
        nll = upsampled_nll(logits, target.long(), self.ignore_index, self.align_corners)  # float32 or 64
        weights = self.pixel_weight(checked, nll)
        losses = focal_terms(nll, self.gamma)[0]
        losses = losses if weights is None else weights * losses
        if self.thresh is None:
            return mean_or_zero(losses.sum(), checked.n_valid if weights is None else weights.sum())
        kept, _, n_kept = select_hard_pixels(nll.detach(), checked.n_valid, self.thresh, self.min_kept)
        return mean_or_zero((losses * kept).sum(), n_kept)

    def extra_repr(self) -> str:
        ohem = "" if self.thresh is None else f", thresh={self.thresh}, min_kept={self.min_kept}"
        return f"gamma={self.gamma}{ohem}, {super().extra_repr()}"
