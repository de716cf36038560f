"""The language of option rules (:class:`Rule`: kinds, range, choices, null) and how a value that breaks one
is put into words: ``<key>=<value>: expected <what> (e.g. <key>=<example>)``. :data:`RULES` lists what the
config files cannot say; seg_template/options.py applies them."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What an option accepts. ``kinds``: any of ``bool``, ``int``, ``real`` (an int or a float), ``str``
    (limited to ``choices`` when given), ``list`` or ``any`` (no type check); numbers must lie in
    [``low``, ``high``] (an end is excluded when ``open_low`` / ``open_high``) unless listed in ``also``."""

    kinds: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    also: tuple[int, ...] = ()
    note: str = ""  # what special values mean, said after the accepted ones
    null: bool = False
    unique: bool = False  # list entries must differ
    example: Any = None


def int_rule(low: int | None = None, high: int | None = None, **kw: Any) -> Rule:
    return Rule(("int",), low, high, **kw)


def real_rule(low: float | None = None, high: float | None = None, **kw: Any) -> Rule:
    return Rule(("real",), low, high, **kw)


def choice_rule(*choices: str, **kw: Any) -> Rule:
    return Rule(("str",), choices=choices, example=choices[0], **kw)


#: Ranges and choices the config files cannot express. A key may be a pattern (``*`` spans dots).


RULES: dict[str, Rule] = {
    "seed": int_rule(0, 2**32 - 1, null=True, note="null: no seeding"),  # seed_everything's range
    "train": Rule(("bool",)), "test": Rule(("bool",)),
    "split": choice_rule("val", "test"),
    "batch_size": int_rule(1), "num_workers": int_rule(0), "overlay_alpha": real_rule(0, 1),  # predict
    "max_image_pixels": int_rule(1, null=True, note="null: no limit", example=89478485),
    "trainer.max_epochs": int_rule(1, also=(-1,), note="-1: no limit, null: Lightning's default", null=True),
    "trainer.min_epochs": int_rule(0, null=True),
    "trainer.max_steps": int_rule(1, also=(-1,), note="-1: no limit"),
    "trainer.accumulate_grad_batches": int_rule(1, example=2),
    "trainer.check_val_every_n_epoch": int_rule(1, null=True),
    "trainer.log_every_n_steps": int_rule(1),
    "trainer.num_nodes": int_rule(1),
    "trainer.devices": Rule(("any",)),  # 1, -1, [0, 2], "auto": Lightning checks them
    "trainer.fast_dev_run": Rule(("bool", "int"), 0),
    "trainer.deterministic": Rule(("bool", "str"), choices=("warn",)),
    "trainer.limit_*_batches": real_rule(0, null=True), "trainer.overfit_batches": real_rule(0),
    "trainer.val_check_interval": real_rule(0, open_low=True, null=True, example=0.5),
    "trainer.gradient_clip_val": real_rule(0, null=True, example=1.0),
    "data.num_classes": int_rule(1), "data.ignore_index": int_rule(),
    "data.batch_size": int_rule(1), "data.eval_batch_size": int_rule(1, null=True),
    "data.num_workers": int_rule(0), "data.seed": int_rule(0, 2**32 - 1, null=True),
    "data.ohem_min_kept": int_rule(1),
    "data.preflight": choice_rule("sample", "full", "none"),
    "data.class_names": Rule(("list",), unique=True, null=True),
    "data.*_set.length": int_rule(0), "data.*_set.seed": int_rule(0, 2**32 - 1),
    "data.*_set.max_image_pixels": int_rule(1, null=True, note="null: no limit", example=89478485),
    "data.train_transform.color_jitter": real_rule(0),
    "model.width": int_rule(1), "model.num_classes": int_rule(1),
    "model.align_corners": Rule(("bool",)),
    "loss.aux_weight": real_rule(0), "loss.memory_efficient": Rule(("bool",)),
    "loss.main.thresh": real_rule(0, 1, open_low=True, example=0.7), "loss.main.min_kept": int_rule(1, example=100000),
    "loss.main.reduction": choice_rule("mean", "sum", "none"),
    "loss.main.ignore_index": int_rule(),
    "optimizer.lr": real_rule(0), "optimizer.weight_decay": real_rule(0),
    "scheduler.power": real_rule(0), "scheduler.warmup_steps": real_rule(0),
    "scheduler.warmup_ratio": real_rule(0, 1, open_low=True), "scheduler.min_lr_ratio": real_rule(0, 1),
    "inference.mode": choice_rule("whole", "slide"), "inference.window_batch": int_rule(1),
    "callbacks.nan_guard.patience": int_rule(1), "callbacks.nan_guard.check_gradients": Rule(("bool",)),
    "callbacks.model_checkpoint.every_n_train_steps": int_rule(0, note="0: only at epoch ends"),
    "callbacks.model_checkpoint.save_top_k": int_rule(-1),
    "callbacks.model_checkpoint.save_last": Rule(("bool", "str"), choices=("link",)),  # link: explained there
    "callbacks.model_checkpoint.mode": choice_rule("max", "min"),
    "callbacks.val_images.num_images": int_rule(1), "callbacks.val_images.every_n_epochs": int_rule(1),
    "callbacks.val_images.tile_size": int_rule(16), "callbacks.val_images.alpha": real_rule(0, 1),
    "callbacks.rich_progress_bar.plain_every_s": real_rule(0, open_low=True),
    "callbacks.early_stopping.patience": int_rule(0),
    "export.atol": real_rule(0), "export.min_agreement": real_rule(0, 1), "export.threads": int_rule(0),
    "export.opset": int_rule(7, null=True, example=17),
}

#: the kinds that are numbers
NUMERIC = {"int", "real"}


def show(value: Any, limit: int = 60) -> str:
    """``value`` as typed on a command line: ``true``, ``null``, ``'abc'``, ``[a, b]`` (shortened past ``limit``)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show(v) if not isinstance(v, str) else v for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number(value: Any) -> float:
    return int(value) if value == int(value) else value


def _range(rule: Rule) -> str:
    low, high = rule.low, rule.high
    if low is not None and high is not None:
        return f" in {'(' if rule.open_low else '['}{_number(low)}, {_number(high)}{')' if rule.open_high else ']'}"
    if low is not None:
        return f" {'>' if rule.open_low else '>='} {_number(low)}"
    return f" {'<' if rule.open_high else '<='} {_number(high)}" if high is not None else ""


def describe(rule: Rule) -> str:
    """What ``rule`` accepts, in words: ``an integer >= 1 or -1 (-1: no limit)``, ``true or false``..."""
    parts = ["true", "false"] if "bool" in rule.kinds else []
    if "int" in rule.kinds:
        parts.append("an integer" + _range(rule))
    if "real" in rule.kinds:
        parts.append("a finite number" + _range(rule))
    if "str" in rule.kinds and rule.choices:
        parts.append(("one of " if len(rule.choices) > 1 else "") + ", ".join(repr(c) for c in rule.choices))
    if "list" in rule.kinds:
        parts.append("a list of distinct names" if rule.unique else "a list")
    parts += [str(v) for v in rule.also]
    if rule.null:
        parts.append("null")
    parts = parts or ["any value"]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _duplicates(names: list) -> str:
    where: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        where.setdefault(str(name), []).append(index)
    twice = [f"{name!r} is class {' and class '.join(map(str, ids))}" for name, ids in where.items() if len(ids) > 1]
    return "; ".join(twice)


def problem(key: str, value: Any, rule: Rule) -> str | None:
    """Why ``value`` breaks ``rule`` (``<key>=<value>: expected ...``), or None when it is fine."""
    if value is None and rule.null:
        return None
    if "any" in rule.kinds:
        ok = not (isinstance(value, float) and not math.isfinite(value))
    elif isinstance(value, bool):
        ok = "bool" in rule.kinds
    elif isinstance(value, numbers.Real):  # numpy scalars too, for callers from Python
        ok = ("int" in rule.kinds and isinstance(value, numbers.Integral)) or (
            "real" in rule.kinds and math.isfinite(value))
        if ok and value not in rule.also:
            low_bad = rule.low is not None and (value <= rule.low if rule.open_low else value < rule.low)
            high_bad = rule.high is not None and (value >= rule.high if rule.open_high else value > rule.high)
            ok = not (low_bad or high_bad)
    elif isinstance(value, str):
        ok = "str" in rule.kinds and (not rule.choices or value in rule.choices)
    elif isinstance(value, list | tuple):
        ok = "list" in rule.kinds
        if ok and rule.unique and _duplicates(list(value)):
            return (f"{key}={show(value)}: expected distinct names, but {_duplicates(list(value))} (the metrics "
                    "would merge them into one column)")
    else:
        ok = False
    if ok:
        return None
    return f"{key}={show(value)}: expected {describe(rule)}{hint(key, rule.note, rule.example)}"


def hint(key: str, note: str, example: Any) -> str:
    """`` (note; e.g. key=example)``, either part left out when empty."""
    parts = [note] if note else []
    if example is not None:
        parts.append(f"e.g. {key}={example if isinstance(example, str) else show(example, 40)}")  # as typed
    return f" ({'; '.join(parts)})" if parts else ""
