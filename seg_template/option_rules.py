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
    [``low``, ``high``] (an end is excluded when ``open_low`` / ``open_high``) unless listed in ``also``. A list
    holds ``length`` entries (any number when None), each valid under ``item`` (a Rule, a list rule for lists
    of lists) when given."""

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
    length: int | None = None
    item: Rule | None = None


def int_rule(low: int | None = None, high: int | None = None, **kw: Any) -> Rule:
    return Rule(("int",), low, high, **kw)


def real_rule(low: float | None = None, high: float | None = None, **kw: Any) -> Rule:
    return Rule(("real",), low, high, **kw)


def choice_rule(*choices: str, **kw: Any) -> Rule:
    return Rule(("str",), choices=choices, example=choices[0], **kw)


def list_rule(item: Rule | None = None, length: int | None = None, **kw: Any) -> Rule:
    """A list of ``length`` entries (the files' length when None) of ``item`` (the files' kind when None)."""
    return Rule(("list",), item=item, length=length, **kw)


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
    # lists: their length comes from the files when they agree (betas 2, crop_size 2...), their entries' range
    # from here (a crop of 0 pixels, a beta of 1, a scale of 0 fail later with a traceback)
    "data.class_names": list_rule(Rule(("str",)), unique=True, null=True),
    # numbers (true is no weight); a negative one is named by the loss (losses/class_weights.py), as for a file
    "data.class_weights": Rule(("list", "str"), item=real_rule(), null=True,
                               note="a string: a .npy / .json / .txt file of weights"),
    "data.train_transform.crop_size": list_rule(int_rule(1)),
    "data.train_transform.scale_range": list_rule(real_rule(0, open_low=True)),
    "data.*_transform.mean": list_rule(real_rule(0, 1), 3, example=[0.485, 0.456, 0.406]),  # RGB, fractions of 255
    "data.*_transform.std": list_rule(real_rule(0, open_low=True), 3, example=[0.229, 0.224, 0.225]),
    "data.*_set.image_size": list_rule(int_rule(1)),
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
    "optimizer.betas": list_rule(real_rule(0, 1, open_high=True)),  # torch's range
    "scheduler.power": real_rule(0), "scheduler.warmup_steps": real_rule(0),
    "scheduler.warmup_ratio": real_rule(0, 1, open_low=True), "scheduler.min_lr_ratio": real_rule(0, 1),
    "inference.mode": choice_rule("whole", "slide"), "inference.window_batch": int_rule(1),
    "inference.crop_size": list_rule(int_rule(1)), "inference.stride": list_rule(int_rule(1)),
    "inference.scales": list_rule(real_rule(0, open_low=True)),
    "ohem_thresh_range": list_rule(real_rule(0, 1, open_low=True)),  # the range loss.main.thresh is searched in
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
    "export.check_shapes": list_rule(list_rule(int_rule(1), 3)),  # [batch, height, width] each
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
        parts.append("a list of " + _plural(rule) if rule.item or rule.length else "a list")
    if "str" in rule.kinds and not rule.choices:
        parts.append("a string")
    parts += [str(v) for v in rule.also]
    if rule.null:
        parts.append("null")
    parts = parts or ["any value"]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _plural(rule: Rule) -> str:
    """What the entries of a list under ``rule`` are, in words: ``2 finite numbers in [0, 1)``."""
    count = f"{rule.length} " if rule.length is not None else ""
    item = rule.item
    if item is None:
        return f"{count}entries"
    if rule.unique and "str" in item.kinds:
        return f"{count}distinct names"
    if "list" in item.kinds:
        return f"{count}lists of {_plural(item)}"
    if item.kinds == ("int",):
        return f"{count}integers{_range(item)}"
    if item.kinds == ("real",):
        return f"{count}finite numbers{_range(item)}"
    if item.kinds == ("str",) and not item.choices:
        return f"{count}strings"
    return f"{count}values ({describe(item)})"


def _list_culprit(value: list | tuple, rule: Rule) -> Any:
    """The first part of ``value`` that breaks ``rule``'s length or entries: ``value`` itself for a wrong
    length, an entry (of an entry, for lists of lists), or ``_FINE``. NaN / inf entries are left to the
    caller's walk, which names each with its index (``key[1]=nan``)."""
    if rule.length is not None and len(value) != rule.length:
        return value
    if rule.item is None:
        return _FINE
    for entry in value:
        if isinstance(entry, float) and not math.isfinite(entry):
            continue
        if isinstance(entry, list | tuple) and "list" in rule.item.kinds:
            inner = _list_culprit(entry, rule.item)
            if inner is not _FINE:
                return inner
        elif problem("", entry, rule.item) is not None:
            return entry
    return _FINE


_FINE = object()


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
        culprit = _list_culprit(value, rule) if ok else _FINE
        if culprit is not _FINE:
            got = "" if culprit is value else f", got {show(culprit)}"
            if isinstance(culprit, int | float) and rule.item and rule.item.kinds == ("str",):
                got += " (quote a name that reads as a number: '1')"
            return f"{key}={show(value)}: expected {describe(rule)}{got}{hint(key, rule.note, rule.example)}"
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
