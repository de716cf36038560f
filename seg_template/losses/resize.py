"""Separable bilinear resizing in row chunks, with its adjoint: the resampling half of the kernels in
``memory_efficient.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def source_index(in_size: int, out_size: int, align_corners: bool, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """PyTorch's bilinear source positions: output ``r`` = ``(1 - lam[r]) * in[i0[r]] + lam[r] * in[i1[r]]``.

    Same formula (and arithmetic dtype) as ATen's ``area_pixel_compute_source_index`` for a given output
    size; returns CPU tensors ``i0, i1`` (int64) and ``lam`` (``dtype``), each ``[out_size]``.
    """
    dst = torch.arange(out_size, dtype=dtype)
    if align_corners:
        scale = (torch.tensor(in_size - 1, dtype=dtype) / (out_size - 1) if out_size > 1
                 else torch.tensor(0, dtype=dtype))
        src = dst * scale
    else:
        scale = torch.tensor(in_size, dtype=dtype) / out_size
        src = (scale * (dst + 0.5) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    lam = (src - i0.to(dtype)).clamp(0, 1)
    return i0, i1, lam


class ChunkedBilinear:
    """Bilinear resizing of ``[N, C, h, w]`` to ``(H, W)`` one chunk of output rows at a time, and its adjoint.

    ``chunks`` lists ``(n0, n1, r0, r1)``: images ``[n0, n1)``, output rows ``[r0, r1)``, each about
    ``chunk_bytes`` of full-resolution data. Width is resized by ``F.interpolate`` on just the source rows a
    chunk reads (to ``(k, W)``: the height map is then the identity), height by a ``[rows, k]`` slice of a
    dense ``[H, h]`` weight matrix; both equal PyTorch's 2-D bilinear up to rounding.
    """

    def __init__(self, logits: Tensor, out_size: tuple[int, int], align_corners: bool, chunk_bytes: int) -> None:
        n, c, h, w = logits.shape
        self.out_h, self.out_w = out_size
        self.align_corners = align_corners
        self.resize_w = w != self.out_w
        i0, i1, lam = source_index(h, self.out_h, align_corners, logits.dtype)
        self.first, self.last = i0.tolist(), i1.tolist()  # host lists: chunk bounds without device syncs
        self.mix = None  # h == H is the identity for both align_corners settings
        if h != self.out_h:
            rows = torch.arange(self.out_h)
            mix = torch.zeros(self.out_h, h, dtype=logits.dtype)
            mix.index_put_((rows, i0), 1 - lam, accumulate=True)
            mix.index_put_((rows, i1), lam, accumulate=True)
            self.mix = mix.to(logits.device)
        per_row = c * self.out_w * logits.element_size()
        rows = max(1, chunk_bytes // max(1, per_row))
        if rows >= self.out_h:  # whole images fit: batch several per chunk
            step = max(1, rows // max(1, self.out_h))
            self.chunks = [(i, min(i + step, n), 0, self.out_h) for i in range(0, n, step)]
        else:
            self.chunks = [(i, i + 1, r, min(r + rows, self.out_h))
                           for i in range(n) for r in range(0, self.out_h, rows)]

    def source_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """The input rows ``[s0, s1)`` that output rows ``[r0, r1)`` read."""
        if self.mix is None:
            return r0, r1
        return self.first[r0], self.last[r1 - 1] + 1

    def upsample(self, logits: Tensor, chunk: tuple[int, int, int, int]) -> Tensor:
        """A fresh ``[n, C, rows, W]`` tensor: the chunk's rows of the bilinearly upsampled logits."""
        n0, n1, r0, r1 = chunk
        s0, s1 = self.source_rows(r0, r1)
        block = logits[n0:n1, :, s0:s1]
        if self.resize_w:
            block = F.interpolate(block, size=(s1 - s0, self.out_w), mode="bilinear",
                                  align_corners=self.align_corners)
        if self.mix is None:
            return block if self.resize_w else block.clone()
        return torch.matmul(self.mix[r0:r1, s0:s1], block)

    def accumulate(self, grad: Tensor, grad_up: Tensor, chunk: tuple[int, int, int, int]) -> None:
        """Add the adjoint of ``upsample`` applied to ``grad_up`` [n, C, rows, W] into ``grad`` [N, C, h, w]."""
        n0, n1, r0, r1 = chunk
        s0, s1 = self.source_rows(r0, r1)
        if self.mix is not None:
            grad_up = torch.matmul(self.mix[r0:r1, s0:s1].T, grad_up)
        if self.resize_w:
            grad_up = torch.ops.aten.upsample_bilinear2d_backward(
                grad_up, [s1 - s0, self.out_w], [n1 - n0, grad.shape[1], s1 - s0, grad.shape[3]],
                self.align_corners)
        grad[n0:n1, :, s0:s1] += grad_up


def bilinear_taps(in_size: tuple[int, int], out_size: tuple[int, int], align_corners: bool, rows: Tensor,
                  cols: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The 4 source pixels (flat ``y * w + x``) and weights of output pixels ``(rows[k], cols[k])``: ``[K, 4]``
    each, so that ``out[k] = sum_j weight[k, j] * in_flat[index[k, j]]`` (PyTorch's bilinear, same formula)."""
    (h, w), (big_h, big_w) = in_size, out_size
    y0, y1, ly = (t.to(rows.device)[rows] for t in source_index(h, big_h, align_corners, dtype))
    x0, x1, lx = (t.to(cols.device)[cols] for t in source_index(w, big_w, align_corners, dtype))
    index = torch.stack((y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1), 1)
    weight = torch.stack(((1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx), 1)
    return index, weight
