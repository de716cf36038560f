"""The language of option rules (:class:`Rule`: kinds, range, choices, null) and how a value that breaks one
is put into words: ``<key>=<value>: expected <what> (e.g. <key>=<example>)``. :data:`RULES` lists what the
config files cannot say; seg_template/options.py applies them.

Two kinds of bound go beyond a plain range:

- **sane bounds** (``sane_low`` / ``sane_high``, with ``sane_why``): values the type allows but no real run
  means, refused with the reason (``trainer.max_epochs=99999999999999999999999`` ran "forever", a recipe's
  ``data.val_set.length: 10**12`` hung eval, a std of ``1e-40`` blew the images up). They are said only to
  a value that breaks them, so the usual ``expected an integer >= 1`` stays short. Every count that a slip of
  the keyboard can make absurd has one (a test walks :data:`RULES`); no integer anywhere may exceed 64 bits.
- **bounds read when the options are checked** (:class:`Derived`): ``data.class_names`` has one name per class
  (``data.num_classes`` of the same config), ``export.opset`` goes up to the newest opset of the installed
  torch's exporter. :func:`resolved` turns them into numbers for one config, saying where each came from.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: how a rule reads another option of the config being checked: ``get("data.num_classes")``; None when the
#: key is not set or no config is at hand (a constructor called from Python)
Lookup = Callable[[str], Any]


@dataclass(frozen=True)
class Derived:
    """A bound or a length known only when the options are checked: ``read(get)`` gives ``(value, words)``,
    the words saying where the value came from (``one per class: data.num_classes is 6``), or None when it
    cannot be known (then the rule has no such bound)."""

    read: Callable[[Lookup], tuple[float, str] | None]


@dataclass(frozen=True)
class Rule:
    """What an option accepts. ``kinds``: any of ``bool``, ``int``, ``real`` (an int or a float), ``str``
    (limited to ``choices`` when given, at most ``max_chars`` long), ``list`` or ``any`` (no type check);
    numbers must lie in [``low``, ``high``] (an end is excluded when ``open_low`` / ``open_high``) unless listed
    in ``also``, and in [``sane_low``, ``sane_high``] (said only when broken, with ``sane_why``). A list holds
    ``length`` entries (any number, at least ``min_length``, when None), each valid under ``item`` (a Rule, a
    list rule for lists of lists) when given. ``high``, ``length`` and the sane bounds may be :class:`Derived`
    (see :func:`resolved`); ``derived`` names the fields a resolved rule took from the config."""

    kinds: tuple[str, ...]
    low: float | None = None
    high: float | Derived | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    also: tuple[int, ...] = ()
    note: str = ""  # what special values mean, said after the accepted ones
    null: bool = False
    unique: bool = False  # list entries must differ
    example: Any = None
    length: int | Derived | None = None
    item: Rule | None = None
    min_length: int = 0
    max_chars: int | None = None  # strings: at most this many characters
    sane_low: float | Derived | None = None
    sane_high: float | Derived | None = None
    sane_why: str = ""  # why values beyond the sane bounds are refused: what no real run does
    derived: frozenset[str] = frozenset()


def _no_config(key: str) -> Any:
    return None


def resolved(rule: Rule, get: Lookup | None = None) -> Rule:
    """``rule`` with its :class:`Derived` fields (its entries' too) read for the config ``get`` looks into
    (none: each such bound is left out). The words of each value found are added to the rule's note."""
    get = get or _no_config
    changes: dict[str, Any] = {}
    words = [rule.note] if rule.note else []
    for field in ("high", "length", "sane_low", "sane_high"):
        value = getattr(rule, field)
        if isinstance(value, Derived):
            found = value.read(get)
            changes[field] = None if found is None else found[0]
            if found is not None:
                words.append(found[1])
                changes["derived"] = rule.derived | {field}
    if rule.item is not None:
        item = resolved(rule.item, get)
        if item is not rule.item:
            changes["item"] = item
    if not changes:
        return rule
    return dataclasses.replace(rule, note="; ".join(words), **changes)


def _is_derived(rule: Rule) -> bool:
    fields = (rule.high, rule.length, rule.sane_low, rule.sane_high)
    return any(isinstance(f, Derived) for f in fields) or (rule.item is not None and _is_derived(rule.item))


def int_rule(low: int | None = None, high: int | Derived | None = None, **kw: Any) -> Rule:
    return Rule(("int",), low, high, **kw)


def real_rule(low: float | None = None, high: float | None = None, **kw: Any) -> Rule:
    return Rule(("real",), low, high, **kw)


def choice_rule(*choices: str, **kw: Any) -> Rule:
    return Rule(("str",), choices=choices, example=choices[0], **kw)


def list_rule(item: Rule | None = None, length: int | Derived | None = None, **kw: Any) -> Rule:
    """A list of ``length`` entries (the files' length when None) of ``item`` (the files' kind when None)."""
    return Rule(("list",), item=item, length=length, **kw)


def count_rule(low: int, most: int, what: str, **kw: Any) -> Rule:
    """An integer count >= ``low``, sane up to ``most``: ``what`` says why no real run goes beyond it."""
    return int_rule(low, sane_high=most, sane_why=what, **kw)


def _per_class(get: Lookup) -> tuple[float, str] | None:
    """The length of a list with one entry per class: ``data.num_classes`` of the config being checked."""
    classes = get("data.num_classes")
    if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 1:
        return classes, f"one per class: data.num_classes is {classes}"
    return None


#: one entry per class, the ``length`` of ``data.class_names`` (and of any per-class list a forker adds)
PER_CLASS = Derived(_per_class)

#: ``torch.onnx._constants.ONNX_MAX_OPSET`` where torch does not say (torch 2.14: 23). torch's exporters take
#: nothing newer: the TorchScript one fails with a 110-line graph dump, the dynamo one writes opset 18 instead.
FALLBACK_MAX_OPSET = 23


def _newest_opset(get: Lookup) -> tuple[float, str] | None:
    """The newest ONNX opset the installed torch exports to (read from torch when a number is checked)."""
    try:
        import torch
        from torch.onnx import _constants

        newest, source = int(_constants.ONNX_MAX_OPSET), f"torch {torch.__version__.split('+')[0]}'s exporter"
    except (ImportError, AttributeError):  # torch moved its private constant: this project's own fallback
        newest, source = FALLBACK_MAX_OPSET, "torch's exporter, as of torch 2.14"
    return newest, f"{newest}: the newest opset {source} writes"


#: Sane ceilings of counts, far above what any real run uses (each rule says so when it refuses a value):
#: a slip of the keyboard is refused before anything runs, instead of training "forever", hanging on a
#: dataset of 10**12 samples or asking the allocator for the impossible.
EPOCHS = 10**6  # a million epochs
STEPS = 10**9  # a billion optimiser steps: 3 years at 10 steps/s
SAMPLES = 10**8  # a hundred million samples: 9x SA-1B, the largest segmentation dataset
BATCH = 2**16  # images (or windows) per batch per device
WORKERS = 2**10  # worker processes or threads
SIDE = 2**16  # pixels along one side of an image or crop (JPEG and WebP stop at 65535)
CLASSES = 2**16  # the ids a 16-bit mask holds
#: the largest side an image is resized to by a size of reference (data.*_transform.short_side / long_side,
#: times the largest random scale): an 8192 x 8192 RGB image is 200 MB before it is cropped
REFERENCE_SIDE = 8192
REFERENCE_WHY = f"{REFERENCE_SIDE} pixels a side: every image would be resized to it; recipes use 512 to 2048"
#: the smallest normalisation std: the transforms divide pixels in [0, 1] (fractions of 255) by it, and a
#: std of 0.001, a quarter of one grey level, already turns one grey level into 4 std
MIN_STD = 1e-3


#: Ranges and choices the config files cannot express. A key may be a pattern (``*`` spans dots).


RULES: dict[str, Rule] = {
    "seed": int_rule(0, 2**32 - 1, null=True, note="null: no seeding"),  # seed_everything's range
    "train": Rule(("bool",)), "test": Rule(("bool",)),
    "split": choice_rule("val", "test"),
    "batch_size": count_rule(1, BATCH, f"{BATCH} images per batch: more than any device holds"),  # predict
    "num_workers": count_rule(0, WORKERS, f"{WORKERS} worker processes: more than any machine runs at once"),
    "overlay_alpha": real_rule(0, 1),
    "max_image_pixels": int_rule(1, null=True, note="null: no limit", example=89478485),
    "trainer.max_epochs": count_rule(1, EPOCHS, f"{EPOCHS} epochs: more than any real run trains; -1: no limit",
                                     also=(-1,), note="-1: no limit, null: Lightning's default", null=True),
    "trainer.min_epochs": count_rule(0, EPOCHS, f"{EPOCHS} epochs: more than any real run trains", null=True),
    "trainer.max_steps": count_rule(1, STEPS, f"{STEPS} steps: more than any real run takes; -1: no limit",
                                    also=(-1,), note="-1: no limit"),
    "trainer.accumulate_grad_batches": count_rule(1, BATCH, f"{BATCH} batches per step: more than any real run "
                                                            "accumulates", example=2),
    "trainer.check_val_every_n_epoch": int_rule(1, null=True),
    "trainer.log_every_n_steps": int_rule(1),
    "trainer.num_nodes": count_rule(1, 10**5, "100000 machines: more than any cluster gives one run"),
    "trainer.devices": Rule(("any",)),  # 1, -1, [0, 2], "auto": Lightning checks them
    "trainer.fast_dev_run": Rule(("bool", "int"), 0, sane_high=EPOCHS,
                                 sane_why=f"{EPOCHS} batches: a debug run, not a training"),
    "trainer.deterministic": Rule(("bool", "str"), choices=("warn",)),
    "trainer.limit_*_batches": real_rule(0, null=True), "trainer.overfit_batches": real_rule(0),
    "trainer.val_check_interval": real_rule(0, open_low=True, null=True, example=0.5),
    "trainer.gradient_clip_val": real_rule(0, null=True, example=1.0),
    "data.num_classes": count_rule(1, CLASSES, f"{CLASSES} classes: more ids than a 16-bit mask holds"),
    "data.ignore_index": int_rule(),
    "data.batch_size": count_rule(1, BATCH, f"{BATCH} images per batch: more than any device holds"),
    "data.eval_batch_size": count_rule(1, BATCH, f"{BATCH} images per batch: more than any device holds", null=True),
    "data.num_workers": count_rule(0, WORKERS, f"{WORKERS} worker processes: more than any machine runs at once"),
    "data.seed": int_rule(0, 2**32 - 1, null=True),
    "data.ohem_min_kept": int_rule(1),
    "data.preflight": choice_rule("sample", "full", "none"),
    # lists: their length comes from the files when they agree (betas 2, crop_size 2...), their entries' range
    # from here (a crop of 0 pixels, a beta of 1, a scale of 0 fail later with a traceback)
    # one name per class (PER_CLASS: an empty list is no table of names, null is), each short enough for a
    # table column or an overlay's legend (a 200,000-character name drew a 1,400,112 px wide legend)
    "data.class_names": list_rule(Rule(("str",), max_chars=100), PER_CLASS, min_length=1, unique=True, null=True),
    # numbers (true is no weight); a negative one is named by the loss (losses/class_weights.py), as for a file
    # (their count, and a file's content, are checked by options.check_options with the loss's own loader)
    "data.class_weights": Rule(("list", "str"), item=real_rule(), null=True,
                               note="a string: a .npy / .json / .txt file of weights"),
    "loss.main.weight": Rule(("list", "str"), item=real_rule(), null=True,
                             note="a string: a .npy / .json / .txt file of weights"),
    "data.train_transform.crop_size": list_rule(count_rule(1, SIDE, f"{SIDE} pixels a side: larger than any image")),
    "data.train_transform.scale_range": list_rule(real_rule(0, open_low=True)),
    "data.*_transform.mean": list_rule(real_rule(0, 1), 3, example=[0.485, 0.456, 0.406]),  # RGB, fractions of 255
    "data.*_transform.std": list_rule(real_rule(0, open_low=True, sane_low=MIN_STD, sane_why=(
        f"pixels in [0, 1] are divided by it; below {MIN_STD}, a quarter of one grey level, the images blow up: "
        "training diverges, eval scores noise")), 3, example=[0.229, 0.224, 0.225]),
    "data.*_set.image_size": list_rule(count_rule(1, SIDE, f"{SIDE} pixels a side: larger than any image")),
    "data.*_set.length": count_rule(0, SAMPLES, f"{SAMPLES} samples: more than any dataset has"),
    "data.*_set.seed": int_rule(0, 2**32 - 1),
    "data.*_set.max_image_pixels": int_rule(1, null=True, note="null: no limit", example=89478485),
    "data.train_transform.color_jitter": real_rule(0),
    # sizes of reference (seg_template/data/transforms.py): the side a random scale or the eval resize aims at
    # at least one cell of a stride-16 network; at most REFERENCE_SIDE (the published recipes use 512 to 2048)
    "data.*_transform.short_side": count_rule(16, REFERENCE_SIDE, REFERENCE_WHY, null=True, example=512),
    "data.*_transform.long_side": count_rule(16, REFERENCE_SIDE, REFERENCE_WHY, null=True, example=2048),
    "data.train_transform.scale_step": real_rule(0, open_low=True, null=True, example=0.1),
    "model.fuse_upsample": choice_rule("nearest", "bilinear"), "model.head_init": choice_rule("default", "hrnet"),
    "optimizer.no_weight_decay": list_rule(choice_rule("norm", "bias")),
    "scheduler.min_lr_mode": choice_rule("floor", "offset"),
    "model.width": count_rule(1, 2**13, "8192 channels: wider than any segmentation network"),
    "model.num_classes": count_rule(1, CLASSES, f"{CLASSES} classes: more ids than a 16-bit mask holds"),
    "model.align_corners": Rule(("bool",)),
    "loss.aux_weight": real_rule(0), "loss.memory_efficient": Rule(("bool",)),
    # thresh null: no OHEM selection (loss=focal); loss=ohem refuses it
    "loss.main.thresh": real_rule(0, 1, open_low=True, example=0.7, null=True),
    "loss.main.min_kept": int_rule(1, example=100000), "loss.min_kept": int_rule(1, example=100000),
    # gamma 1e6 makes (1 - p)^gamma 0 at every pixel: the focal term silently stops training
    "loss.main.gamma": real_rule(0, 10, example=2.0), "loss.main.smooth": real_rule(0, example=1.0),
    "loss.main.eps": real_rule(0, open_low=True, example=1e-7), "loss.main.per_image": Rule(("bool",)),
    "loss.main.reduction": choice_rule("mean", "sum", "none"),
    "loss.main.ignore_index": int_rule(),
    "optimizer.lr": real_rule(0), "optimizer.weight_decay": real_rule(0),
    "optimizer.betas": list_rule(real_rule(0, 1, open_high=True)),  # torch's range
    "scheduler.power": real_rule(0),
    "scheduler.warmup_steps": real_rule(0, sane_high=STEPS, sane_why=f"{STEPS} steps: more than any run takes"),
    "scheduler.warmup_ratio": real_rule(0, 1, open_low=True), "scheduler.min_lr_ratio": real_rule(0, 1),
    "inference.mode": choice_rule("whole", "slide"),
    "inference.window_batch": count_rule(1, BATCH, f"{BATCH} windows per batch: more than any device holds"),
    "inference.crop_size": list_rule(count_rule(1, SIDE, f"{SIDE} pixels a side: larger than any image")),
    "inference.stride": list_rule(count_rule(1, SIDE, f"{SIDE} pixels a side: larger than any image")),
    "inference.scales": list_rule(real_rule(0, open_low=True)),
    "ohem_thresh_range": list_rule(real_rule(0, 1, open_low=True)),  # the range loss.main.thresh is searched in
    "focal_gamma_range": list_rule(real_rule(0, 10)), "dice_weight_range": list_rule(real_rule(0, open_low=True)),
    "callbacks.nan_guard.patience": int_rule(1), "callbacks.nan_guard.check_gradients": Rule(("bool",)),
    "callbacks.model_checkpoint.every_n_train_steps": int_rule(0, note="0: only at epoch ends"),
    "callbacks.model_checkpoint.save_top_k": int_rule(-1),
    "callbacks.model_checkpoint.save_last": Rule(("bool", "str"), choices=("link",)),  # link: explained there
    "callbacks.model_checkpoint.mode": choice_rule("max", "min"),
    "callbacks.val_images.num_images": count_rule(1, 2**10, "1024 images: more than a grid shows"),
    "callbacks.val_images.every_n_epochs": int_rule(1),
    "callbacks.val_images.tile_size": count_rule(16, 2**12, "4096 pixels a tile: wider than any screen"),
    "callbacks.val_images.alpha": real_rule(0, 1),
    "callbacks.rich_progress_bar.plain_every_s": real_rule(0, open_low=True),
    "callbacks.early_stopping.patience": int_rule(0),
    # decay 1 never moves the average on from the first step's weights; update_every_n_steps=0 never updates it
    "callbacks.ema.decay": real_rule(0, 1, open_high=True), "callbacks.ema.use_buffers": Rule(("bool",)),
    "callbacks.ema.update_every_n_steps": count_rule(1, STEPS, f"{STEPS} steps: more than any run takes"),
    "callbacks.ema.update_starting_at_step": count_rule(0, STEPS, f"{STEPS} steps: more than any run takes",
                                                        null=True),
    "callbacks.ema.device": Rule(("str",), null=True),
    "export.atol": real_rule(0), "export.rtol": real_rule(0), "export.min_agreement": real_rule(0, 1),
    "export.threads": count_rule(0, WORKERS, f"{WORKERS} threads: more than any machine runs at once"),
    # 7: the oldest opset torch exports to; the newest is the installed torch's (read when a number is checked)
    "export.opset": int_rule(7, Derived(_newest_opset), null=True, example=17),
    # [batch, height, width] each
    "export.check_shapes": list_rule(list_rule(count_rule(1, SIDE, f"{SIDE}: more images or pixels than a check "
                                                                   "needs"), 3)),
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
    elif isinstance(value, int) and value.bit_length() > 256:  # str() refuses past 4300 digits
        text = f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
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
    """What ``rule`` accepts, in words: ``an integer >= 1 or -1 (-1: no limit)``, ``true or false``... A bound
    read from the config (:class:`Derived`) is left out unless ``rule`` was :func:`resolved` first; sane
    bounds are not said (see :func:`problem`)."""
    if _is_derived(rule):
        rule = resolved(rule)
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
    # a length read from the config is said by the note (``one per class: data.num_classes is 6``)
    count = f"{rule.length} " if rule.length is not None and "length" not in rule.derived else ""
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
    if (rule.length is not None and len(value) != rule.length) or len(value) < rule.min_length:
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


def problem(key: str, value: Any, rule: Rule, get: Lookup | None = None) -> str | None:
    """Why ``value`` breaks ``rule`` (``<key>=<value>: expected ...``), or None when it is fine. ``get`` reads the
    other options of the config being checked, for bounds that depend on them (:class:`Derived`)."""
    if value is None and rule.null:
        return None
    if _is_derived(rule):
        rule = resolved(rule, get)
    if "any" in rule.kinds:
        ok = not (isinstance(value, float) and not math.isfinite(value))
    elif isinstance(value, bool):
        ok = "bool" in rule.kinds
    elif isinstance(value, numbers.Real):  # numpy scalars too, for callers from Python
        ok = (("int" in rule.kinds and isinstance(value, numbers.Integral)) or (
            "real" in rule.kinds and _finite(value))) and _in_range(value, rule)
        insane = _insane(value, rule) if ok and value not in rule.also else None
        if insane is not None:
            return f"{key}={show(value)}: expected {insane}"
    elif isinstance(value, str):
        ok = "str" in rule.kinds and (not rule.choices or value in rule.choices)
        if ok and rule.max_chars is not None and len(value) > rule.max_chars:
            return (f"{key}={show(value)}: expected at most {rule.max_chars} characters, got {len(value)}"
                    f"{hint(key, rule.note, rule.example)}")
    elif isinstance(value, list | tuple):
        ok = "list" in rule.kinds
        culprit = _list_culprit(value, rule) if ok else _FINE
        insane = _insane_entry(culprit, rule) if culprit is not _FINE else None
        if insane is not None:  # an entry of the right kind and range, but no real value: said with why
            return f"{key}={show(value)}: expected each entry {insane}, got {show(culprit)}"
        if culprit is not _FINE:
            return f"{key}={show(value)}: expected {describe(rule)}{_got(culprit, value, rule)}" + hint(
                key, rule.note, rule.example)
        if ok and rule.unique and _duplicates(list(value)):
            return (f"{key}={show(value)}: expected distinct names, but {_duplicates(list(value))} (the metrics "
                    "would merge them into one column)")
    else:
        ok = False
    if ok:
        return None
    return f"{key}={show(value)}: expected {describe(rule)}{hint(key, rule.note, rule.example)}"


#: no integer option of this project means anything beyond 64 bits (numpy, torch and C take no more)
INT64 = 2**63


def _finite(value: Any) -> bool:
    """Whether the number ``value`` is finite (an integer too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _in_range(value: Any, rule: Rule) -> bool:
    """Whether the number ``value`` lies in ``rule``'s range (or is one of its special values, ``also``)."""
    if value in rule.also:
        return True
    low_bad = rule.low is not None and (value <= rule.low if rule.open_low else value < rule.low)
    high_bad = rule.high is not None and (value >= rule.high if rule.open_high else value > rule.high)
    return not (low_bad or high_bad)


def _insane(value: Any, rule: Rule) -> str | None:
    """What a number beyond ``rule``'s sane bounds (or 64 bits) should have been, with why; None when fine."""
    why = f" ({rule.sane_why})" if rule.sane_why else ""
    if rule.sane_low is not None and value < rule.sane_low:
        return f"at least {_number(rule.sane_low)}{why}"
    if rule.sane_high is not None and value > rule.sane_high:
        return f"at most {_number(rule.sane_high)}{why}"
    if isinstance(value, numbers.Integral) and not -INT64 <= value < INT64:
        return "an integer that fits in 64 bits (below 2**63)"
    return None


def _entry_rule(culprit: Any, rule: Rule) -> Rule | None:
    """The rule of the entry ``culprit`` of a list under ``rule`` (an entry of an entry for lists of lists)."""
    item = rule.item
    while item is not None and "list" in item.kinds and item.item is not None and not isinstance(culprit, list):
        item = item.item
    return item


def _insane_entry(culprit: Any, rule: Rule) -> str | None:
    """:func:`_insane` of a list entry of the right kind and range (``1e-40`` in a std > 0), else None."""
    item = _entry_rule(culprit, rule)
    if item is None or isinstance(culprit, bool) or not isinstance(culprit, numbers.Real):
        return None
    kind_ok = "real" in item.kinds or ("int" in item.kinds and isinstance(culprit, numbers.Integral))
    return _insane(culprit, item) if kind_ok and _finite(culprit) and _in_range(culprit, item) else None


def _got(culprit: Any, value: list | tuple, rule: Rule) -> str:
    """``, got <what>``: the part of the list ``value`` that breaks ``rule`` (see :func:`_list_culprit`)."""
    if culprit is value:  # a wrong length: said when the length came from another option (it is not in words)
        return f", got {len(value)} entries" if "length" in rule.derived or len(value) < rule.min_length else ""
    item = _entry_rule(culprit, rule)
    if isinstance(culprit, str) and item is not None and item.max_chars is not None and len(culprit) > item.max_chars:
        return f", got one of {len(culprit)} characters ({show(culprit, 30)}): at most {item.max_chars} each"
    got = f", got {show(culprit)}"
    if isinstance(culprit, int | float) and rule.item and rule.item.kinds == ("str",):
        got += " (quote a name that reads as a number: '1')"
    return got


def hint(key: str, note: str, example: Any) -> str:
    """`` (note; e.g. key=example)``, either part left out when empty."""
    parts = [note] if note else []
    if example is not None:
        parts.append(f"e.g. {key}={example if isinstance(example, str) else show(example, 40)}")  # as typed
    return f" ({'; '.join(parts)})" if parts else ""
