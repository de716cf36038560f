"""Resuming with changed optimisation options: the rule, and what the checkpoint stores for it.

Lightning restores the optimiser's parameter groups wholesale from the checkpoint, so options typed on resume
were silently dropped (``optimizer.lr=1e-6`` kept the old learning rate and schedule), and another optimiser
(``optimizer=sgd`` on an AdamW checkpoint) got AdamW's groups and failed deep inside ``SGD.step`` with
``KeyError: 'momentum'``. The rule here:

- **The optimiser's class must be the checkpoint's.** Otherwise :func:`check_optimizer` raises a
  ``CheckpointError`` naming both classes and the two ways out: resume with the original ``optimizer=``, or
  start a new run from the weights with ``model.pretrained=<ckpt>``. Its saved state (moments, momentum
  buffers) only means something to the optimiser that wrote it. So is an option switched on that needs state
  the checkpoint lacks (``optimizer.amsgrad=true`` on a state written without it: ``KeyError: 'max_exp_avg_sq'``).
- **The parameter groups must be the checkpoint's** (:func:`check_parameter_groups`): another
  ``optimizer.no_weight_decay`` splits the parameters differently, and torch refused the state with "loaded
  state dict has a different number of parameter groups".
- **Changed values are applied from the resumed step, with one notice line** listing ``key: old -> new``:
  optimiser options (``lr``, ``weight_decay``, ``betas``, ``momentum``, ...), scheduler options (``power``,
  ``warmup_steps``, ...), the scheduler itself, and the schedule's length (``trainer.max_epochs``,
  ``trainer.max_steps``, ...). The learning rate at the resumed step becomes the new schedule's: the
  new base learning rate times the new schedule's factor at that step (the poly schedule recomputed for the
  new total). Unchanged options leave the restored state untouched, bit for bit.

Every checkpoint carries ``"optimization"`` (:func:`optimization_record`: plain data, read with
``weights_only=True``): the optimiser's class, the scheduler and its options, the schedule's length. A
checkpoint without it (written before this existed) is still checked from its parameter groups: options
another optimiser needs and the saved groups lack refuse the resume, and changed values and schedules are
found by comparing the restored groups with the new ones.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from seg_template.errors import CheckpointError

log = logging.getLogger(__name__)

RECORD_KEY = "optimization"
#: parameter-group entries that are not options: the parameters, and the learning rates a scheduler manages
_NOT_OPTIONS = ("params", "param_names", "lr", "initial_lr")
#: options whose value ``True`` needs per-parameter state that a checkpoint written with ``False`` lacks
_STATEFUL_OPTIONS = {"amsgrad": "max_exp_avg_sq"}


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function (of a partial's function)."""
    obj = obj.func if isinstance(obj, functools.partial) else obj
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def plain(value: Any) -> Any:
    """``value`` as data that ``torch.load(weights_only=True)`` reads: numbers, strings, lists, dicts."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with Hydra
        pass
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)


def _factory_options(factory: Callable[..., Any] | None) -> dict[str, Any] | None:
    if factory is None:
        return None
    keywords = factory.keywords if isinstance(factory, functools.partial) else {}
    return {"name": qualified_name(factory), "options": plain(keywords)}


def optimization_record(optimizer: Optimizer | None, scheduler_factory: Callable[..., Any] | None,
                        total_steps: int | None, trainer: Any = None,
                        no_weight_decay: Sequence[str] | None = None) -> dict[str, Any]:
    """What a checkpoint stores about its optimisation: the optimiser class, the scheduler (its function and
    options), the schedule's length in optimiser steps and the trainer options that set it, and the
    parameter kinds without weight decay (``optimizer.no_weight_decay``)."""
    record: dict[str, Any] = {"format": 1, "scheduler": _factory_options(scheduler_factory),
                              "total_steps": total_steps}
    if no_weight_decay is not None:
        record["no_weight_decay"] = list(no_weight_decay)
    if optimizer is not None:
        record["optimizer"] = qualified_name(type(optimizer))
    if trainer is not None:
        record["trainer"] = {key: plain(getattr(trainer, key, None))
                             for key in ("max_epochs", "max_steps", "accumulate_grad_batches")}
    return record


def check_parameter_groups(checkpoint: Mapping[str, Any], sizes: Sequence[int], no_weight_decay: Sequence[str],
                           source: str) -> None:
    """Refuse to resume ``checkpoint`` (read from ``source``) when its optimiser state splits the parameters
    into other groups than the configured ones (``sizes``: parameters per group, from
    ``optim.param_groups(net, no_weight_decay)``): the state of one group would land on another's."""
    states = checkpoint.get("optimizer_states") or []
    if not states or not isinstance(states[0], Mapping):
        return
    saved = [len(g.get("params") or []) for g in states[0].get("param_groups") or [] if isinstance(g, Mapping)]
    if not saved or saved == list(sizes):
        return
    record = checkpoint.get(RECORD_KEY)
    trained = record.get("no_weight_decay") if isinstance(record, Mapping) else None
    was = (f"it was trained with optimizer.no_weight_decay={list(trained)}" if isinstance(trained, list)
           else "it was trained with another optimizer.no_weight_decay")
    raise CheckpointError(
        f"ckpt_path: '{source}' holds an optimiser state for {len(saved)} parameter group(s) of {saved} "
        f"parameters, but optimizer.no_weight_decay={list(no_weight_decay)} makes {len(sizes)} of {list(sizes)}: "
        f"{was}. Resume with that value, or start a new run from these weights with model.pretrained={source} "
        "instead of ckpt_path")


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


# ---------------------------------------------------------------- the class must match
def check_optimizer(checkpoint: Mapping[str, Any], factory: Callable[..., Optimizer] | None, source: str) -> None:
    """Refuse to resume ``checkpoint`` (read from ``source``) with an optimiser of another class than the one
    that wrote its state. ``factory``: the configured optimiser partial (taking ``params``)."""
    states = checkpoint.get("optimizer_states") or []
    if factory is None or not states or not isinstance(states[0], Mapping):
        return
    try:  # the configured class and the options it needs; bad options are configure_optimizers' to report
        probe = factory(params=[torch.nn.Parameter(torch.zeros(1))])
    except Exception:  # noqa: BLE001
        return
    configured = type(probe)
    _check_stateful_options(states[0], probe, source)
    record = checkpoint.get(RECORD_KEY)
    trained = record.get("optimizer") if isinstance(record, Mapping) else None
    if isinstance(trained, str):
        if trained != qualified_name(configured):
            original = next((name for name, cls in _optimizer_configs() if qualified_name(cls) == trained), None)
            raise CheckpointError(_class_message(source, short(trained), configured, original))
        return
    # an older checkpoint: the options this optimiser needs that the saved groups do not have
    groups = [g for g in states[0].get("param_groups") or [] if isinstance(g, Mapping)]
    saved = set(groups[0]) if groups else set()
    missing = sorted(_needed_options(probe) - saved)
    if groups and missing:
        original = next((name for name, cls in _optimizer_configs()
                         if cls is not configured and _needed_options(cls) <= saved), None)
        raise CheckpointError(_class_message(source, f"another optimiser (its saved state has no "
                                                     f"{', '.join(missing)})", configured, original))


def _check_stateful_options(saved: Mapping[str, Any], probe: Optimizer, source: str) -> None:
    """Refuse an option switched on at resume whose optimiser state the checkpoint does not have."""
    per_param = [s for s in (saved.get("state") or {}).values() if isinstance(s, Mapping)]
    for option, key in _STATEFUL_OPTIONS.items():
        if probe.param_groups[0].get(option) and any(key not in s for s in per_param):
            raise CheckpointError(f"optimizer.{option}=true needs '{key}' in the optimiser state, but ckpt_path "
                                  f"'{source}' was trained without it: resume without changing optimizer.{option}, "
                                  f"or start a new run from these weights: model.pretrained={source} instead of "
                                  "ckpt_path.")


def _needed_options(optimizer: Optimizer | type[Optimizer]) -> set[str]:
    """The group options an optimiser reads and does not fill in itself when loading an older state."""
    if isinstance(optimizer, type):
        optimizer = optimizer([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    blank = type(optimizer).__new__(type(optimizer))
    blank.__setstate__({"state": {}, "param_groups": [{"params": []}], "defaults": dict(optimizer.defaults)})
    return set(optimizer.param_groups[0]) - set(blank.param_groups[0]) - set(_NOT_OPTIONS)


def _class_message(source: str, trained: str, configured: type, original: str | None) -> str:
    back = f"optimizer={original}" if original else "the optimiser it was trained with"
    return (f"ckpt_path: '{source}' was trained with {trained}, but this run configures {configured.__name__}: "
            f"the saved optimiser state only fits the optimiser that wrote it. Resume with {back} (changed "
            f"values such as optimizer.lr are applied from the resumed step), or start a new run from these "
            f"weights: model.pretrained={source} instead of ckpt_path.")


@functools.cache
def _optimizer_configs() -> tuple[tuple[str, type], ...]:
    """``(name, class)`` of each ``configs/optimizer/<name>.yaml``."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from seg_template.paths import CONFIG_DIR

    found = []
    for path in sorted((CONFIG_DIR / "optimizer").glob("*.yaml")):
        try:
            found.append((path.stem, get_class(str(OmegaConf.load(path)["_target_"]))))
        except Exception:  # noqa: BLE001 - a file we cannot read is no answer
            continue
    return tuple(found)


# ---------------------------------------------------------------- changed values, applied
def snapshot_groups(optimizer: Optimizer) -> list[dict[str, Any]]:
    """The option values of each parameter group (everything but the parameters), as configured."""
    return [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in optimizer.param_groups]


def _same(a: Any, b: Any) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-12)
    return type(a) is type(b) and a == b


def _fmt(value: Any) -> str:
    if isinstance(value, bool):  # as typed on the command line
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "none" if value is None else str(value)


def apply_changed_options(optimizer: Optimizer, scheduler: Any, configured: Sequence[Mapping[str, Any]],
                          record: Mapping[str, Any] | None, now: Mapping[str, Any], had_scheduler: bool,
                          step: int) -> list[str]:
    """Apply the configured optimisation options on top of a restored state; return ``key: old -> new`` items.

    ``optimizer`` / ``scheduler``: restored by Lightning (the checkpoint's parameter groups, the new
    schedule's function); ``configured``: :func:`snapshot_groups` of the optimiser as built from the config,
    before the restore; ``record`` / ``now``: :func:`optimization_record` of the checkpoint (None when it has
    none) and of this run; ``had_scheduler``: whether the checkpoint held a scheduler state; ``step``: the
    resumed optimiser step. Nothing is touched when nothing changed.
    """
    changes: dict[str, str] = {}
    groups = optimizer.param_groups
    old_base = [g.get("initial_lr", g["lr"]) for g in groups]
    old_lr = [g["lr"] for g in groups]
    new_base = [c.get("initial_lr", c["lr"]) for c in configured]
    for group, fresh in zip(groups, configured, strict=True):
        for key, value in fresh.items():
            if key in _NOT_OPTIONS or (key in group and _same(group[key], value)):
                continue
            changes.setdefault(f"optimizer.{key}", f"{_fmt(group.get(key))} -> {_fmt(value)}")
            group[key] = value
    if any(not _same(a, b) for a, b in zip(old_base, new_base, strict=True)):
        changes["optimizer.lr"] = f"{_fmt(old_base[0])} -> {_fmt(new_base[0])}"
    schedule_changed = _schedule_changes(record, now, changes)
    if (scheduler is not None) != had_scheduler:  # a scheduler added or removed (also without a record)
        name = (now.get("scheduler") or {}).get("name")
        changes.setdefault("scheduler", f"none -> {short(name)}" if scheduler is not None and name else
                           "none -> a scheduler" if scheduler is not None else "the checkpoint's -> none")
        schedule_changed = True
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if scheduler is not None and lambdas is not None:
        last = scheduler.last_epoch if had_scheduler else step
        factors = [fn(last) for fn in lambdas]
        if record is None and had_scheduler:  # no record: compare the schedule's factor at this step
            for lr, base, factor in zip(old_lr, old_base, factors, strict=True):
                if base and not math.isclose(lr / base, factor, rel_tol=1e-9):
                    changes.setdefault("learning-rate schedule", f"factor {lr / base:.4g} -> {factor:.4g} at step "
                                                                 f"{step} (scheduler.* or the training length)")
                    break
        if not changes and had_scheduler and not schedule_changed:
            return []
        scheduler.base_lrs = list(new_base)
        scheduler.last_epoch = last
        scheduler._step_count = last + 1  # noqa: SLF001 - torch counts steps to warn about a misordered step()
        for group, base, factor in zip(groups, new_base, factors, strict=True):
            group["initial_lr"], group["lr"] = base, base * factor
        scheduler._last_lr = [g["lr"] for g in groups]  # noqa: SLF001 - what get_last_lr() reports
    elif scheduler is None:
        if not changes:
            return []
        for group, base in zip(groups, new_base, strict=True):
            group.pop("initial_lr", None)
            group["lr"] = base
    else:  # another kind of scheduler: new base learning rates, the restored schedule scaled to them
        if not changes:
            return []
        scheduler.base_lrs = list(new_base)
        for group, old, base, lr in zip(groups, old_base, new_base, old_lr, strict=True):
            group["initial_lr"], group["lr"] = base, lr * base / old if old else base
    return [f"{key}: {value}" for key, value in changes.items()]


def _schedule_changes(record: Mapping[str, Any] | None, now: Mapping[str, Any], changes: dict[str, str]) -> bool:
    """Add the scheduler and schedule-length changes between ``record`` and ``now`` to ``changes``."""
    if not isinstance(record, Mapping):
        return False
    before, after = record.get("scheduler"), now.get("scheduler")
    changed = False
    if (before or {}).get("name") != (after or {}).get("name"):
        changes["scheduler"] = (f"{short(before['name']) if before else 'none'} -> "
                                f"{short(after['name']) if after else 'none'}")
        changed = True
    elif before and after:
        old_options, new_options = before.get("options") or {}, after.get("options") or {}
        for key in sorted(set(old_options) | set(new_options)):
            if not _same(old_options.get(key), new_options.get(key)):
                changes[f"scheduler.{key}"] = f"{_fmt(old_options.get(key))} -> {_fmt(new_options.get(key))}"
                changed = True
    old_total, new_total = record.get("total_steps"), now.get("total_steps")
    if after and old_total != new_total:
        old_trainer, new_trainer = record.get("trainer") or {}, now.get("trainer") or {}
        for key in ("max_epochs", "max_steps", "accumulate_grad_batches"):
            if key in old_trainer and not _same(old_trainer.get(key), new_trainer.get(key)):
                changes[f"trainer.{key}"] = f"{_fmt(old_trainer.get(key))} -> {_fmt(new_trainer.get(key))}"
        changes["schedule length"] = f"{_fmt(old_total)} -> {_fmt(new_total)} optimiser steps"
        changed = True
    return changed
