"""Online hard example mining cross-entropy with HRNet's semantics (``lib/core/criterion.py``)."""

from __future__ import annotations

import logging

from torch import Tensor

from seg_template.errors import ConfigError
from seg_template.losses.class_weights import WeightSpec
from seg_template.losses.cross_entropy import PixelCrossEntropy, upsampled_nll
from seg_template.losses.memory_efficient import memory_efficient_ohem_cross_entropy
from seg_template.losses.rules import CheckedTarget, mean_or_zero, report_nonfinite, select_hard_pixels
from seg_template.options import require

log = logging.getLogger(__name__)


class OhemCrossEntropy(PixelCrossEntropy):
    """Cross-entropy over the hard pixels of the batch only.

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar``. After upsampling, p is the softmax
    probability of the target class (unweighted). Over the valid pixels of the batch, p_k is the
    (min_kept+1)-th smallest p (the largest when fewer pixels are valid); the pixels with
    p < max(p_k, thresh) are kept, and the loss is the plain mean of their class-weighted cross-entropy
    (``rules.select_hard_pixels``; ``reference.ohem_reference`` spells it out with a sort).

    ``min_kept`` counts pixels per process batch, as in HRNet: under DDP every process selects on its own
    batch, so a global budget is ``min_kept * world_size``. Where HRNet returns NaN or crashes we return
    0.0 with a zero gradient that still flows: when every pixel is ignored, and when nothing is strictly
    below the threshold (e.g. saturated probabilities all equal to p_k: every remaining pixel is easy).
    A NaN or infinite logit makes the loss NaN: the selection alone would drop such pixels and report a
    finite value while the gradient is NaN (``rules.report_nonfinite``).
    """

    name = "ohem"  # logged as train/loss/ohem

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255,
                 weight: WeightSpec = None, align_corners: bool = False, memory_efficient: bool = False) -> None:
        super().__init__(ignore_index, weight, align_corners, memory_efficient)
        require("loss.main.thresh", thresh)
        if thresh is None:
            raise ConfigError("loss.main.thresh=null: OHEM keeps the pixels whose probability is below thresh; "
                              "give one (HRNet: 0.7, its Cityscapes recipe 0.9), or use loss=ce")
        require("loss.main.min_kept", min_kept)
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self._said_plain_ce = False  # the "min_kept covers the whole batch" note, logged once per instance

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        checked = self.check(logits, target)
        # OHEM selects by rank among the valid pixels: it needs their count on the host (one read per call)
        checked = checked._replace(n_valid=int(checked.n_valid))
        self._note_plain_ce(checked.n_valid)
        return report_nonfinite(self._loss(logits, checked.target, checked), checked.finite)

    def _note_plain_ce(self, n_valid: int) -> None:
        """Log once when min_kept reaches the batch's valid pixels: p_k is then the largest probability, so
        every valid pixel but the easiest is kept and OHEM is plain cross-entropy."""
        if self._said_plain_ce or n_valid == 0 or self.min_kept + 1 < n_valid:
            return
        self._said_plain_ce = True
        log.warning("OHEM keeps every valid pixel: min_kept=%d reaches the %d valid pixels of this batch "
                    "(per process), so this OHEM term is plain cross-entropy. Set its min_kept (loss.main.min_kept, "
                    "an entry's min_kept, loss.min_kept for the aux term; default data.ohem_min_kept) well below the "
                    "pixels of one batch, e.g. 1/8 of them.",
                    self.min_kept, n_valid)

    def _loss(self, logits: Tensor, target: Tensor, checked: CheckedTarget) -> Tensor:
        if self.uses_kernels(logits):
            return memory_efficient_ohem_cross_entropy(logits, target, self.thresh, self.min_kept, self.weight,
                                                       self.ignore_index, self.align_corners,
                                                       n_valid=checked.n_valid)
        nll = upsampled_nll(logits, target.long(), self.ignore_index, self.align_corners)
        weights = self.pixel_weight(checked, nll)
        losses = nll if weights is None else weights * nll
        kept, _, n_kept = select_hard_pixels(nll.detach(), checked.n_valid, self.thresh, self.min_kept)
        # for finite losses the mask product equals torch.where(kept, losses, 0) and is cheaper
        return mean_or_zero((losses * kept).sum(), n_kept)

    def extra_repr(self) -> str:
        return f"thresh={self.thresh}, min_kept={self.min_kept}, {super().extra_repr()}"
