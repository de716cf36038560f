"""What the project's config files write at each key for Hydra's ``instantiate``: the allow-list of the
file-config door (``seg_template/file_config.py``).

:func:`special_values` reads every ``configs/**/*.yaml`` once and maps each key path that holds one of
Hydra's special keys (``_target_``, ``_partial_``, ``_args_``, ``_recursive_``, ``_convert_``...) to the
values written there: ``data.val_transform._target_`` -> ``seg_template.data.transforms.eval_transform``;
list items share one path (``loss.terms[]._target_``). Each file sits at its package (``configs/loss/ce.yaml``
at ``loss``; a ``# @package`` header wins, so an experiment's ``data.train_set._target_`` counts at that
path). A key whose whole value is a reference to a node (``test_set: ${data.val_set}``) may hold what that
node may hold. A fork's new YAML extends the list; nothing else does.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seg_template.config_paths import Parts, absolute, is_special, normalised, walk, whole_reference
from seg_template.paths import CONFIG_DIR

TARGET = "_target_"


def value_token(value: Any) -> str:
    """How a special key's value is compared: its JSON text (``true`` and ``1`` differ)."""
    return json.dumps(value, sort_keys=True, default=str)


@functools.cache
def special_values(config_dir: Path = CONFIG_DIR) -> Mapping[str, frozenset[str]]:
    """``{normalised key path: {value_token(value), ...}}`` for every special key the YAML files under
    ``config_dir`` write (interpolated values are not names and do not count). Read once per process."""
    import yaml

    from seg_template.option_schema import packages_of

    found: dict[str, set[str]] = {}
    aliases: list[tuple[str, str]] = []
    for file in sorted(Path(config_dir).rglob("*.yaml")):
        try:
            content = yaml.safe_load(file.read_text())
            packages = packages_of(file, Path(config_dir))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # composing that config names the problem
            continue
        for package in packages:
            base: Parts = ("hydra",) if package is None else tuple(package.split(".")) if package else ()
            _walk_file(content, base, found, aliases)
    # test_set: ${data.val_set} may hold what data.val_set may; a chain of such references needs one round
    # per link, and a reference to its own parent (a config that cannot resolve anyway) stops there
    for _ in range(len(aliases)):
        grown = False
        for alias, target in aliases:
            for path in list(found):
                if path.startswith(target) and path[len(target):len(target) + 1] in (".", "["):
                    values = found.setdefault(alias + path[len(target):], set())
                    if not values >= found[path]:
                        values |= found[path]
                        grown = True
        if not grown:
            break
    return {path: frozenset(values) for path, values in found.items()}


def _walk_file(content: Any, base: Parts, found: dict[str, set[str]], aliases: list[tuple[str, str]]) -> None:
    """Record the special values and the whole references of one file's ``content`` placed at ``base``."""
    for parts, value, _ in walk(content):
        if parts[0] == "defaults" and not base:
            continue  # a primary config's defaults list is not config
        where = (*base, *parts)
        if is_special(parts[-1]) and not (isinstance(value, str) and "${" in value):
            found.setdefault(normalised(where), set()).add(value_token(value))
        elif isinstance(value, str) and (key := whole_reference(value)) is not None:
            target = absolute(key, where)
            if target:
                aliases.append((normalised(where), normalised(target)))


def allowed_at(where: Parts, config_dir: Path = CONFIG_DIR) -> frozenset[str]:
    """The value tokens the config files write at the special key ``where`` (empty: none, anywhere)."""
    return special_values(Path(config_dir)).get(normalised(where), frozenset())


def targets_by_node(config_dir: Path = CONFIG_DIR) -> dict[str, frozenset[str]]:
    """``{top-level node: every _target_ string the config files write inside it}``."""
    out: dict[str, set[str]] = {}
    for path, tokens in special_values(Path(config_dir)).items():
        if path == TARGET or path.endswith(f".{TARGET}"):
            names = {json.loads(t) for t in tokens}
            out.setdefault(path.split(".", 1)[0].split("[", 1)[0], set()).update(
                n for n in names if isinstance(n, str))
    return {node: frozenset(names) for node, names in out.items()}


def allowed_targets(config_dir: Path = CONFIG_DIR) -> frozenset[str]:
    """Every ``_target_`` string written in the YAML files under ``config_dir``, whichever key it is at."""
    return frozenset().union(*targets_by_node(Path(config_dir)).values())
