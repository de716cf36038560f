"""Typed options: every option is checked once, the same way, before a task builds anything.

Where the rules come from:

- **the project's own config files.** :func:`schema` scans ``configs/**/*.yaml`` (once per process) and records,
  for every key at its composed path (``configs/inference/slide.yaml`` -> ``inference.*``, a ``# @package``
  header wins: ``_global_`` -> top level), the kinds of the literal values the files give it: bool, int,
  real, str, list, mapping, null (an interpolation tells nothing). A key whose files hold only booleans must
  be a bool (``inference.bounded=flase`` is refused instead of becoming True); only integers -> an int (not a
  bool, a string or 1.5); numbers with a float among them -> a number. null is accepted where a file writes
  null. A forker's new option is covered by writing it in a YAML file: ``my_flag: false`` makes it a bool,
  ``3`` an int, ``3.0`` a number. Lists whose file values hold only numbers must hold numbers.
- **:data:`RULES`**, what types cannot say: ranges (``data.batch_size >= 1``), choices (``data.preflight``),
  options the files do not write (``trainer.accumulate_grad_batches``) and the few whose files show fewer
  kinds than they take (``trainer.devices``, ``trainer.fast_dev_run``).
- everywhere: no float may be NaN or infinite (no option of this project means anything at ±inf).

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from seg_template.errors import ConfigError
from seg_template.option_rules import NUMERIC, RULES, Rule, describe, hint, int_rule, problem, show
from seg_template.option_schema import Seen, schema
from seg_template.paths import CONFIG_DIR

__all__ = ["RULES", "Rule", "check_class_names", "check_options", "int_at_least", "non_negative_int",
           "positive_int", "problems", "require", "rule_for", "schema", "seed_int"]


def inferred_rule(seen: Seen) -> Rule | None:
    """The type a key's file values imply, or None when they imply none (strings, lists, mappings, mixes)."""
    kinds = seen.kinds - {"null"}
    if kinds == {"bool"}:
        found = ("bool",)
    elif kinds == {"int"}:
        found = ("int",)
    elif kinds and kinds <= NUMERIC:
        found = ("real",)
    else:
        return None
    return Rule(found, null="null" in seen.kinds, example=seen.example)


def rule_for(key: str, config_dir: Path | None = None) -> Rule | None:
    """The rule of ``key``: :data:`RULES` (nullable also where a file writes null), else what the files imply."""
    seen = schema(CONFIG_DIR if config_dir is None else config_dir).get(key)
    rule = RULES.get(key) or next((r for p, r in RULES.items() if "*" in p and fnmatch.fnmatchcase(key, p)), None)
    if rule is None:
        return inferred_rule(seen) if seen is not None else None
    if seen is None:
        return rule
    example = rule.example
    if example is None and seen.example is not None and problem(key, seen.example, rule) is None:
        example = seen.example
    return dataclasses.replace(rule, null=rule.null or "null" in seen.kinds, example=example)


def _entries_problem(key: str, value: list, seen: Seen) -> str | None:
    """A list whose file values hold only numbers (ints only) must hold numbers (ints): ``betas=[0.9,abc]``."""
    if not seen.entries or not seen.entries <= NUMERIC:
        return None
    kind = "int" if seen.entries == {"int"} else "real"
    # NaN / inf entries are named one by one by the walk (``key[i]=nan``)
    bad = [v for v in _flat_values(value) if isinstance(v, bool) or not isinstance(v, int | float)
           or (kind == "int" and not isinstance(v, int))]
    if not bad:
        return None
    what = "integers" if kind == "int" else "numbers"
    return f"{key}={show(value)}: expected a list of {what}, got {show(bad[0])}{hint(key, '', seen.example)}"


def _flat_values(values: Any) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list | tuple):
            yield from _flat_values(value)
        else:
            yield value


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


def problems(cfg: Any, config_dir: Path | None = None) -> list[str]:
    """Every problem of the composed config ``cfg`` (a ``DictConfig``), in config order."""
    found: list[str] = []
    table = schema(CONFIG_DIR if config_dir is None else config_dir)
    for key, value in _leaves(cfg, ""):
        rule = rule_for(key, config_dir)
        if isinstance(value, dict):  # a mapping where a value is expected: checked as one
            found += [f"{key}: expected {describe(rule)}, got a mapping"] if rule and "any" not in rule.kinds else []
            continue
        text = problem(key, value, rule) if rule is not None else None
        if text is None and isinstance(value, list) and key in table:
            text = _entries_problem(key, value, table[key])
        if text is None and isinstance(value, float) and not math.isfinite(value):
            text = f"{key}={show(value)}: expected a finite number"
        if text is not None:
            found.append(text)
    return found


def check_options(cfg: Any, config_dir: Path | None = None) -> None:
    """Raise one ``ConfigError`` listing every option of ``cfg`` of the wrong type, out of range or NaN (up to
    10; ``config_dir``: where the schema is read, default the project's ``configs/``)."""
    found = problems(cfg, config_dir)
    if found:
        more = f"\n  ... and {len(found) - 10} more" if len(found) > 10 else ""
        raise ConfigError("\n  ".join(found[:10]) + more)


def require(key: str, value: Any, rule: Rule | None = None) -> Any:
    """``value`` if it is a valid ``key`` (``rule``, default :func:`rule_for`), else a ``ConfigError``: the
    constructors' check, for code that builds our classes from Python rather than from a config."""
    rule = rule or rule_for(key)
    if rule is None:
        raise KeyError(f"no rule for the option {key!r} in seg_template/options.py or configs/")
    text = problem(key, value, rule)
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
