"""Weights holding NaN or inf: found wherever a network's weights come from a file, and refused there.

A file whose weights hold a NaN (the state of a diverged run, a corrupted copy) gives NaN logits for every
image; their argmax is class 0, so eval would print an all-zero table and predict would write class 0
everywhere, both exiting 0. The loaders (:mod:`seg_template.models.weights`, the resume check, ONNX files)
refuse such a file instead, naming it and the tensors that are not finite. A batch-norm running variance below
0 is refused the same way: finite, yet NaN through ``sqrt(var + eps)`` in every prediction.

Before any of that, :func:`refuse_odd_tensors` checks the *kind* of every tensor in the file: training writes
dense (strided) tensors of a real dtype on a device, and nothing else. A sparse weight (COO, CSR, CSC, BSR,
BSC), a nested, quantized or complex tensor, or a ``meta`` tensor (no data at all) is refused naming the file
and the tensor: no NaN check can read one (``aminmax`` has no sparse or meta kernel: a 125-line traceback),
and ``load_state_dict`` would densify, dequantize or drop the imaginary part without a word. The one reader
(:func:`seg_template.models.weights.read_weights_file`) calls it on every file it reads, so eval, predict,
export, ``model.pretrained`` and resuming all refuse such a file the same way.
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


#: what to do about a file holding a tensor of a kind training never writes (:func:`refuse_odd_tensors`)
DENSE_ONLY = ("training writes dense tensors of a real dtype only: pass a checkpoint written by training (best.ckpt "
              "or last.ckpt of a run), or re-save this one with dense real tensors (tensor.to_dense(), "
              ".dequantize(), .real)")


def all_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``(dotted name, tensor)`` for every tensor in ``tree``: a tensor, or nested mappings, lists and tuples
    of them (a state dict, a Lightning checkpoint with its ``optimizer_states`` and ``callbacks``)."""
    if isinstance(tree, Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from all_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from all_tensors(value, f"{prefix}[{index}]" if prefix else f"[{index}]")


def float_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``(dotted name, tensor)`` for every floating-point (or complex) tensor in ``tree`` (see
    :func:`all_tensors`)."""
    for name, tensor in all_tensors(tree, prefix):
        if tensor.is_floating_point() or tensor.is_complex():
            yield name, tensor


def odd_kind(tensor: Tensor) -> str | None:
    """What makes ``tensor`` something training never writes (``"is sparse (layout torch.sparse_coo)"``), or
    None for a dense tensor of a real (or boolean) dtype that holds its data: the only kind this project reads.
    Looks at the tensor's metadata only, never at its elements."""
    if tensor.is_nested:  # before the layout: a strided nested tensor reports torch.strided
        return f"is a nested tensor (layout {tensor.layout})"
    if tensor.layout != torch.strided:
        kind = "sparse" if "sparse" in str(tensor.layout) else "not dense"
        return f"is {kind} (layout {tensor.layout})"
    if tensor.is_meta:
        return "holds no data (device meta)"
    if tensor.is_quantized:
        return f"is quantized (dtype {tensor.dtype})"
    if tensor.is_complex():
        return f"is complex (dtype {tensor.dtype})"
    return None


def odd_tensors(tree: Any) -> list[str]:
    """``"<name> <what>"`` for every tensor in ``tree`` of a kind training never writes (:func:`odd_kind`)."""
    return [f"{name} {what}" for name, tensor in all_tensors(tree) if (what := odd_kind(tensor)) is not None]


def refuse_odd_tensors(tree: Any, source: str, option: str, fix: str = DENSE_ONLY) -> None:
    """Raise a ``CheckpointError`` naming ``option``, the file ``source`` and the tensors of ``tree`` (the first
    few) that are sparse, nested, quantized, complex or without data, and ``fix``; do nothing when there is
    none. Called before anything reads a tensor's elements: no kernel of the NaN check fits every kind."""
    odd = odd_tensors(tree)
    if odd:
        what = f"tensor {odd[0]}" if len(odd) == 1 else f"{len(odd)} tensors: {_listed(odd)}"
        raise CheckpointError(f"{option}: '{source}': {what}: not a weights file this project reads; {fix}")


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
    when every tensor is finite and every variance >= 0. A tensor of a kind no NaN check reads (sparse,
    quantized, ``meta``: :func:`odd_kind`) is refused first, by :func:`refuse_odd_tensors`."""
    refuse_odd_tensors(tree, source, option)
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
