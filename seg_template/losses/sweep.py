"""The chunked sweep under the memory-efficient kernels: per-pixel nll and its gradient, a chunk of output
rows at a time, without ever holding the batch's upsampled logits.

Inputs are assumed validated (labels in ``[0, C)`` or ``ignore_index``; see ``rules.check_target``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from seg_template.losses.resize import ChunkedBilinear

# Bytes of full-resolution logits per chunk: small enough to stay cache-friendly, large enough that the
# per-chunk Python overhead is negligible (tuned on CPU: 2-8 MiB were about equally fast at both bench shapes).
CHUNK_BYTES = 4 * 2**20
# On accelerators each chunk costs ~20 kernel launches, so chunks are larger there (not yet tuned on a GPU).
DEVICE_CHUNK_BYTES = 32 * 2**20

Chunk = tuple[int, int, int, int]  # (n0, n1, r0, r1): images [n0, n1), output rows [r0, r1)
# chunk_fn(rows, nll, target_index, valid) -> per-pixel loss coefficient [n, rows, W] (None: no gradient).
ChunkFn = Callable[[tuple[slice, slice], Tensor, Tensor, Tensor], Tensor | None]


def default_chunk_bytes(logits: Tensor) -> int:
    return CHUNK_BYTES if logits.device.type == "cpu" else DEVICE_CHUNK_BYTES


def sweep_chunks(plan: ChunkedBilinear, logits: Tensor, target: Tensor, ignore_index: int, chunk_fn: ChunkFn,
                 grad: Tensor | None, chunks: list[Chunk] | None = None) -> None:
    """One pass over the chunks (all of ``plan``'s, or ``chunks``): per-pixel nll handed to ``chunk_fn``; if
    ``grad`` is given, the gradient of ``sum(coef * nll)`` w.r.t. ``logits`` (``coef`` returned by
    ``chunk_fn``) is added into it."""
    with one_cpu_thread(logits.device):
        for chunk in plan.chunks if chunks is None else chunks:
            chunk_step(plan, logits, target, ignore_index, chunk_fn, grad, chunk)  # buffers die on return


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the CPU sweep single-threaded. It issues ~25 small ops per chunk; with intra-op threads each one
    ends in an OpenMP barrier, and on a loaded machine (other processes, data-loader workers) every barrier
    waits for a descheduled thread: measured 6x slower than the eager path at bench shape (a) under load,
    while single-threaded it stayed at ~0.5x the eager path's time (which does use all threads)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def chunk_step(plan: ChunkedBilinear, logits: Tensor, target: Tensor, ignore_index: int, chunk_fn: ChunkFn,
               grad: Tensor | None, chunk: Chunk) -> None:
    """Loss and gradient of one chunk, in one ``[n, C, rows, W]`` buffer reused in place.

    ``x`` starts as the chunk's upsampled logits, a fresh tensor from ``plan.upsample`` that nothing else
    references, and is overwritten step by step instead of allocating a new full-size tensor per step:
    ``x - max`` over classes (a stable softmax), then ``exp(x - max)``, whose class sum ``total`` is the
    softmax denominator, then the gradient of the chunk's loss w.r.t. its upsampled logits,
    ``coef * (softmax - one_hot)``: one in-place multiply by ``coef / total`` and one ``scatter_add_`` of
    ``-coef`` at the target class. ``plan.accumulate`` pushes it back through the upsampling into ``grad``.
    What is needed after an overwrite is taken before it: the target logit (``picked``) before ``exp_``,
    ``total`` before the multiply. So a chunk costs one full-size buffer plus a few ``[n, 1, rows, W]`` maps;
    the logits must be detached (autograd cannot see in-place reuse), which the kernels' Functions ensure.
    ``chunk_fn`` sees the nll ``[n, rows, W]`` (0 at ignored pixels) before the gradient is formed and
    returns each pixel's ``coef``.
    """
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


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float64 stays float64; half precision (e.g. under autocast) is computed in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast would run the matmuls in half precision; the kernels pick their own dtype."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def chunk_probabilities(plan: ChunkedBilinear, logits: Tensor, target: Tensor, ignore_index: int,
                        chunk: Chunk) -> tuple[Tensor, Tensor, Tensor]:
    """``(prob, index, valid)`` of one chunk: the softmax of its upsampled logits ``[n, C, rows, W]`` (a fresh
    buffer, computed in place), the target class ``[n, rows, W]`` (0 where ignored) and the valid mask."""
    n0, n1, r0, r1 = chunk
    x = plan.upsample(logits, chunk)
    x.sub_(x.amax(1, keepdim=True)).exp_()
    x.div_(x.sum(1, keepdim=True))
    t = target[n0:n1, r0:r1]
    valid = t != ignore_index
    return x, torch.where(valid, t, 0).long(), valid
