"""The one door for config that comes from a file: nothing a file says reaches Hydra's ``instantiate`` /
``get_class`` unless every ``_target_`` in it is one the project's own config files name.

A checkpoint's recipe and an exported ONNX file's metadata hold config nodes (``data``, ``model``, ``loss``)
that eval / predict / export instantiate. Loading the file with ``weights_only=True`` stops pickled code, but
not this: the recipe is data that becomes calls (``_target_: builtins.open`` with ``_args_: [file, w]``
truncates ``file``). So :func:`check_recipe` (and, for any other config read from a file,
:func:`check_file_config`) refuses the file before anything is built, with one message naming the file, the
key and the target, when it finds:

- a ``_target_`` that is not, character for character, one written in ``configs/**/*.yaml``
  (:func:`allowed_targets`; a fork's new YAML extends the list). Exact strings, not prefixes: Hydra's
  ``_locate`` walks attributes, so ``seg_template.cli.shutil.rmtree`` is ``shutil.rmtree``. A recipe's
  ``data`` / ``model`` / ``loss`` node may only hold the targets the config files write under that same
  node (:func:`targets_by_node`): a ``Trainer`` or a logger is a real target, but never part of a recipe;
- a ``_target_`` that is not a plain string (a number, a list, an interpolation ``${...}`` that would pick
  the target only when resolved), at any depth (dicts, lists, lists of dicts: a transform list);
- an interpolation that is not a plain reference to another key (``${oc.create:...}``, ``${oc.decode:...}``
  and other resolvers can build new nodes, targets included, when resolved); recipes hold only references;
- anything but plain config: dicts with str (or int) keys, lists, str / int / float / bool / None (a checkpoint may
  hold tensors), nested at most :data:`MAX_DEPTH` levels;
- for a recipe, ``choices`` (the config groups it was trained with) that are not plain option names: they
  become command-line options (``data=<name>``) in ``seg_template.recipe.recipe_argv``.

Hydra >= 1.3.4 also blocks a list of dangerous targets itself; this check does not rely on it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from seg_template.errors import CheckpointError
from seg_template.paths import CONFIG_DIR

TARGET = "_target_"
#: deeper nesting is refused: genuine recipes are ~6 levels deep, and OmegaConf recurses once per level
MAX_DEPTH = 64
_INTERPOLATION = re.compile(r"\$\{([^${}]*)\}")
#: a config group option as Hydra names it from ``configs/<group>/<name>.yaml`` (no path, quote or space)
_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_GROUP = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
_PLAIN = (str, int, float, bool, type(None))


@functools.cache
def targets_by_node(config_dir: Path = CONFIG_DIR) -> dict[str, frozenset[str]]:
    """``{top-level node: every _target_ string the YAML files under config_dir write inside it}``, each file
    placed at its package (``configs/loss/ohem.yaml`` -> ``loss``; a ``# @package`` header wins, so an
    experiment's ``data.train_set._target_`` counts for ``data``). Interpolated targets are not names and do
    not count. Read once per process."""
    import yaml

    from seg_template.option_schema import package_of

    found: dict[str, set[str]] = {}
    for file in sorted(Path(config_dir).rglob("*.yaml")):
        try:
            content = yaml.safe_load(file.read_text())
            package = package_of(file, Path(config_dir))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # composing that config names the problem
            continue
        for key, value, where, _ in _walk(content):
            if key == TARGET and isinstance(value, str) and "${" not in value:
                path = f"{package}.{where}" if package else where
                found.setdefault(path.split(".", 1)[0].split("[", 1)[0], set()).add(value)
    return {node: frozenset(targets) for node, targets in found.items()}


def allowed_targets(config_dir: Path = CONFIG_DIR) -> frozenset[str]:
    """Every ``_target_`` string written in the YAML files under ``config_dir``, whichever node it is in."""
    return frozenset().union(*targets_by_node(Path(config_dir)).values())


def _walk(config: Any) -> Iterator[tuple[Any, Any, str, int]]:
    """``(key, value, dotted path, depth)`` of every entry of ``config``, depth first in file order; a list
    item's key is its index. Iterative, and it stops descending past :data:`MAX_DEPTH` (the caller refuses
    that entry): a crafted file may nest deeper than Python's recursion limit."""
    stack: list[tuple[Any, Any, str, int]] = [(None, config, "", 0)]
    while stack:
        key, value, where, depth = stack.pop()
        if depth:
            yield key, value, where, depth
        if depth >= MAX_DEPTH:
            continue
        if isinstance(value, Mapping):
            children = [(k, v, f"{where}.{_shown(k)}" if where else _shown(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            children = [(i, v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))


def is_plain_reference(text: str) -> bool:
    """True when every interpolation in ``text`` only reads another key: ``${data.x}``, ``${..x}`` or
    ``${oc.select:data.x,default}`` (a scalar or list default); resolvers and nested interpolations are not."""
    for inner in _INTERPOLATION.findall(text):
        key = inner[len("oc.select:"):].split(",", 1)[0] if inner.startswith("oc.select:") else inner
        if ":" in key or not key.strip():
            return False
    return "${" not in _INTERPOLATION.sub("", text)


def _problem(key: Any, value: Any, where: str, depth: int, allowed: Collection[str]) -> str | None:
    """What is wrong with one entry of a file's config, or None."""
    if depth >= MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} levels deep (at {where})"
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        return f"has a key that is not a string ({type(key).__name__} {key!r}) (at {where})"
    if not isinstance(value, (Mapping, list, tuple, *_PLAIN)):
        return f"holds a {type(value).__name__}, not plain config (at {where})"
    if key == TARGET:
        if not isinstance(value, str):
            return f"has a _target_ that is not a name but a {type(value).__name__} ({value!r:.80}) (at {where})"
        if "${" in value:
            return f"picks its _target_ by interpolation ({value!r:.120}) (at {where})"
        if value not in allowed:
            return f"would call {_shown(value)[:200]} (at {where})"
    elif isinstance(value, str) and "${" in value and not is_plain_reference(value):
        return (f"has an interpolation that would build config when resolved ({value!r:.120}) (at {where}); "
                "a recipe holds only references to its own keys")
    return None


def check_file_config(config: Any, source: str, option: str = "ckpt_path", what: str = "a recipe",
                      allowed: Collection[str] | None = None) -> None:
    """Raise a ``CheckpointError`` naming ``option``, the file ``source``, the key and the target when the
    ``config`` read from that file (plain containers or an OmegaConf node) could call anything but the
    project's own targets (``allowed``: default :func:`allowed_targets`). See the module docstring."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    allowed = allowed_targets() if allowed is None else allowed
    if not isinstance(config, Mapping):
        _refuse(source, option, what, f"is a {type(config).__name__}, not a mapping of config nodes")
    for key, value, where, depth in _walk(config):
        problem = _problem(key, value, where, depth, allowed)
        if problem:
            _refuse(source, option, what, problem)


def check_recipe(recipe: Any, source: str, option: str = "ckpt_path",
                 allowed: Collection[str] | None = None) -> None:
    """:func:`check_file_config` for a training recipe, each of its ``data`` / ``model`` / ``loss`` nodes
    against the targets the config files write in that node (``allowed``, when given, for all of them), plus
    its ``choices``: ``{group: option}`` with plain names only (``{"data": "cityscapes"}``)."""
    check_file_config(recipe, source, option, "a recipe", allowed)  # every target known, plain config only
    nodes = {name: recipe.get(name) for name in ("data", "model", "loss")}
    if allowed is None and isinstance(recipe, Mapping):
        by_node = targets_by_node()
        for name, node in nodes.items():
            if isinstance(node, Mapping):
                check_file_config({name: node}, source, option, "a recipe", by_node.get(name, frozenset()))
    if not isinstance(nodes["data"], Mapping) or any(n is not None and not isinstance(n, Mapping)
                                                    for n in nodes.values()):
        kinds = ", ".join(f"{k}: {type(v).__name__}" for k, v in nodes.items())
        _refuse(source, option, "a recipe", f"is not a training recipe (data, model and loss must be mappings; "
                f"got {kinds})")
    choices = recipe.get("choices")
    if choices is None:
        return
    if not isinstance(choices, Mapping):
        _refuse(source, option, "a recipe", f"has choices that are a {type(choices).__name__}, not a mapping")
    for group, name in choices.items():
        if not (isinstance(group, str) and _GROUP.fullmatch(group)) or not is_option_name(name):
            _refuse(source, option, "a recipe", f"names the config option {str(group)[:60]!r}={str(name)[:120]!r}, "
                    f"which is not a plain option name (at choices.{str(group)[:60]})")


def is_option_name(name: Any) -> bool:
    """True for a plain config option name (``cityscapes``, ``hrnet_w18``): what ``<group>=<name>`` may say."""
    return isinstance(name, str) and bool(_OPTION.fullmatch(name)) and ".." not in name


def _shown(text: Any) -> str:
    """``text`` as it can be printed in a one-block message: a file's newlines or escape codes as ``repr``."""
    text = str(text)
    return text if text.isprintable() else repr(text)


def _refuse(source: str, option: str, what: str, problem: str) -> NoReturn:
    raise CheckpointError(
        f"{option}: '{source}' carries {what} that {problem}. The file was not used: it may have been crafted. "
        f"Only the project's own targets are allowed (the _target_ values written in configs/**/*.yaml): if "
        f"you trained with a target of your own, name it in a config file under configs/.")
