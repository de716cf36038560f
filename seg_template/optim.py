"""Optimiser parameter groups and the poly learning-rate schedule with linear warmup.

Optimisers come from ``configs/optimizer/*.yaml`` as partials (``torch.optim.SGD`` / ``AdamW``); the module
calls them on :func:`param_groups`. Schedules come from ``configs/scheduler/*.yaml`` as partials of
:func:`poly_warmup`, called with the optimiser and the total number of steps
(``trainer.estimated_stepping_batches``) and stepped once per optimisation step.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from seg_template.errors import ConfigError
from seg_template.options import require

#: what ``optimizer.no_weight_decay`` may list: ``norm``, every parameter of a norm layer (BN, GN, LN: scale
#: and shift); ``bias``, the biases of the other layers (MMSeg's ``norm_decay_mult`` / ``bias_decay_mult``)
NO_DECAY_KINDS = ("norm", "bias")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def check_no_weight_decay(kinds: Sequence[str]) -> tuple[str, ...]:
    """``optimizer.no_weight_decay`` as a tuple, or a ``ConfigError`` naming the key and the choices."""
    if isinstance(kinds, str) or not all(isinstance(k, str) and k in NO_DECAY_KINDS for k in kinds):
        raise ConfigError(f"optimizer.no_weight_decay={list(kinds) if not isinstance(kinds, str) else kinds!r}: "
                          f"a list of {' / '.join(NO_DECAY_KINDS)} (the parameters without weight decay), e.g. "
                          "[norm, bias] (the default), [norm] (SegFormer) or [] (decay every parameter: HRNet, "
                          "torchvision's references, MMSeg's DeepLabV3)")
    return tuple(kinds)


def param_groups(model: nn.Module, no_weight_decay: Sequence[str] = NO_DECAY_KINDS) -> list[dict]:
    """Two groups: weights that decay, and the kinds of ``no_weight_decay`` (norm-layer parameters, biases)
    with ``weight_decay=0``; one group when nothing is exempt.

    Decaying BN scales and biases only shrinks them towards 0 and costs accuracy (as in timm / MMSeg's
    ``norm_decay_mult=0``), hence the default; the published recipes that decay every parameter set
    ``optimizer.no_weight_decay=[]``. The first group keeps the optimiser's own ``weight_decay``.
    """
    exempt = check_no_weight_decay(no_weight_decay)
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            kind = "norm" if isinstance(module, NORM_TYPES) else "bias" if name == "bias" else None
            (no_decay if kind in exempt else decay).append(param)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


MIN_LR_MODES = ("floor", "offset")


def poly_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0,
                warmup_ratio: float = 1e-3, min_lr_ratio: float = 0.0, min_lr_mode: str = "floor") -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based).

    Poly decay ``p = (1 - step / total_steps) ** power``, kept at or above ``min_lr_ratio`` by
    ``min_lr_mode``: ``floor`` is ``max(p, min_lr_ratio)``; ``offset`` is ``min_lr_ratio + (1 - min_lr_ratio)
    * p`` (MMSegmentation's ``PolyLR(eta_min=min_lr_ratio * lr)``, HRNet's with 0). Times a linear warmup
    from ``warmup_ratio`` to 1 over the first ``warmup_steps`` steps (MMSegmentation's formula).
    """
    progress = min(step, total_steps) / max(total_steps, 1)
    decay = (1.0 - progress) ** power
    factor = min_lr_ratio + (1.0 - min_lr_ratio) * decay if min_lr_mode == "offset" else max(decay, min_lr_ratio)
    if step < warmup_steps:
        factor *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
    return factor


def poly_warmup(optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int | float = 0,
                warmup_ratio: float = 1e-3, min_lr_ratio: float = 0.0, min_lr_mode: str = "floor") -> LambdaLR:
    """Poly schedule with linear warmup as a per-step ``LambdaLR``.

    ``warmup_steps``: a step count, or a fraction of ``total_steps`` when it is a float below 1.
    """
    # ConfigError: these come from configs/scheduler/*.yaml (or the trainer's length), not from our code
    if total_steps < 1:
        raise ConfigError(f"the poly schedule needs total_steps >= 1 optimiser steps, got {total_steps} (from "
                          "trainer.max_epochs, trainer.max_steps and trainer.limit_train_batches)")
    for key, value in (("power", power), ("warmup_steps", warmup_steps), ("warmup_ratio", warmup_ratio),
                       ("min_lr_ratio", min_lr_ratio)):
        require(f"scheduler.{key}", value)  # the task checked the config already; this is for Python callers
    if min_lr_mode not in MIN_LR_MODES:
        raise ConfigError(f"scheduler.min_lr_mode={min_lr_mode!r}: choose from {', '.join(MIN_LR_MODES)}")
    warmup = int(round(warmup_steps * total_steps)) if isinstance(warmup_steps, float) and warmup_steps < 1 \
        else int(warmup_steps)
    return LambdaLR(optimizer, lambda step: poly_factor(step, total_steps, power, warmup, warmup_ratio,
                                                        min_lr_ratio, min_lr_mode))
