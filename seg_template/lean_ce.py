"""Memory-lean upsampling cross-entropy: loss and gradient without the batch's full-resolution logits.

The naive path ``F.cross_entropy(F.interpolate(logits, (H, W)), target)`` holds ``[N, C, H, W]`` logits, their
log-softmax and, in backward, their gradient: several times ``N*C*H*W`` floats (3.6 GB at ADE20K scale).
Here bilinear upsampling is split into its two separable 1-D passes. For a chunk of output rows we
width-upsample only the few source rows the chunk needs (``F.interpolate`` to ``(k, W)``: the height map is
then the identity), mix them into the chunk's full-resolution rows with the height weights (a small dense
``[rows, k]`` matrix built with PyTorch's bilinear index formula), and compute the per-pixel loss. The
gradient w.r.t. the upsampled logits is known in closed form, ``coef * (softmax - one_hot)``, so it is pushed
straight back through the row mix (the matrix transpose) and the width pass (its adjoint,
``upsample_bilinear2d_backward``) into a low-resolution gradient accumulated during the forward pass.
``backward`` then only scales it by ``grad_output``. Peak extra memory: a few chunks of ``CHUNK_BYTES``, the
low-resolution gradient and a few ``[N, H, W]`` per-pixel maps.

``reduction="none"`` needs a per-pixel ``grad_output``, known only in backward: its forward stores nothing
large and its backward recomputes the sweep with those coefficients (one extra pass, same memory bound).

On CPU the sweeps run single-threaded (see ``_one_cpu_thread``): robust on a loaded machine, and still
faster than the naive path on all threads at the bench shapes.

Inputs are assumed validated by ``seg_template.losses`` (labels in ``[0, C)`` or ``ignore_index``). Half or
bfloat16 logits (e.g. under autocast) are computed in float32; the gradient comes back in the input dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from seg_template.lean_resize import ChunkedBilinear, bilinear_taps

# Bytes of full-resolution logits per chunk: small enough to stay cache-friendly, large enough that the
# per-chunk Python overhead is negligible (tuned on CPU: 2-8 MiB were about equally fast at both bench shapes).
CHUNK_BYTES = 4 * 2**20
# On accelerators each chunk costs ~20 kernel launches, so chunks are larger there (not yet tuned on a GPU).
DEVICE_CHUNK_BYTES = 32 * 2**20

# OHEM's second pass goes pixel by pixel (4 bilinear taps each) while its pixels are at most this share of
# all pixels; beyond, recomputing whole chunks is cheaper.
SPARSE_MAX_FRACTION = 0.25

# chunk_fn(rows, nll, target_index, valid) -> per-pixel loss coefficient [n, rows, W] (None: no gradient).
ChunkFn = Callable[[tuple[slice, slice], Tensor, Tensor, Tensor], Tensor | None]


def _sweep(plan: ChunkedBilinear, logits: Tensor, target: Tensor, ignore_index: int, chunk_fn: ChunkFn,
           grad: Tensor | None, chunks: list[tuple[int, int, int, int]] | None = None) -> None:
    """One pass over the chunks: per-pixel nll handed to ``chunk_fn``; if ``grad`` is given, the gradient of
    ``sum(coef * nll)`` w.r.t. ``logits`` (``coef`` returned by ``chunk_fn``) is added into it."""
    with _one_cpu_thread(logits.device):
        for chunk in plan.chunks if chunks is None else chunks:
            _chunk_step(plan, logits, target, ignore_index, chunk_fn, grad, chunk)  # buffers die on return


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the CPU sweep single-threaded. It issues ~25 small ops per chunk; with intra-op threads each one
    ends in an OpenMP barrier, and on a loaded machine (other processes, data-loader workers) every barrier
    waits for a descheduled thread: measured 6x slower than the naive path at bench shape (a) under load,
    while single-threaded it stayed at ~0.5x the naive path's time (which does use all threads)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _chunk_step(plan: ChunkedBilinear, logits: Tensor, target: Tensor, ignore_index: int, chunk_fn: ChunkFn,
                grad: Tensor | None, chunk: tuple[int, int, int, int]) -> None:
    n0, n1, r0, r1 = chunk
    x = plan.upsample(logits, chunk)  # [n, C, rows, W], ours to overwrite in place
    t = target[n0:n1, r0:r1]
    valid = t != ignore_index
    index = torch.where(valid, t, 0).long().unsqueeze(1)
    x.sub_(x.amax(1, keepdim=True))
    picked = x.gather(1, index)
    x.exp_()
    total = x.sum(1, keepdim=True)
    nll = torch.where(valid, (total.log() - picked).squeeze(1), 0)
    coef = chunk_fn((slice(n0, n1), slice(r0, r1)), nll, index.squeeze(1), valid)
    if grad is None or coef is None:
        return
    x.mul_(coef.unsqueeze(1) / total)  # coef * softmax
    x.scatter_add_(1, index, -coef.unsqueeze(1))  # ... minus coef * one_hot
    plan.accumulate(grad, x, chunk)


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast would run the matmuls in half precision; the kernels pick their own dtype."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _scaled(grad: Tensor, grad_output: Tensor) -> Tensor:
    """``grad * grad_output``. For a plain ``loss.backward()`` (``grad_output == 1``, one sync) the saved
    gradient itself is returned: once autograd frees the graph it holds the only reference, so
    ``AccumulateGrad`` adopts it instead of copying (with ``retain_graph`` it copies; nothing is modified)."""
    if bool(grad_output == 1):
        return grad
    return grad * grad_output.to(grad.dtype)


def _pixel_weight(weight: Tensor | None, index: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Class weight of each pixel's target (1 without weights), 0 at ignored pixels."""
    return valid.to(dtype) if weight is None else weight[index] * valid


class _LeanCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                align_corners: bool, reduction: str, chunk_bytes: int) -> Tensor:
        dtype = _compute_dtype(logits)
        with _no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), align_corners, chunk_bytes)
            # "none" needs the per-pixel map; the reductions keep only per-chunk sums
            losses = x.new_zeros(target.shape) if reduction == "none" else None
            grad = torch.zeros_like(x) if ctx.needs_input_grad[0] and reduction != "none" else None
            loss_sums: list[Tensor] = []
            weight_sums: list[Tensor] = []

            def chunk_fn(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
                coef = _pixel_weight(w, index, valid, dtype)
                if losses is None:
                    loss_sums.append((coef * nll).sum())
                    weight_sums.append(coef.sum())
                else:
                    losses[rows] = coef * nll
                return coef

            _sweep(plan, x, target, ignore_index, chunk_fn, grad)
        ctx.reduction, ctx.ignore_index, ctx.align_corners, ctx.chunk_bytes = (
            reduction, ignore_index, align_corners, chunk_bytes)
        if reduction == "none":
            ctx.save_for_backward(logits, target, weight)  # backward recomputes with per-pixel grad_output
            return losses
        total = torch.stack(loss_sums).sum() if loss_sums else x.new_zeros(())
        if reduction == "mean":
            denom = torch.stack(weight_sums).sum() if weight_sums else x.new_zeros(())
            denom = torch.where(denom > 0, denom, 1)  # all ignored: 0 / 1, zero gradient
            total = total / denom
            if grad is not None:
                grad /= denom
        ctx.save_for_backward(None if grad is None else grad.to(logits.dtype))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.reduction != "none":
            (grad,) = ctx.saved_tensors
            return _scaled(grad, grad_output), None, None, None, None, None, None
        logits, target, weight = ctx.saved_tensors
        dtype = _compute_dtype(logits)
        with _no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            upstream = grad_output.to(dtype)
            grad = torch.zeros_like(x)

            def chunk_fn(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
                return _pixel_weight(w, index, valid, dtype) * upstream[rows]

            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), ctx.align_corners, ctx.chunk_bytes)
            _sweep(plan, x, target, ctx.ignore_index, chunk_fn, grad)
        return grad.to(logits.dtype), None, None, None, None, None, None


class _LeanOhemCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, thresh: float, min_kept: int,
                weight: Tensor | None, ignore_index: int, align_corners: bool, chunk_bytes: int) -> Tensor:
        dtype = _compute_dtype(logits)
        with _no_autocast(logits.device):
            x = logits.detach().to(dtype)
            w = None if weight is None else weight.to(device=x.device, dtype=dtype)
            plan = ChunkedBilinear(x, tuple(target.shape[-2:]), align_corners, chunk_bytes)
            weighted_nll = x.new_zeros(target.shape)
            prob = x.new_ones(target.shape)  # ignored pixels keep p = 1: never below a threshold <= 1
            grad = torch.zeros_like(x) if ctx.needs_input_grad[0] else None

            def below_thresh(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
                weighted_nll[rows] = _pixel_weight(w, index, valid, dtype) * nll
                p = torch.exp(-nll)
                prob[rows] = p
                return _pixel_weight(w, index, valid & (p < thresh), dtype)

            # pass 1 accumulates the gradient of the pixels below thresh: the final set in the common case
            _sweep(plan, x, target, ignore_index, below_thresh, grad)
            below = prob < thresh
            n_valid, n_below = torch.stack(((target != ignore_index).sum(), below.sum())).tolist()
            k = min(min_kept, n_valid - 1)  # 0-based rank of p_k among the valid probabilities
            kept = below
            if n_valid > 0 and n_below <= k:  # then p_k >= thresh is the threshold: add thresh <= p < p_k
                kept = prob < torch.kthvalue(prob.flatten(), k + 1).values
                if grad is not None:
                    _add_extra_grad(plan, x, target, ignore_index, kept & ~below, w, grad, chunk_bytes)
            count = kept.sum().clamp_min(1)  # empty kept set: 0 / 1 with a zero gradient
            loss = torch.where(kept, weighted_nll, 0).sum() / count
            if grad is not None:
                grad /= count
        ctx.save_for_backward(None if grad is None else grad.to(logits.dtype))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return _scaled(grad, grad_output), None, None, None, None, None, None, None


def _default_chunk_bytes(logits: Tensor) -> int:
    return CHUNK_BYTES if logits.device.type == "cpu" else DEVICE_CHUNK_BYTES


def _add_extra_grad(plan: ChunkedBilinear, x: Tensor, target: Tensor, ignore_index: int, extra: Tensor,
                    weight: Tensor | None, grad: Tensor, chunk_bytes: int) -> None:
    """OHEM's second pass: add the gradient of the ``extra`` pixels' weighted nll (thresh <= p < p_k) to
    ``grad``. Usually they are a small share of the pixels (at most min_kept) spread over every chunk, so
    they are computed pixel by pixel from their 4 bilinear taps; when they are many, chunk by chunk."""
    positions = extra.flatten().nonzero().squeeze(1)
    if positions.numel() > SPARSE_MAX_FRACTION * extra.numel():
        hits = torch.stack([extra[n0:n1, r0:r1].any() for n0, n1, r0, r1 in plan.chunks]).tolist()

        def in_extra(rows: tuple[slice, slice], nll: Tensor, index: Tensor, valid: Tensor) -> Tensor:
            return _pixel_weight(weight, index, extra[rows], x.dtype)

        chunks = [chunk for chunk, hit in zip(plan.chunks, hits, strict=True) if hit]
        _sweep(plan, x, target, ignore_index, in_extra, grad, chunks)
        return
    n, c, h, w = x.shape
    big_h, big_w = target.shape[-2:]
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # [N*h*w, C]: each low-res pixel's logits contiguous
    grad_rows = torch.zeros_like(x_rows)
    labels = target.flatten()
    batch = max(1, chunk_bytes // (16 * c * x.element_size()))  # ~4 temporaries of [4 * batch, C]
    with _one_cpu_thread(x.device):
        for start in range(0, positions.numel(), batch):
            pos = positions[start:start + batch]
            image, pixel = pos // (big_h * big_w), pos % (big_h * big_w)
            taps, tap_weight = bilinear_taps((h, w), (big_h, big_w), plan.align_corners, pixel // big_w,
                                             pixel % big_w, x.dtype)
            taps = (taps + (image * h * w)[:, None]).flatten()
            logits = (x_rows.index_select(0, taps).view(-1, 4, c) * tap_weight[..., None]).sum(1)  # [b, C]
            label = labels[pos].long().unsqueeze(1)
            coef = _pixel_weight(weight, label, torch.ones_like(label, dtype=torch.bool), x.dtype)
            g = torch.softmax(logits, 1).mul_(coef).scatter_add_(1, label, -coef)  # coef * (softmax - 1hot)
            grad_rows.index_add_(0, taps, (tap_weight[..., None] * g[:, None]).reshape(-1, c))
    grad += grad_rows.view(n, h, w, c).permute(0, 3, 1, 2)


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"lean cross-entropy needs logits [N, C, h, w] and target [N, H, W], got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")


def lean_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = 255,
                       align_corners: bool = False, reduction: str = "mean",
                       chunk_bytes: int | None = None) -> Tensor:
    """``F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear"), target, weight, ...)`` without the
    full-resolution logits of the batch.

    ``logits [N, C, h, w]`` (any float dtype; half precision is computed in float32), ``target`` int64
    ``[N, H, W]`` in ``[0, C)`` or ``ignore_index``, ``weight [C]`` or None. Returns a scalar (``"mean"``,
    ``"sum"``) or ``[N, H, W]`` (``"none"``, 0 at ignored pixels). ``"mean"`` divides by the summed weight
    of the valid targets and gives 0.0 (zero gradient) when that is 0. Differentiable w.r.t. ``logits``.
    """
    _check(logits, target)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return _LeanCrossEntropy.apply(logits, target, weight, int(ignore_index), bool(align_corners), reduction,
                                   chunk_bytes or _default_chunk_bytes(logits))


def lean_ohem_cross_entropy(logits: Tensor, target: Tensor, thresh: float, min_kept: int,
                            weight: Tensor | None = None, ignore_index: int = 255, align_corners: bool = False,
                            chunk_bytes: int | None = None) -> Tensor:
    """HRNet-style OHEM cross-entropy after bilinear upsampling, without full-resolution logits.

    Shapes as in ``lean_cross_entropy``. p = the softmax probability of the target class (unweighted);
    p_k = the (min_kept+1)-th smallest valid p (the largest if fewer); the pixels with p < max(p_k, thresh)
    are kept and the result is the plain mean of their class-weighted nll (0.0 if none is kept). One sweep
    when more than min_kept pixels are below ``thresh``; otherwise p_k comes from ``kthvalue`` and the
    gradient of the pixels with thresh <= p < p_k is added in a second, pixel-wise pass.
    """
    _check(logits, target)
    return _LeanOhemCrossEntropy.apply(logits, target, float(thresh), int(min_kept), weight, int(ignore_index),
                                       bool(align_corners), chunk_bytes or _default_chunk_bytes(logits))
