"""Memory-efficient upsampling cross-entropy and OHEM: loss and gradient without the batch's full-resolution
logits (``loss.memory_efficient=true``).

The eager path ``F.cross_entropy(F.interpolate(logits, (H, W)), target)`` holds ``[N, C, H, W]`` logits,
their log-softmax and, in backward, their gradient: several times ``N*C*H*W`` floats (3.6 GB at ADE20K
scale). Here bilinear upsampling is split into its two separable 1-D passes (``resize.ChunkedBilinear``).
For a chunk of output rows we width-upsample only the few source rows the chunk needs, mix them into the
chunk's full-resolution rows with the height weights, and compute the per-pixel loss (``sweep.chunk_step``).
The gradient w.r.t. the upsampled logits is known in closed form, ``coef * (softmax - one_hot)``, so it is
pushed straight back through the upsampling's adjoint into a low-resolution gradient accumulated during the
forward pass; ``backward`` then only scales it by ``grad_output``. Peak extra memory: a few chunks of
``sweep.CHUNK_BYTES``, the low-resolution gradient and a few ``[N, H, W]`` per-pixel maps.

``reduction="none"`` needs a per-pixel ``grad_output``, known only in backward: its forward stores nothing
large and its backward recomputes the sweep with those coefficients (one extra pass, same memory bound).

Inputs are assumed validated (``rules.check_target``); for non-finite logits the loss classes make the
result NaN (``rules.report_nonfinite``). Half or bfloat16 logits (e.g. under autocast) are computed in
float32; the gradient comes back in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from seg_template.losses.resize import ChunkedBilinear, bilinear_taps
from seg_template.losses.rules import (
    below_thresh,
    dice_scores,
    focal_terms,
    mean_divisor,
    mean_or_zero,
    pixel_weight,
    present_class_weights,
    select_hard_pixels,
)
from seg_template.losses.sweep import (
    chunk_probabilities,
    compute_dtype,
    default_chunk_bytes,
    no_autocast,
    one_cpu_thread,
    sweep_chunks,
)

# OHEM's second pass goes pixel by pixel (4 bilinear taps each) while its pixels are at most this share of
# all pixels; beyond, recomputing whole chunks is cheaper.
SPARSE_MAX_FRACTION = 0.25


class _GradientFromForward(torch.autograd.Function):
    """A loss whose forward already computed ``d loss / d logits`` (logits are the first input) and saved it;
    backward only scales it by ``grad_output``."""

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        # Scaled in place and handed out: once autograd frees the graph the returned tensor holds the only
        # reference, so AccumulateGrad adopts it instead of copying; no host read of grad_output (a GPU sync).
        # A graph kept for another backward (retain_graph) still needs the saved gradient: it gets a copy.
        scale = grad_output.to(grad.dtype)
        scaled = grad * scale if _graph_is_kept() else grad.mul_(scale)
        return (scaled, *(None,) * (len(ctx.needs_input_grad) - 1))


def _graph_is_kept() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True when torch cannot say."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep_graph is None else bool(keep_graph())


class _ReducedCrossEntropy(_GradientFromForward):
    """Cross-entropy (``gamma`` 0) or the softmax focal loss with reduction "mean" or "sum"; the gradient is
    accumulated during the sweep."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                align_corners: bool, reduction: str, chunk_bytes: int, gamma: float = 0.0) -> Tensor:
        dtype = compute_dtype(logits)
        with no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), align_corners, chunk_bytes)
            grad = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
            loss_sums: list[Tensor] = []
            weight_sums: list[Tensor] = []

            def chunk_fn(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
                coef = pixel_weight(w, index, valid, dtype)
                value, slope = focal_terms(nll, gamma)
                loss_sums.append((coef * value).sum())
                weight_sums.append(coef.sum())
                return coef * slope

            sweep_chunks(plan, x, target, ignore_index, chunk_fn, grad)
            loss = torch.stack(loss_sums).sum() if loss_sums else x.new_zeros(())  # no chunks: empty batch
            if reduction == "mean":
                denom = torch.stack(weight_sums).sum() if weight_sums else x.new_zeros(())
                loss = mean_or_zero(loss, denom)
                if grad is not None:
                    grad /= mean_divisor(denom)
        ctx.save_for_backward(None if grad is None else grad.to(logits.dtype))
        return loss


class _PerPixelCrossEntropy(torch.autograd.Function):
    """Cross-entropy with reduction "none": the map ``[N, H, W]``; backward sweeps again with the per-pixel
    ``grad_output`` as coefficients."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                align_corners: bool, chunk_bytes: int) -> Tensor:
        dtype = compute_dtype(logits)
        with no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            losses = x.new_zeros(target.shape)

            def chunk_fn(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> None:
                losses[rows] = pixel_weight(w, index, valid, dtype) * nll

            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), align_corners, chunk_bytes)
            sweep_chunks(plan, x, target, ignore_index, chunk_fn, None)
        ctx.ignore_index, ctx.align_corners, ctx.chunk_bytes = ignore_index, align_corners, chunk_bytes
        ctx.save_for_backward(logits, target, weight)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        logits, target, weight = ctx.saved_tensors
        dtype = compute_dtype(logits)
        with no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            upstream = grad_output.to(dtype)
            grad = torch.zeros_like(x)

            def chunk_fn(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
                return pixel_weight(w, index, valid, dtype) * upstream[rows]

            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), ctx.align_corners, ctx.chunk_bytes)
            sweep_chunks(plan, x, target, ctx.ignore_index, chunk_fn, grad)
        return grad.to(logits.dtype), None, None, None, None, None


class _OhemCrossEntropy(_GradientFromForward):
    """OHEM over cross-entropy (``gamma`` 0) or the softmax focal loss: pass 1 sweeps every chunk, storing
    the per-pixel nll and accumulating the gradient of the pixels below thresh (the final kept set in the
    common case); then ``rules.select_hard_pixels`` decides, and the gradient of any further kept pixels
    (thresh <= p < p_k) is added by ``_add_extra_grad``."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, thresh: float, min_kept: int,
                weight: Tensor | None, ignore_index: int, align_corners: bool, chunk_bytes: int,
                n_valid: int, gamma: float = 0.0) -> Tensor:
        dtype = compute_dtype(logits)
        with no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), align_corners, chunk_bytes)
            nll_map = x.new_zeros(target.shape)  # unweighted, 0 at ignored pixels: what the selection ranks
            # each pixel's (class-weighted, focal) loss; the nll map itself for plain unweighted CE
            weighted_nll = nll_map if w is None and gamma == 0 else x.new_zeros(target.shape)
            grad = torch.zeros_like(x) if ctx.needs_input_grad[0] else None

            def below_first(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
                coef = pixel_weight(w, index, valid, dtype)
                value, slope = focal_terms(nll, gamma)
                nll_map[rows] = nll
                if weighted_nll is not nll_map:
                    weighted_nll[rows] = coef * value
                return coef * slope * below_thresh(nll, thresh)

            sweep_chunks(plan, x, target, ignore_index, below_first, grad)
            kept, below, n_kept = select_hard_pixels(nll_map, n_valid, thresh, min_kept)
            if kept is not below and grad is not None:
                _add_extra_grad(plan, x, target, ignore_index, kept & ~below, w, grad, chunk_bytes, gamma)
            loss = mean_or_zero(torch.where(kept, weighted_nll, 0).sum(), n_kept)
            if grad is not None:
                grad /= mean_divisor(n_kept)
        ctx.save_for_backward(None if grad is None else grad.to(logits.dtype))
        return loss


def _add_extra_grad(plan: ChunkedBilinear, x: Tensor, target: Tensor, ignore_index: int, extra: Tensor,
                    weight: Tensor | None, grad: Tensor, chunk_bytes: int, gamma: float = 0.0) -> None:
    """OHEM's second pass: add the gradient of the ``extra`` pixels' weighted loss (thresh <= p < p_k) to
    ``grad``. Usually they are a small share of the pixels (at most min_kept) spread over every chunk, so
    they are computed pixel by pixel from their 4 bilinear taps; when they are many, chunk by chunk."""
    positions = extra.flatten().nonzero().squeeze(1)
    if positions.numel() > SPARSE_MAX_FRACTION * extra.numel():
        hits = torch.stack([extra[n0:n1, r0:r1].any() for n0, n1, r0, r1 in plan.chunks]).tolist()

        def in_extra(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
            return pixel_weight(weight, index, extra[rows], x.dtype) * focal_terms(nll, gamma)[1]

        chunks = [chunk for chunk, hit in zip(plan.chunks, hits, strict=True) if hit]
        sweep_chunks(plan, x, target, ignore_index, in_extra, grad, chunks)
        return
    n, c, h, w = x.shape
    big_h, big_w = target.shape[-2:]
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # [N*h*w, C]: each low-res pixel's logits contiguous
    grad_rows = torch.zeros_like(x_rows)
    labels = target.flatten()
    batch = max(1, chunk_bytes // (16 * c * x.element_size()))  # ~4 temporaries of [4 * batch, C]
    with one_cpu_thread(x.device):
        for start in range(0, positions.numel(), batch):
            pos = positions[start:start + batch]
            image, pixel = pos // (big_h * big_w), pos % (big_h * big_w)
            taps, tap_weight = bilinear_taps((h, w), (big_h, big_w), plan.align_corners, pixel // big_w,
                                             pixel % big_w, x.dtype)
            taps = (taps + (image * h * w)[:, None]).flatten()
            logits = (x_rows.index_select(0, taps).view(-1, 4, c) * tap_weight[..., None]).sum(1)  # [b, C]
            label = labels[pos].long().unsqueeze(1)
            coef = pixel_weight(weight, label, torch.ones_like(label, dtype=torch.bool), x.dtype)
            prob = torch.softmax(logits, 1)
            if gamma:
                coef = coef * focal_terms(-prob.gather(1, label).log(), gamma)[1]
            g = prob.mul_(coef).scatter_add_(1, label, -coef)  # coef * (softmax - 1hot)
            grad_rows.index_add_(0, taps, (tap_weight[..., None] * g[:, None]).reshape(-1, c))
    grad += grad_rows.view(n, h, w, c).permute(0, 3, 1, 2)


class _Dice(_GradientFromForward):
    """Soft Dice in two sweeps. Pass 1 sums, per class, the probability at the class's own pixels (I), the
    probability (P) and the pixel count (T) over the valid pixels; the loss follows from these ``[C]`` sums.
    Its derivative w.r.t. a valid pixel's probabilities is ``u_c = A_c + B_c [c = target]`` with per-class
    constants, so pass 2 recomputes each chunk's softmax and pushes ``p * (u - <p, u>)`` (the softmax's
    Jacobian applied to u) back through the upsampling's adjoint."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                align_corners: bool, smooth: float, eps: float, chunk_bytes: int) -> Tensor:
        dtype = compute_dtype(logits)
        with no_autocast(logits.device):
            x = logits.detach().to(dtype)
            classes = x.shape[1]
            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), align_corners, chunk_bytes)
            intersection, prob_sum, count = (x.new_zeros(classes) for _ in range(3))
            with one_cpu_thread(x.device):
                for chunk in plan.chunks:
                    prob, index, valid = chunk_probabilities(plan, x, target, ignore_index, chunk)
                    on = valid.to(dtype)
                    prob_sum += torch.einsum("ncrw,nrw->c", prob, on)
                    intersection.index_add_(0, index.flatten(), (prob.gather(1, index[:, None])[:, 0] * on).flatten())
                    count.index_add_(0, index.flatten(), on.flatten())
            score, numerator, denominator = dice_scores(intersection, prob_sum, count, smooth, eps)
            share = present_class_weights(count, None if weight is None else weight.to(dtype))
            total = share.sum()
            loss = mean_or_zero(((1 - score) * share).sum(), total)
            grad = None
            if ctx.needs_input_grad[0]:
                share = share / mean_divisor(total)
                unclamped = (0.5 * (prob_sum + count) + smooth) >= eps  # the clamp has no slope
                a = torch.where(unclamped, 0.5 * share * numerator / denominator**2, 0)
                b = -share / denominator
                grad = torch.zeros_like(x)
                with one_cpu_thread(x.device):
                    for chunk in plan.chunks:
                        prob, index, valid = chunk_probabilities(plan, x, target, ignore_index, chunk)
                        at_target = prob.gather(1, index[:, None]) * b[index][:, None]  # p_t B_t [n, 1, r, W]
                        mean_u = torch.einsum("ncrw,c->nrw", prob, a)[:, None] + at_target  # <p, u>
                        g = prob * (a.view(1, -1, 1, 1) - mean_u)
                        g.scatter_add_(1, index[:, None], at_target).mul_(valid[:, None])
                        plan.accumulate(grad, g, chunk)
        ctx.save_for_backward(None if grad is None else grad.to(logits.dtype))
        return loss


def _check_shapes(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"memory-efficient cross-entropy needs logits [N, C, h, w] and target [N, H, W], got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")


def memory_efficient_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                                   ignore_index: int = 255, align_corners: bool = False, reduction: str = "mean",
                                   chunk_bytes: int | None = None) -> Tensor:
    """``F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear"), target, weight, ...)`` without the
    full-resolution logits of the batch.

    ``logits [N, C, h, w]`` (any float dtype; half precision is computed in float32), ``target`` int64
    ``[N, H, W]`` in ``[0, C)`` or ``ignore_index``, ``weight [C]`` or None. Returns a scalar (``"mean"``,
    ``"sum"``) or ``[N, H, W]`` (``"none"``, 0 at ignored pixels). ``"mean"`` divides by the summed weight
    of the valid targets and gives 0.0 (zero gradient) when that is 0. Differentiable w.r.t. ``logits``.
    """
    _check_shapes(logits, target)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    chunk_bytes = chunk_bytes or default_chunk_bytes(logits)
    if reduction == "none":
        return _PerPixelCrossEntropy.apply(logits, target, weight, int(ignore_index), bool(align_corners),
                                           chunk_bytes)
    return _ReducedCrossEntropy.apply(logits, target, weight, int(ignore_index), bool(align_corners), reduction,
                                      chunk_bytes)


def memory_efficient_focal_loss(logits: Tensor, target: Tensor, gamma: float, weight: Tensor | None = None,
                                ignore_index: int = 255, align_corners: bool = False,
                                chunk_bytes: int | None = None) -> Tensor:
    """The softmax focal loss after bilinear upsampling (``focal.FocalLoss`` states it), without full-resolution
    logits: ``sum(w_t * (1 - p)^gamma * nll) / sum(w_t)`` over the valid pixels, 0.0 when that sum is 0.

    Shapes as in ``memory_efficient_cross_entropy``; one sweep, like cross-entropy's (gamma 0 is CE)."""
    _check_shapes(logits, target)
    return _ReducedCrossEntropy.apply(logits, target, weight, int(ignore_index), bool(align_corners), "mean",
                                      chunk_bytes or default_chunk_bytes(logits), float(gamma))


def memory_efficient_ohem_cross_entropy(logits: Tensor, target: Tensor, thresh: float, min_kept: int,
                                        weight: Tensor | None = None, ignore_index: int = 255,
                                        align_corners: bool = False, chunk_bytes: int | None = None,
                                        n_valid: int | None = None, gamma: float = 0.0) -> Tensor:
    """HRNet-style OHEM cross-entropy after bilinear upsampling, without full-resolution logits.

    Shapes as in ``memory_efficient_cross_entropy``; the selection is ``rules.select_hard_pixels`` (the
    ``OhemCrossEntropy`` docstring states it). One sweep when more than min_kept pixels are below
    ``thresh``; otherwise p_k comes from ``kthvalue`` and the gradient of the pixels with
    thresh <= p < p_k is added in a second, pixel-wise pass. ``n_valid`` (the number of non-ignored
    pixels) saves a host sync when the caller already knows it. ``gamma`` > 0 averages the softmax focal loss of
    the kept pixels instead of their cross-entropy (OHEM's selection still ranks by p).
    """
    _check_shapes(logits, target)
    if n_valid is None:
        n_valid = int(torch.count_nonzero(target != ignore_index))
    return _OhemCrossEntropy.apply(logits, target, float(thresh), int(min_kept), weight, int(ignore_index),
                                   bool(align_corners), chunk_bytes or default_chunk_bytes(logits), int(n_valid),
                                   float(gamma))


def memory_efficient_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0, eps: float = 1e-7,
                               weight: Tensor | None = None, ignore_index: int = 255, align_corners: bool = False,
                               chunk_bytes: int | None = None) -> Tensor:
    """Soft Dice loss after bilinear upsampling (``dice.DiceLoss`` states it), without full-resolution
    probabilities: two sweeps of the chunks, the per-class sums first, then the gradient.

    Shapes as in ``memory_efficient_cross_entropy``; returns a scalar."""
    _check_shapes(logits, target)
    return _Dice.apply(logits, target, weight, int(ignore_index), bool(align_corners), float(smooth), float(eps),
                       chunk_bytes or default_chunk_bytes(logits))
