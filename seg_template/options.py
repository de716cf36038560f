"""Typed options: every option is checked once, the same way, before a task builds anything.

Where the rules come from:

- **the project's own config files.** :func:`schema` scans ``configs/**/*.yaml`` (once per process) and records,
  for every key at its composed path (``configs/inference/slide.yaml`` -> ``inference.*``, a ``# @package``
  header wins: ``_global_`` -> top level), the kinds of the literal values the files give it: bool, int,
  real, str, list, mapping, null (an interpolation tells nothing). A key whose files hold only booleans must
  be a bool (``inference.bounded=flase`` is refused instead of becoming True); only integers -> an int (not a
  bool, a string or 1.5); numbers with a float among them -> a number. null is accepted where a file writes
  null. A forker's new option is covered by writing it in a YAML file: ``my_flag: false`` makes it a bool,
  ``3`` an int, ``3.0`` a number. A key whose files hold only lists must be a list (or null where a file
  writes null), of the length every file gives it when they agree on one of 2 or more (``optimizer.betas``
  2, ``crop_size`` 2: a list of one, like ``inference.scales: [1.0]``, is taken as a default, not a size),
  and its entries keep their kind (numbers, integers, strings), one level down for lists of lists
  (``export.check_shapes``: each a list of 3 integers; the outer length is never fixed).
- **the keys themselves** (seg_template/option_keys.py): a key that no config file writes is refused, naming
  the closest real key, unless the ``_target_`` of its node takes it (``+optimizer.amsgrad=true``).
- **:data:`RULES`**, what types cannot say: ranges (``data.batch_size >= 1``, list entries: ``optimizer.betas``
  in [0, 1)), choices (``data.preflight``), options the files do not write (``trainer.accumulate_grad_batches``)
  and the few whose files show fewer kinds than they take (``trainer.devices``, ``data.class_weights``). A list
  rule without a length or entry rule takes them from the files. Counts have sane ceilings no real run
  reaches (``trainer.max_epochs`` 10**6, ``data.*_set.length`` 10**8, batch sizes 65536...), said with the
  reason when broken; some bounds are read from the config being checked or from torch
  (``data.class_names``: one per class, ``export.opset`` up to torch's newest): seg_template/option_rules.py.
- everywhere: no float may be NaN or infinite (no option of this project means anything at ±inf), no integer
  may need more than 64 bits, and no string may start with ``~``: nothing expands it here
  (``paths.log_dir='~/x'`` made a folder named ``~`` in the current folder), so ``$HOME/x`` is asked for.
- **the class weights the loss will read** (``loss.main.weight``, usually ``${data.class_weights}``): for a
  task that builds the loss (:data:`LOSS_TASKS`), :func:`check_options` reads them with the loss's own loader
  (seg_template/losses/class_weights.py) once the options are fine, so that a file of 5 weights for 6
  classes, a folder or an unreadable file is named before the model is built.

:func:`check_options` checks a composed config (each task calls it first); :func:`require` checks one value
for constructors called from Python; :func:`positive_int` & co. are the same rules as ``argparse`` types.
A problem reads ``<key>=<value>: expected <what> (e.g. <key>=<example>)``. The scan lives in
seg_template/option_schema.py, the rule language, :data:`RULES` and the wording in seg_template/option_rules.py.
Nothing heavy is imported here (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from seg_template.errors import ConfigError
from seg_template.option_keys import unknown_keys
from seg_template.option_rules import INT64, NUMERIC, RULES, Lookup, Rule, describe, int_rule, problem, show
from seg_template.option_schema import Seen, schema
from seg_template.paths import CONFIG_DIR

__all__ = ["RULES", "Rule", "check_class_names", "check_class_weights", "check_options", "home_problem",
           "int_at_least", "lookup", "non_negative_int", "positive_int", "problems", "require", "rule_for", "schema",
           "seed_int"]


def inferred_rule(seen: Seen, entry: bool = False) -> Rule | None:
    """The type a key's file values imply, or None when they imply none (mappings, mixes, and strings: a
    string option may well be given a number, ``name=2024``; a list ``entry`` of strings must stay one)."""
    kinds = seen.kinds - {"null"}
    if kinds == {"bool"}:
        found = ("bool",)
    elif kinds == {"int"}:
        found = ("int",)
    elif kinds and kinds <= NUMERIC:
        found = ("real",)
    elif kinds == {"str"} and entry:
        found = ("str",)
    elif kinds == {"list"}:
        item = inferred_rule(seen.item, entry=True) if seen.item is not None else None
        return Rule(("list",), null="null" in seen.kinds, example=seen.example, length=_fixed_length(seen),
                    item=item)
    else:
        return None
    return Rule(found, null="null" in seen.kinds, example=seen.example)


def _fixed_length(seen: Seen) -> int | None:
    """The length every file gives a key's lists when they agree on one of 2 or more and hold no lists:
    ``[H, W]``, ``[min, max]``; a list of one (``scales: [1.0]``), of lists or of mappings (``loss.main.terms``)
    is a collection that grows."""
    nested = seen.item is not None and bool(seen.item.kinds & {"list", "mapping"})
    return next(iter(seen.lengths)) if len(seen.lengths) == 1 and min(seen.lengths) >= 2 and not nested else None


def rule_for(key: str, config_dir: Path | None = None) -> Rule | None:
    """The rule of ``key``: :data:`RULES` (nullable also where a file writes null), else what the files imply."""
    seen = schema(CONFIG_DIR if config_dir is None else config_dir).get(key)
    rule = RULES.get(key) or next((r for p, r in RULES.items() if "*" in p and fnmatch.fnmatchcase(key, p)), None)
    if rule is None:
        return inferred_rule(seen) if seen is not None else None
    if seen is None:
        return rule
    if "list" in rule.kinds:  # the length and the entries' kind the files give, where the table says none
        rule = _with_files_shape(rule, inferred_rule(dataclasses.replace(seen, kinds={"list"})))
    example = rule.example
    if example is None and seen.example is not None and problem(key, seen.example, rule) is None:
        example = seen.example
    return dataclasses.replace(rule, null=rule.null or "null" in seen.kinds, example=example)


def _with_files_shape(rule: Rule, files: Rule | None) -> Rule:
    """``rule`` with the length and entry rule of ``files`` (what the files imply) where it has none; entry
    rules of lists of lists are merged one level down the same way."""
    if files is None:
        return rule
    item = rule.item
    if item is None:
        item = files.item
    elif "list" in item.kinds and files.item is not None and "list" in files.item.kinds:
        item = _with_files_shape(item, files.item)
    return dataclasses.replace(rule, length=rule.length if rule.length is not None else files.length, item=item)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every option under ``node``, containers first then their content, as plain
    Python values. Interpolations are skipped (their source is checked where it is written), and so are
    values that cannot be resolved here (``???``, ``${hydra:...}`` outside a Hydra run)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}.{key}" if isinstance(key, str) and prefix else f"{prefix}[{key}]" if prefix else str(key)
        if path == "hydra" or OmegaConf.is_interpolation(node, key):
            continue
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - a missing value or an unresolvable one: the task names it when used
            continue
        if isinstance(value, DictConfig | ListConfig):
            plain: Any = {}
            if isinstance(value, ListConfig):
                try:
                    plain = OmegaConf.to_container(value, resolve=True)
                except Exception:  # noqa: BLE001 - an entry that does not resolve: the walk below skips it alone
                    plain = None
            if plain is not None:
                yield path, plain
            yield from _leaves(value, path)
        else:
            yield path, value


#: required values (``???``) that the tasks ask for themselves, with the command that gives them
_ASKED_BY_THE_TASK = {"ckpt_path", "input"}


def missing_values(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys under ``node`` whose value is ``???`` (OmegaConf's "required, not set"), in config order.
    Interpolations to them are not listed: the key they point to is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}.{key}" if isinstance(key, str) and prefix else f"{prefix}[{key}]" if prefix else str(key)
        if path == "hydra" or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            yield path
            continue
        value = node._get_node(key)  # the node itself: nothing is resolved
        if isinstance(value, DictConfig | ListConfig) and not value._is_none():
            yield from missing_values(value, path)


def problems(cfg: Any, config_dir: Path | None = None) -> list[str]:
    """Every problem of the composed config ``cfg`` (a ``DictConfig``), in config order."""
    table = schema(CONFIG_DIR if config_dir is None else config_dir)
    get = lookup(cfg)
    found = unknown_keys(cfg, table)  # first: a mistyped key explains the errors that may follow
    found += [f"{key}: a required value ('???' in its config) that is not set: give it, e.g. {key}=<value>"
              + (f" (or `{key.split('.')[1]}: null` in the data config for no such split)"
                 if re.fullmatch(r"data\.\w+_set\._target_", key) else "")
              for key in missing_values(cfg) if key not in _ASKED_BY_THE_TASK]
    found += _split_problems(get)
    found += _base_order_problems(CONFIG_DIR if config_dir is None else config_dir)
    for key, value in _leaves(cfg, ""):
        rule = rule_for(key, config_dir)
        if isinstance(value, dict):  # a mapping where a value is expected: checked as one
            found += [f"{key}: expected {describe(rule)}, got a mapping"] if rule and "any" not in rule.kinds else []
            continue
        text = problem(key, value, rule, get) if rule is not None else None
        if text is None and isinstance(value, float) and not math.isfinite(value):
            text = f"{key}={show(value)}: expected a finite number"
        if text is None and isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            text = f"{key}={show(value)}: expected an integer that fits in 64 bits (below 2**63)"
        if text is None and isinstance(value, str) and value.startswith("~"):
            text = home_problem(key, value)
        if text is not None:
            found.append(text)
    return found


def _base_order_problems(config_dir: Path) -> list[str]:
    """A chosen option file (``data=mine``) that lists ``_self_`` before a base it starts from
    (``/data_base@_here_``): Hydra then lets the base's values replace the file's own, without a word."""
    from hydra.core.hydra_config import HydraConfig

    from seg_template.option_schema import self_before_base

    if not HydraConfig.initialized():
        return []
    found = []
    for group, choice in HydraConfig.get().runtime.choices.items():
        file = Path(config_dir) / str(group) / f"{choice}.yaml"
        if not choice or str(group).startswith("hydra") or not file.is_file():
            continue
        base = self_before_base(file)
        if base is not None:
            found.append(f"{group}={choice}: configs/{group}/{choice}.yaml lists _self_ before {base}, so the "
                         f"base's values replace the file's own: move `_self_` after it in its defaults list")
    return found


def _split_problems(get: Lookup) -> list[str]:
    """A data split that its config builds outright (a ``_target_`` without ``_partial_: true``): Hydra would
    build the dataset before the DataModule could give it its transform, and fail on the first argument the
    file does not give, without naming the cause."""
    found = []
    for split in ("train", "val", "test"):
        node = get(f"data.{split}_set")
        if isinstance(node, Mapping) and "_target_" not in node:  # `++data.test_set.split=test` over a null split
            found.append(f"data.{split}_set holds only {', '.join(map(str, node)) or 'nothing'}, no _target_: a split "
                         f"names its dataset class; write the whole split in the data config (as configs/"
                         f"data_base.yaml's {split}_set), or data.{split}_set=null for none")
        elif isinstance(node, Mapping) and node.get("_partial_") is not True:
            found.append(f"data.{split}_set: its _target_ is built outright, but the DataModule calls each split "
                         f"with transform= and ignore_index=: write `_partial_: true` under it (data configs "
                         f"start from configs/data_base.yaml, `defaults: [/data_base@_here_, _self_]`, which does)")
    return found


def lookup(cfg: Any) -> Lookup:
    """``get(key)``: the value of the dotted ``key`` in ``cfg`` (resolved), or None when it is not set or does
    not resolve; how a rule reads another option (``data.class_names`` reads ``data.num_classes``)."""
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None)
        except Exception:  # noqa: BLE001 - a value that does not resolve is named under its own key
            return None

    return get


def home_problem(key: str, value: str) -> str:
    """The problem of a string option that starts with ``~``: no option expands it (a path would name a folder
    called ``~`` in the current folder), so the message asks for ``$HOME/...`` or an absolute path."""
    user, slash, rest = value[1:].partition("/")
    instead = f"$HOME{slash}{rest} or an absolute path" if not user else "an absolute path"
    return f"{key}={show(value)}: starts with '~', which is not expanded here: write {instead}"


def check_options(cfg: Any, config_dir: Path | None = None) -> None:
    """Raise one ``ConfigError`` listing every option of ``cfg`` of the wrong type, out of range or NaN (up to
    10; ``config_dir``: where the schema is read, default the project's ``configs/``); then, when they are
    all fine, the loader's own error (``ConfigError`` / ``MissingFileError`` naming the file) for class weights
    the loss cannot use (:func:`check_class_weights`)."""
    found = problems(cfg, config_dir)
    if found:
        more = f"\n  ... and {len(found) - 10} more" if len(found) > 10 else ""
        raise ConfigError("\n  ".join(found[:10]) + more)
    check_class_weights(cfg)


#: the tasks that build the loss (``build.build_module``), and so read its class weights (``task_name``);
#: eval checks its recipe with ``recipe.check_recipe_options``, which may call :func:`check_class_weights` too
LOSS_TASKS = ("train", "eval")


def check_class_weights(cfg: Any) -> None:
    """Read the class weights the loss of ``cfg`` will take (``loss.main.weight``, resolved: usually
    ``${data.class_weights}``, and an entry's own ``class_weights`` in ``loss.main.terms`` or ``loss.aux``)
    with the loss's own loader, one per ``data.num_classes``, when the task builds
    the loss: a wrong count, a folder, an unreadable file or a value float32 cannot hold is named (with the
    file) before the model is built, not after. Other tasks never read them (a recipe's weights file may be
    on another machine; predict and export need no loss)."""
    get = lookup(cfg)
    if get("task_name") not in LOSS_TASKS:
        return
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from seg_template.losses.class_weights import KEYS, load_class_weights

    classes = get("data.num_classes")
    classes = classes if isinstance(classes, int) and not isinstance(classes, bool) else None
    # the main term's (usually data.class_weights), and those a sum's entry or the aux term gives its own
    found = [(KEYS, get("loss.main.weight"))]
    terms = get("loss.main.terms")
    for i, entry in enumerate(terms if isinstance(terms, ListConfig) else ()):
        if isinstance(entry, DictConfig) and "class_weights" in entry:
            found.append((f"loss.main.terms[{i}].class_weights", entry.get("class_weights")))
    aux = get("loss.aux")
    if isinstance(aux, DictConfig) and "class_weights" in aux:
        found.append(("loss.aux.class_weights", aux.get("class_weights")))
    for keys, weight in found:
        if weight is not None:
            if isinstance(weight, ListConfig):
                weight = OmegaConf.to_container(weight, resolve=True)
            load_class_weights(weight, num_classes=classes, keys=keys)


def require(key: str, value: Any, rule: Rule | None = None) -> Any:
    """``value`` if it is a valid ``key`` (``rule``, default :func:`rule_for`), else a ``ConfigError``: the
    constructors' check, for code that builds our classes from Python rather than from a config."""
    rule = rule or rule_for(key)
    if rule is None:
        raise KeyError(f"no rule for the option {key!r} in seg_template/options.py or configs/")
    text = problem(key, value, rule)  # a bound read from the config (Derived) is left out: there is none here
    if text is not None:
        raise ConfigError(text)
    return value


def check_class_names(names: Any, key: str = "data.class_names") -> None:
    """A ``ConfigError`` when two classes share a name (their metrics would go to one column)."""
    require(key, list(names) if names is not None else None, RULES["data.class_names"])


def _argparse_type(rule: Rule, name: str) -> Callable[[str], int]:
    """An argparse ``type=`` for integers under ``rule``; argparse prints its message after the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or problem("", value, rule) is not None:
            raise argparse.ArgumentTypeError(f"expected {describe(rule)}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse ``type=`` for an integer >= ``low``: ``--limit -1`` is a usage error naming the option
    (``argument --limit: expected an integer >= 1, got '-1'``), as ``--limit abc`` is."""
    return _argparse_type(int_rule(low), f"int_at_least_{low}")


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = _argparse_type(int_rule(0, 2**32 - 1), "seed_int")  # the range of the seed option
