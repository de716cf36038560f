"""Optimiser parameter groups and the poly learning-rate schedule with linear warmup.

Optimisers come from ``configs/optimizer/*.yaml`` as partials (``torch.optim.SGD`` / ``AdamW``); the module
calls them on :func:`param_groups`. Schedules come from ``configs/scheduler/*.yaml`` as partials of
:func:`poly_warmup`, called with the optimiser and the total number of steps
(``trainer.estimated_stepping_batches``) and stepped once per optimisation step.
"""

from __future__ import annotations

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from seg_template.errors import ConfigError
from seg_template.options import require


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights that decay, and norm-layer parameters + biases with ``weight_decay=0``.

    Decaying BN scales and biases only shrinks them towards 0 and costs accuracy (as in timm / MMSeg's
    ``norm_decay_mult=0``); the first group keeps the optimiser's own ``weight_decay``.
    """
    decay, no_decay = [], []
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if isinstance(module, norm_types) or name == "bias" else decay).append(param)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def poly_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0,
                warmup_ratio: float = 1e-3, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based).

    Poly decay ``(1 - step / total_steps) ** power`` (floored at ``min_lr_ratio``), times a linear warmup
    from ``warmup_ratio`` to 1 over the first ``warmup_steps`` steps (MMSegmentation's formula).
    """
    progress = min(step, total_steps) / max(total_steps, 1)
    factor = max((1.0 - progress) ** power, min_lr_ratio)
    if step < warmup_steps:
        factor *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
    return factor


def poly_warmup(optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int | float = 0,
                warmup_ratio: float = 1e-3, min_lr_ratio: float = 0.0) -> LambdaLR:
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
    warmup = int(round(warmup_steps * total_steps)) if isinstance(warmup_steps, float) and warmup_steps < 1 \
        else int(warmup_steps)
    return LambdaLR(optimizer, lambda step: poly_factor(step, total_steps, power, warmup, warmup_ratio,
                                                        min_lr_ratio))
