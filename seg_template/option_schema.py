"""The option schema read from the project's own config files: which kinds of values each key is given.

:func:`schema` scans ``configs/**/*.yaml`` and records, for every key at its composed path
(``configs/inference/slide.yaml`` -> ``inference.bounded``; a ``# @package`` header wins, ``_global_`` is the top
level; ``configs/train.yaml`` is the top level; a file another file's defaults list places with ``@<package>``
counts there too), the kinds of the literal values the files give it (bool, int,
real, str, list, mapping, null), the lengths of its lists and what their entries hold (recursively, for lists
of lists), and the ``_target_`` of the node it sits in. An interpolation tells nothing, except that a key the
files only write as a whole reference to another (``${data.train_set.x}``, ``${..x}``) takes that key's kinds.
Hydra's own node and the defaults lists are left out. seg_template/options.py turns the kinds into types, and
seg_template/option_keys.py the keys into the set of options that exist.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_template.config_paths import absolute, whole_reference
from seg_template.paths import CONFIG_DIR


@dataclass
class Seen:
    """What the config files give one key: the kinds of its values, a first example, the lengths of its lists
    and (``item``) what their entries hold, and ``targets``: the ``_target_`` of the node holding the key in
    each file that writes it (None where that file writes no literal ``_target_`` there: an experiment's
    ``model.pretrained`` counts for any model)."""

    kinds: set[str] = field(default_factory=set)
    example: Any = None
    lengths: set[int] = field(default_factory=set)
    item: Seen | None = None
    targets: set[str | None] = field(default_factory=set)
    #: the keys this one follows where a file writes it as a whole reference (``${data.train_set.x}``)
    follows: set[str] = field(default_factory=set)


def kind_of(value: Any) -> str | None:
    """The kind of a literal config value; None for an interpolation or ``???`` (they tell nothing)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "real"
    if value is None:
        return "null"
    if isinstance(value, str):
        return None if "${" in value or value == "???" else "str"
    if isinstance(value, Mapping):
        return "mapping"
    return "list" if isinstance(value, list | tuple) else None


def package_of(file: Path, config_dir: Path) -> str | None:
    """The dotted package a config file's keys land in ("" = top level), or None for Hydra's own configs.

    A ``# @package`` line in the file's first comment block wins; otherwise a file in a group folder lands in
    the group (``trainer/cpu.yaml`` -> ``trainer``), a file at the top (``train.yaml``) at the top level."""
    group = file.relative_to(config_dir).parent.as_posix()
    group = "" if group == "." else group.replace("/", ".")
    for line in file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            break
        found = re.match(r"#\s*@package\s+(\S+)", line)
        if found:
            package = found.group(1).replace("_group_", group)
            group = "" if package == "_global_" else package.removeprefix("_global_.")
            break
    return None if group == "hydra" or group.startswith("hydra.") else group


@functools.lru_cache(maxsize=4)
def _placements(config_dir: Path) -> dict[Path, tuple[str, ...]]:
    """``{file: (package, ...)}``: where the defaults lists of other files place a file with a package of their
    own (``configs/data/folder.yaml``'s ``- /data_folder_split@test_set`` puts ``data_folder_split.yaml`` at
    ``data.test_set`` as well as at its header's ``data.val_set``)."""
    found: dict[Path, set[str]] = {}
    for file in config_dir.rglob("*.yaml"):
        try:
            package = package_of(file, config_dir)
        except (OSError, UnicodeDecodeError):  # composing that config names the problem
            continue
        for entry in defaults_entries(file) if package is not None else []:
            if "@" not in entry:
                continue
            name, _, at = entry.partition("@")
            included = (config_dir / name.lstrip("/") if name.startswith("/") else file.parent / name)
            included = included.with_name(included.name + ".yaml")
            if at == "_here_":
                place = package
            elif at.startswith("_global_"):
                place = at.removeprefix("_global_").lstrip(".")
            else:
                place = f"{package}.{at}" if package else at
            found.setdefault(included, set()).add(place)
    return {file: tuple(sorted(places)) for file, places in found.items()}


def defaults_entries(file: Path) -> list[str]:
    """The plain entries of ``file``'s defaults list (``_self_``, ``/data_base@_here_``; group choices such as
    ``class_weights: null`` left out); ``[]`` when it has none or cannot be read (composing it names that)."""
    import yaml

    try:
        content = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    entries = content.get("defaults") if isinstance(content, Mapping) else None
    return [e for e in entries if isinstance(e, str)] if isinstance(entries, list) else []


def self_before_base(file: Path) -> str | None:
    """The base (``/data_base@_here_``) that ``file``'s defaults list puts after ``_self_``, or None: Hydra then
    lets that base's values replace the file's own, without a word."""
    entries = defaults_entries(file)
    bases = [e for e in entries if e.startswith("/")]
    late = "_self_" in entries and bases and entries.index("_self_") < entries.index(bases[-1])
    return bases[-1] if late else None


def packages_of(file: Path, config_dir: Path) -> list[str | None]:
    """Every package ``file``'s keys land in: its own (:func:`package_of`) and the places other files' defaults
    lists put it with ``@<package>``."""
    own = package_of(file, config_dir)
    return [own, *(p for p in _placements(Path(config_dir)).get(file, ()) if p != own)]


def literal_target(node: Mapping) -> str | None:
    """The ``_target_`` a mapping names, or None (none, or an interpolation: it names nothing yet)."""
    target = node.get("_target_")
    return target if isinstance(target, str) and "${" not in target else None


def _record_value(seen: Seen, value: Any) -> None:
    kind = kind_of(value)
    if kind is None:
        return
    seen.kinds.add(kind)
    if seen.example is None and kind not in ("null", "mapping"):
        seen.example = value
    if kind == "list":
        seen.lengths.add(len(value))
        seen.item = seen.item or Seen()
        for entry in value:
            _record_value(seen.item, entry)


def _record(table: dict[str, Seen], prefix: str, node: Mapping, root: bool = False) -> None:
    target = literal_target(node)
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if (root and key == "defaults") or path == "hydra" or path.startswith("hydra."):
            continue  # a file's defaults list is not an option; Hydra's own node is Hydra's business
        seen = table.setdefault(path, Seen())
        seen.targets.add(target)
        _record_value(seen, value)
        followed = whole_reference(value) if isinstance(value, str) else None
        place = absolute(followed, tuple(path.split("."))) if followed else None
        if place:
            seen.follows.add(".".join(map(str, place)))
        if kind_of(value) == "mapping":
            _record(table, path, value)


@functools.lru_cache(maxsize=4)
def schema(config_dir: Path = CONFIG_DIR) -> dict[str, Seen]:
    """``{dotted key: Seen}`` over every YAML file under ``config_dir``. Hydra's own node (``hydra.*``) and
    the files' ``defaults`` lists are left out."""
    from omegaconf import OmegaConf

    config_dir = Path(config_dir)
    loaded = {file: OmegaConf.to_container(OmegaConf.load(file), resolve=False)
              for file in config_dir.rglob("*.yaml")}
    # the options the primary configs pick by default (data: synthetic, model: small...)
    chosen = {f"{group}/{option}" for file, content in loaded.items() if file.parent == config_dir
              and isinstance(content, Mapping) for entry in content.get("defaults") or []
              if isinstance(entry, Mapping) for group, option in entry.items()}
    packages = {file: package_of(file, config_dir) for file in loaded}

    def order(file: Path) -> tuple[bool, bool, bool, str]:
        # examples come from the primary configs, then from each group's default option, its other options,
        # and last from the files that set keys of other groups (experiments, debug, the bases a group's
        # options start from, such as data_base.yaml)
        name = file.relative_to(config_dir).with_suffix("").as_posix()
        own = file.relative_to(config_dir).parent.as_posix().replace("/", ".")
        primary = file.parent == config_dir and packages[file] == ""
        return not primary, packages[file] != own, name not in chosen, name

    table: dict[str, Seen] = {}
    for file in sorted(loaded, key=order):
        content = loaded[file]
        for package in packages_of(file, config_dir):
            if package is None or not isinstance(content, Mapping):
                continue
            parts = package.split(".") if package else []
            for end in range(1, len(parts) + 1):  # the file's package is a node the files write too
                node = table.setdefault(".".join(parts[:end]), Seen())
                node.kinds.add("mapping")
                node.targets.add(None)
            _record(table, package, content, root=True)
    _take_followed_kinds(table)
    return table


def _take_followed_kinds(table: dict[str, Seen]) -> None:
    """A key the files only ever write as a reference to another (``data.val_set.lossy_masks:
    ${data.train_set.lossy_masks}``) takes the kinds, example and list shape of the key it follows: a value
    typed for it (``data.val_set.lossy_masks=flase``) is then checked like one typed for the other. Chains
    are followed one link per round."""
    for _ in range(8):
        changed = False
        for seen in table.values():
            if seen.kinds or not seen.follows:
                continue
            for key in sorted(seen.follows):
                other = table.get(key)
                if other is not None and other.kinds:
                    seen.kinds |= other.kinds
                    seen.lengths |= other.lengths
                    seen.example = seen.example if seen.example is not None else other.example
                    seen.item = seen.item or other.item
                    changed = True
        if not changed:
            return
