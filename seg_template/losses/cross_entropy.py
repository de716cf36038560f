"""Cross-entropy after bilinear upsampling, plain or class-weighted, and what OHEM shares with it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.losses.class_weights import WeightSpec, load_class_weights
from seg_template.losses.memory_efficient import memory_efficient_cross_entropy
from seg_template.losses.rules import (
    CheckedTarget,
    check_target,
    mean_or_zero,
    pixel_weight,
    report_nonfinite,
)
from seg_template.losses.sweep import compute_dtype, no_autocast
from seg_template.options import require


def upsampled_nll(logits: Tensor, target: Tensor, ignore_index: int, align_corners: bool) -> Tensor:
    """Unweighted per-pixel cross-entropy shaped like ``target`` (0 at ignored pixels, never negative).

    The eager path: it materialises the upsampled logits ``[N, C, H, W]`` (and autograd keeps their
    log-softmax). This is the one step the memory-efficient kernels replace; everything else is per-pixel.
    Half-precision logits (autocast) are upsampled and scored in float32, as the kernels do.
    """
    with no_autocast(logits.device):
        logits = logits.to(compute_dtype(logits))
        if logits.dim() == 4 and logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners)
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")


class PixelCrossEntropy(nn.Module):
    """What CE and OHEM share: ignore index, class-weight buffer, upsampling settings, label checks."""

    def __init__(self, ignore_index: int, weight: WeightSpec, align_corners: bool,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        require("loss.memory_efficient", memory_efficient)  # bool("flase") would silently be True
        require("model.align_corners", align_corners)  # the model config owns the convention
        self.ignore_index = int(ignore_index)
        self.align_corners = bool(align_corners)
        # 4-D logits then go through memory_efficient.py: same values and gradients, no [N, C, H, W] tensors
        self.memory_efficient = bool(memory_efficient)
        # not persistent: changing data.class_weights must not break loading an older checkpoint
        self.register_buffer("weight", load_class_weights(weight), persistent=False)

    def check(self, logits: Tensor, target: Tensor) -> CheckedTarget:
        return check_target(logits, target, self.ignore_index, self.weight)

    def uses_kernels(self, logits: Tensor) -> bool:
        """Whether these logits go through the memory-efficient kernels (they handle ``[N, C, h, w]`` only)."""
        return self.memory_efficient and logits.dim() == 4

    def pixel_weight(self, checked: CheckedTarget, nll: Tensor) -> Tensor | None:
        """Per-pixel class weight shaped like ``nll`` (0 where ignored), or None without class weights."""
        return None if self.weight is None else pixel_weight(self.weight, checked.safe, checked.valid, nll.dtype)

    def extra_repr(self) -> str:
        weighted = "none" if self.weight is None else f"[{self.weight.numel()}]"
        return (f"ignore_index={self.ignore_index}, weight={weighted}, align_corners={self.align_corners}, "
                f"memory_efficient={self.memory_efficient}")


class CrossEntropy(PixelCrossEntropy):
    """``torch.nn.CrossEntropyLoss`` semantics (ignore index, class weights, reductions) after upsampling.

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar`` (``"none"``: ``[N, H, W]``, 0 where ignored).
    4-D logits whose ``(h, w) != (H, W)`` are bilinearly upsampled first; ``[N, C]`` / ``[N, C, d1..dK]``
    logits with ``[N]`` / ``[N, d1..dK]`` targets work as in PyTorch (no resizing). ``"mean"`` divides by
    the summed weight of the non-ignored targets; unlike PyTorch it returns 0.0 (with a zero gradient that
    still flows) when every pixel is ignored or has weight 0, instead of NaN. A NaN or infinite logit makes
    the result NaN, whatever pixels it reaches (``rules.report_nonfinite``).
    """

    name = "ce"  # logged as train/loss/ce

    def __init__(self, ignore_index: int = 255, weight: WeightSpec = None, align_corners: bool = False,
                 reduction: str = "mean", memory_efficient: bool = False) -> None:
        super().__init__(ignore_index, weight, align_corners, memory_efficient)
        self.reduction = require("loss.main.reduction", reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        checked = self.check(logits, target)
        return report_nonfinite(self._loss(logits, checked.target, checked), checked.finite)

    def _loss(self, logits: Tensor, target: Tensor, checked: CheckedTarget) -> Tensor:
        if self.uses_kernels(logits):
            return memory_efficient_cross_entropy(logits, target, self.weight, self.ignore_index,
                                                  self.align_corners, self.reduction)
        nll = upsampled_nll(logits, target.long(), self.ignore_index, self.align_corners)
        weights = self.pixel_weight(checked, nll)
        losses = nll if weights is None else weights * nll
        if self.reduction == "none":
            return losses
        if self.reduction == "sum":
            return losses.sum()
        return mean_or_zero(losses.sum(), checked.n_valid if weights is None else weights.sum())


def weighted_cross_entropy(weight: WeightSpec = None, ignore_index: int = 255, align_corners: bool = False,
                           reduction: str = "mean", memory_efficient: bool = False) -> CrossEntropy:
    """``CrossEntropy`` that insists on class weights (``loss=wce``): a null weight is a config mistake. The
    arguments are ``CrossEntropy``'s, spelled out so that an unknown key (``+loss.main.threshh``) is named."""
    if weight is None:
        raise ConfigError("loss=wce needs class weights: set data.class_weights (a list or a .npy/.json/.txt "
                         "path, e.g. from scripts/compute_class_weights.py) or pass loss.main.weight=<file>")
    return CrossEntropy(ignore_index, weight, align_corners, reduction, memory_efficient)
