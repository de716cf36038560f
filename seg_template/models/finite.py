"""Weights holding NaN or inf: found wherever a network's weights come from a file, and refused there.

A file whose weights hold a NaN (the state of a diverged run, a corrupted copy) gives NaN logits for every
image; their argmax is class 0, so eval would print an all-zero table and predict would write class 0
everywhere, both exiting 0. The loaders (:mod:`seg_template.models.weights`, the resume check, ONNX files)
refuse such a file instead, naming it and the tensors that are not finite. A batch-norm running variance below
0 is refused the same way: finite, yet NaN through ``sqrt(var + eps)`` in every prediction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from seg_template.errors import CheckpointError

#: what to do about a checkpoint (eval / predict / export / resume) whose weights are not finite
USE_ANOTHER = ("it is the state of a diverged run (or a damaged copy); use a checkpoint written before the "
               "run diverged (best.ckpt, or an earlier one)")
#: ... and about a ``model.pretrained`` file: fine-tuning from it would only ever give NaN
START_ELSEWHERE = ("training from it can only give NaN; pass a file of finite weights (or model.pretrained=null "
                   "to start from scratch)")


def float_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``(dotted name, tensor)`` for every floating-point tensor in ``tree``: a tensor, or nested mappings,
    lists and tuples of them (a state dict, Lightning's ``optimizer_states``)."""
    if isinstance(tree, Tensor):
        if tree.is_floating_point() or tree.is_complex():
            yield prefix, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from float_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from float_tensors(value, f"{prefix}[{index}]" if prefix else f"[{index}]")


def is_finite(tensor: Tensor) -> bool:
    """Whether every element of ``tensor`` is finite: one min/max reduction (NaN propagates through both),
    without a boolean copy of the tensor."""
    tensor = tensor.detach()
    if tensor.numel() == 0:
        return True
    try:
        ends = torch.stack(torch.aminmax(tensor))
    except RuntimeError:  # complex, float8: no min/max kernel; check every element instead
        ends = tensor if tensor.is_complex() else tensor.float()
    return bool(torch.isfinite(ends).all())


def nonfinite_names(tree: Any) -> tuple[list[str], int]:
    """The names of the floating-point tensors in ``tree`` holding NaN or inf, and how many were checked."""
    bad, total = [], 0
    for name, tensor in float_tensors(tree):
        total += 1
        if not is_finite(tensor):
            bad.append(name)
    return bad, total


def negative_variances(tree: Any) -> list[str]:
    """The names of the batch-norm running variances (``*running_var``) in ``tree`` holding a value below 0.
    No training writes one (a variance cannot be negative), and in eval mode ``sqrt(var + eps)`` makes it NaN:
    finite, so the NaN check passes it, yet every logit downstream is NaN."""
    return [name for name, tensor in float_tensors(tree)
            if name.endswith("running_var") and tensor.numel() and not tensor.is_complex()
            and float(tensor.detach().min()) < 0]


def _listed(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f", ... and {len(names) - 4} more" if len(names) > 4 else "")


def refuse_nonfinite(tree: Any, source: str, option: str, fix: str = USE_ANOTHER) -> None:
    """Raise a ``CheckpointError`` naming ``option``, the file ``source``, how many tensors of ``tree`` (and
    which, the first few) hold NaN or inf, or a batch-norm running variance below 0, and ``fix``; do nothing
    when every tensor is finite and every variance >= 0."""
    bad, total = nonfinite_names(tree)
    if bad:
        raise CheckpointError(f"{option}: '{source}' holds NaN/inf in {len(bad)} of its {total} weight tensors "
                              f"({_listed(bad)}): {fix}")
    negative = negative_variances(tree)
    if negative:
        raise CheckpointError(f"{option}: '{source}' holds a batch-norm running_var below 0 in {len(negative)} "
                              f"tensor(s) ({_listed(negative)}): no training writes one (a variance cannot be "
                              f"negative) and every prediction through it is NaN; the file was damaged or edited. "
                              f"Use another checkpoint of the run (or pass a sound file)")
