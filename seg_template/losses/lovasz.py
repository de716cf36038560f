"""Lovász-softmax: a convex surrogate of the per-class Jaccard (IoU) loss, after bilinear upsampling.

Berman, Rannen Triki & Blaschko, "The Lovász-Softmax loss: A tractable surrogate for the optimization of the
intersection-over-union measure in neural networks", CVPR 2018. For each class present in the labels, the
errors ``|fg - p_c|`` of the valid pixels are sorted in decreasing order and weighted by the gradient of the
Lovász extension of the Jaccard loss; the loss is the (class-weighted) mean of these per-class values.

It follows the rules of the cross-entropy family (``rules.py``): labels are checked before any kernel runs,
non-finite logits give a NaN loss, and "nothing to average" gives 0.0 with a zero gradient that still flows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from seg_template.losses.class_weights import WeightSpec, load_class_weights
from seg_template.losses.memory_efficient import _GradientFromForward
from seg_template.losses.rules import check_target, mean_or_zero, report_nonfinite
from seg_template.losses.sweep import compute_dtype, no_autocast
from seg_template.options import require

#: temporaries of one group of classes in the memory-efficient path (errors, sort order, weights: ~24 bytes
#: per class and valid pixel)
GROUP_BYTES = 256 * 2**20


def lovasz_jaccard_weights(fg_sorted: Tensor, dtype: torch.dtype) -> Tensor:
    """The gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order.

    ``fg_sorted [K, P]`` bool: whether pixel ``j`` (in error order) belongs to class ``k``; each row holds at
    least one True (the class is present). Returns ``g [K, P]`` in ``dtype``.

    With ``gts`` the row's foreground count, ``I_j = gts - cumsum(fg)_j`` and ``U_j = gts + cumsum(1 - fg)_j``,
    Berman's ``lovasz_grad`` is ``J_j - J_{j-1}`` for ``J_j = 1 - I_j / U_j`` (``J_{-1} = 0``). The difference is
    written out here so that nothing cancels: a foreground pixel leaves ``U`` unchanged and lowers ``I`` by one,
    ``g_j = 1 / U_j``; a background pixel raises ``U`` by one, ``g_j = I_j / (U_{j-1} U_j)``. Subtracting two
    Jaccard values close to 1 loses most digits in float32 once a class covers ~10^5 pixels; this does not.
    The counts are exact integers (a float32 cumsum is exact only up to 2**24 pixels).
    """
    count_dtype = torch.int32 if 2 * fg_sorted.shape[-1] < 2**31 else torch.int64  # union <= 2 P
    cum_fg = fg_sorted.cumsum(-1, dtype=count_dtype)
    gts = cum_fg[:, -1:]
    position = torch.arange(1, fg_sorted.shape[-1] + 1, device=fg_sorted.device, dtype=count_dtype)
    intersection = gts - cum_fg
    union = gts + position - cum_fg  # >= gts >= 1
    union_before = union - (~fg_sorted).to(count_dtype)  # U_{j-1} (U_{-1} = gts), >= 1
    numerator = torch.where(fg_sorted, union_before, intersection)
    return numerator.to(dtype) / (union_before.to(dtype) * union.to(dtype))


class LovaszSoftmax(nn.Module):
    """Lovász-softmax loss (Berman et al., CVPR 2018) after bilinear upsampling, optionally class-weighted.

    ``forward(logits [N, C, h, w] float, target [N, H, W] int) -> scalar``.

    - ``logits`` are bilinearly upsampled to the target's ``(H, W)`` (``align_corners``; nothing is done when the
      sizes match), then turned into probabilities ``p = softmax(logits, dim=1)`` ``[N, C, H, W]``. This is
      computed in float32 (float64 stays float64): float16 / bfloat16 logits, e.g. under autocast, are cast to
      float32 with autocast disabled, and their gradient comes back in their own dtype. ``[N, C]`` /
      ``[N, C, d1..dK]`` logits with ``[N]`` / ``[N, d1..dK]`` targets of the same sizes work too (no resizing).
    - Pixels labelled ``ignore_index`` are dropped. Other labels outside ``[0, C)`` raise ``DataError`` before
      any computation; a NaN or infinite logit makes the loss NaN (``rules.py``).
    - For each class ``c`` present among the valid labels: ``fg = (label == c)``, errors ``e = |fg - p_c|``
      over the valid pixels ``[P]`` sorted in decreasing order, and ``loss_c = <e_sorted, g>`` with ``g`` the
      gradient of the Lovász extension of the Jaccard loss at that order (Berman's ``lovasz_grad``, see
      :func:`lovasz_jaccard_weights`). The sort order is a constant: the gradient flows through the errors.
    - The loss is the mean of ``loss_c`` over the present classes; with class weights ``weight [C]``,
      ``sum_c w_c loss_c / sum_c w_c`` over the present classes (0 when those weights sum to 0).
    - ``per_image=False`` (Berman's default): the valid pixels of the whole batch form one set.
      ``per_image=True``: the loss of each image, over its own valid pixels and present classes, then the plain
      mean over the images that have at least one valid pixel (an all-ignored image counts for nothing).
    - Nothing to average (every pixel ignored): exactly 0.0, with a zero gradient that still flows.

    Memory: the eager path (``memory_efficient=False``, the readable one) sorts every present class's errors
    over all valid pixels at once (``[K, P]`` values, indices and counts) and autograd keeps them and the
    upsampled probabilities ``[N, C, H, W]``: 18 GiB at 8x150x512x512. ``memory_efficient=True`` (the loss
    configs' default) computes the same value and gradient without autograd: the probabilities and their
    gradient (two ``[N, C, H, W]`` tensors, which the sort over all pixels needs) plus groups of classes of
    about ``GROUP_BYTES`` at a time, the gradient of each class's sorted errors written in closed form
    (``g_j * sign(p - fg)``), then pushed through the softmax and the upsampling.
    """

    name = "lovasz"  # the term's name in logs (train/loss/lovasz)

    def __init__(self, ignore_index: int = 255, weight: WeightSpec = None, align_corners: bool = False,
                 per_image: bool = False, memory_efficient: bool = False) -> None:
        super().__init__()
        require("loss.memory_efficient", memory_efficient)  # bool("flase") would silently be True
        require("model.align_corners", align_corners)  # the model config owns the convention
        require("loss.main.per_image", per_image)
        self.ignore_index = int(ignore_index)
        self.align_corners = bool(align_corners)
        self.per_image = bool(per_image)
        self.memory_efficient = bool(memory_efficient)  # accepted, ignored: see the class docstring
        # not persistent: changing data.class_weights must not break loading an older checkpoint
        self.register_buffer("weight", load_class_weights(weight), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        checked = check_target(logits, target, self.ignore_index, self.weight)
        target = checked.target
        n_valid = int(checked.n_valid)  # Lovász sorts each set's errors: it reads the count on the host
        if self.memory_efficient and logits.dim() == 4 and n_valid > 0:
            loss = _LeanLovasz.apply(logits, target, checked.valid, self.weight, self.align_corners, self.per_image,
                                     GROUP_BYTES)
            return report_nonfinite(loss, checked.finite)
        with no_autocast(logits.device):
            x = logits.to(compute_dtype(logits))
            if n_valid == 0:  # (x * 0).sum(): finite even when x.sum() would overflow
                return report_nonfinite((x * 0).sum(), checked.finite)
            if x.dim() == 4 and x.shape[-2:] != target.shape[-2:]:
                x = F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=self.align_corners)
            prob = F.softmax(x, dim=1)
            if self.per_image:
                losses = [self._set_loss(prob[i], target[i], checked.valid[i])
                          for i in range(prob.shape[0]) if bool(checked.valid[i].any())]
                loss = torch.stack(losses).mean()
            else:
                loss = self._set_loss(prob.movedim(1, 0), target, checked.valid)
        return report_nonfinite(loss, checked.finite)

    def _set_loss(self, prob: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """The loss over one set of pixels: ``prob [C, ...]``, ``target`` and ``valid`` ``[...]``, at least one
        valid pixel."""
        if bool(valid.all()):
            prob, labels = prob.reshape(prob.shape[0], -1), target.reshape(-1)
        else:
            prob, labels = prob[:, valid], target[valid]  # [C, P], [P]
        labels = labels.long()
        present = torch.bincount(labels, minlength=prob.shape[0]).nonzero().squeeze(1)  # [K]
        fg = labels.unsqueeze(0) == present.unsqueeze(1)  # [K, P]
        errors = (fg.to(prob.dtype) - prob[present]).abs()
        with torch.no_grad():
            order = errors.argsort(dim=1, descending=True)
            g = lovasz_jaccard_weights(fg.gather(1, order), prob.dtype)
            weights = torch.empty_like(g).scatter_(1, order, g)  # g back in pixel order: no sort in the graph
        class_losses = (errors * weights).sum(1)  # [K]
        if self.weight is None:
            return class_losses.mean()
        class_weight = self.weight.to(prob.dtype)[present]
        return mean_or_zero((class_weight * class_losses).sum(), class_weight.sum())

    def extra_repr(self) -> str:
        weighted = "none" if self.weight is None else f"[{self.weight.numel()}]"
        return (f"ignore_index={self.ignore_index}, weight={weighted}, align_corners={self.align_corners}, "
                f"per_image={self.per_image}")


class _LeanLovasz(_GradientFromForward):
    """Lovász-softmax's value and its gradient w.r.t. the low-resolution logits, computed in forward.

    ``loss_c = sum_j |fg_j - p_cj| g_cj`` with the Jaccard weights ``g`` constant (the sort order), so
    ``d loss_c / d p_cj = g_cj * sign(p_cj - fg_j)`` (autograd's subgradient of ``abs``). The per-pixel
    gradient w.r.t. the probabilities ``[N, C, H, W]`` is filled class group by class group, then the softmax's
    Jacobian ``p * (u - <p, u>)`` and the adjoint of the bilinear upsampling take it to the logits."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, valid: Tensor, weight: Tensor | None,
                align_corners: bool, per_image: bool, group_bytes: int) -> Tensor:
        dtype = compute_dtype(logits)
        with no_autocast(logits.device), torch.no_grad():
            x = logits.detach().to(dtype)
            size = tuple(target.shape[-2:])
            resized = tuple(x.shape[-2:]) != size
            up = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners) if resized else x
            prob = torch.softmax(up, 1)  # [N, C, H, W]
            del up
            n, c, h, w = prob.shape
            grad = torch.zeros_like(prob) if ctx.needs_input_grad[0] else None
            flat_valid = valid.reshape(n, h * w)
            sets = ([flat_valid[i].nonzero().squeeze(1) + i * h * w for i in range(n) if bool(flat_valid[i].any())]
                    if per_image else [flat_valid.flatten().nonzero().squeeze(1)])
            total = x.new_zeros(())
            for pixels in sets:  # flat indices into [N, H, W]
                # offset of each pixel's class-0 probability in prob's storage
                base = (pixels // (h * w)) * (c * h * w) + pixels % (h * w)
                total += _set_loss(prob, grad, base, target.reshape(-1)[pixels].long(), weight, h * w,
                                   1.0 / len(sets), group_bytes)
            if grad is not None:
                grad.sub_(torch.einsum("nchw,nchw->nhw", prob, grad).unsqueeze(1)).mul_(prob)  # softmax's Jacobian
                del prob
                if resized:
                    grad = torch.ops.aten.upsample_bilinear2d_backward(grad, list(size), list(x.shape), align_corners)
        ctx.save_for_backward(None if grad is None else grad.to(logits.dtype))
        return total


def _set_loss(prob: Tensor, grad: Tensor | None, base: Tensor, labels: Tensor, weight: Tensor | None, plane: int,
              scale: float, group_bytes: int) -> Tensor:
    """``scale`` times the Lovász loss of one set of pixels (``base``: their class-0 offsets in ``prob``'s
    storage, ``labels [P]``), adding ``scale`` times its gradient w.r.t. ``prob`` into ``grad`` (same layout)."""
    classes = prob.shape[1]
    present = torch.bincount(labels, minlength=classes).nonzero().squeeze(1)  # [K]
    share = (torch.ones(len(present), dtype=prob.dtype, device=prob.device) if weight is None
             else weight.to(prob)[present])
    denominator = share.sum()
    if not bool(denominator > 0):
        return prob.new_zeros(())
    share = share * (scale / denominator)
    group = max(1, group_bytes // (24 * labels.numel()))
    flat_prob = prob.view(-1)
    total = prob.new_zeros(())
    for start in range(0, len(present), group):
        cls = present[start:start + group]
        index = base.unsqueeze(0) + cls.unsqueeze(1) * plane  # [K', P]
        p = flat_prob[index]
        fg = labels.unsqueeze(0) == cls.unsqueeze(1)
        errors = (fg.to(p.dtype) - p).abs()
        order = errors.argsort(dim=1, descending=True)
        weights = torch.empty_like(p).scatter_(1, order, lovasz_jaccard_weights(fg.gather(1, order), p.dtype))
        total += (share[start:start + group] * (errors * weights).sum(1)).sum()
        if grad is not None:
            slope = weights.mul_(torch.sign(p - fg.to(p.dtype))).mul_(share[start:start + group].unsqueeze(1))
            grad.view(-1).index_put_((index.flatten(),), slope.flatten(), accumulate=True)
    return total
