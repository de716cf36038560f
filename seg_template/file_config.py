"""The one door for config that comes from a file: what a file says is data of the right shape, or refused
before anything is built. A file's config never runs anything it names itself.

A checkpoint's recipe and an exported ONNX file's metadata hold config nodes (``data``, ``model``, ``loss``)
that eval / predict / export instantiate. Loading the file with ``weights_only=True`` stops pickled code, but
not this: the recipe is data that becomes calls (``_target_: builtins.open`` with ``_args_: [file, w]``
truncates ``file``). So :func:`check_recipe` (and, for any other config read from a file,
:func:`check_file_config`) refuses the file, with one message naming the file, the key and the value, when:

- a ``_target_`` is not, character for character, one written in ``configs/**/*.yaml`` (exact strings, not
  prefixes: Hydra's ``_locate`` walks attributes, so ``seg_template.cli.shutil.rmtree`` is
  ``shutil.rmtree``), or not a plain string (a number, a list, an interpolation that picks the target only
  when resolved), at any depth (dicts, lists, lists of dicts: a transform list);
- a ``_target_`` or any other of Hydra's special keys (``_partial_``, ``_args_``, ``_recursive_``,
  ``_convert_``...) is not, with that value, one the config files write **at the same key**
  (``seg_template/config_specials.py``; list indices alike, ``# @package`` headers respected, and a node
  written as a reference may hold what its referent may): a ``Trainer`` is a project target but never part
  of a recipe, ``train_transform`` never the ``val_transform``, ``loss._recursive_: false`` never written;
- a key is not an identifier (``val_set.length``, ``${oc.env:HOME}``, a number) — list items aside;
- an interpolation is not a plain reference to a key inside the recipe's own nodes (``${data.x}``,
  relative ``${..x}``, ``${oc.select:data.x,default}``): resolvers (``${oc.create:...}``) can build config,
  ``${trainer}`` would build the task's Trainer inside ``data``;
- the nodes do not resolve on their own (a reference to itself, a loop, a missing key, more than
  ``recipe_resolution.MAX_VALUES`` values once references are expanded: ``recipe_resolution.py``); after
  resolving, the special keys that references brought in are checked at the keys they land on (``${model}``
  in ``data`` puts a model's ``_target_`` there);
- anything is not plain config (dicts with str keys, lists, str / int / float / bool / None: a checkpoint
  may hold tensors), nested more than :data:`MAX_DEPTH` levels; ``format`` is not one this code reads,
  ``class_names`` not ``data.num_classes`` strings, ``palette`` not that many ``[r, g, b]`` of 0..255;
  ``choices`` (the config groups trained with) not plain option names: they become command-line options
  (``data=<name>``) in ``seg_template.recipe.recipe_argv``.

Hydra >= 1.3.4 also blocks a list of dangerous targets itself; this check does not rely on it.

YAML files read back from a run folder (``.hydra/overrides.yaml`` beside a checkpoint, a sweep's
``multirun.yaml``) pass :func:`read_run_yaml`: no anchors or aliases (nine levels of ten aliases each make
10^9 values from a few hundred bytes), at most :data:`MAX_YAML_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NoReturn

from seg_template.config_paths import (
    MAX_DEPTH,
    Parts,
    absolute,
    dotted,
    is_identifier,
    is_plain_reference,
    is_special,
    references,
    walk,
)
from seg_template.config_specials import TARGET, allowed_at, allowed_targets, targets_by_node, value_token
from seg_template.errors import CheckpointError, ConfigError
from seg_template.paths import CONFIG_DIR

__all__ = ["MAX_DEPTH", "MAX_YAML_BYTES", "RECIPE_NODES", "allowed_targets", "check_file_config", "check_recipe",
           "target_problem",
           "is_option_name", "is_plain_reference", "read_run_yaml", "targets_by_node"]

#: the config nodes a recipe carries; its references stay among them
RECIPE_NODES = ("data", "model", "loss")
#: a YAML file a run writes (overrides, multirun.yaml) is a few kilobytes
MAX_YAML_BYTES = 1_000_000
_PLAIN = (str, int, float, bool, type(None))
#: a config group option as Hydra names it from ``configs/<group>/<name>.yaml`` (no path, quote or space)
_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_GROUP = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
_TARGETS_FIX = ("Only what configs/**/*.yaml writes at the same key is allowed (the _target_ and other "
                "_special_ keys): if you trained with a target of your own, write it at that key in a config "
                "file under configs/.")
_DATA_FIX = "Training never writes such a recipe."


def _problem(parts: Parts, value: Any, depth: int, allowed: Collection[str]) -> str | None:
    """What is wrong with one entry of a file's config, or None."""
    key, where = parts[-1], dotted(parts)
    if depth >= MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} levels deep (at {where})"
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        return f"has a key that is not a string ({type(key).__name__} {key!r:.80}) (at {where})"
    if not isinstance(value, (Mapping, list, tuple, *_PLAIN)):
        return f"holds a {type(value).__name__}, not plain config (at {where})"
    if key == TARGET:
        if not isinstance(value, str):
            return f"has a _target_ that is not a name but a {type(value).__name__} ({value!r:.80}) (at {where})"
        if "${" in value:
            return f"picks its _target_ by interpolation ({value!r:.120}) (at {where})"
        if value not in allowed:
            return f"would call {dotted((value,))[:200]} (at {where})"
    elif isinstance(value, str) and "${" in value and not is_plain_reference(value):
        return (f"has an interpolation that would build config when resolved ({value!r:.120}) (at {where}); "
                "a recipe holds only references to its own keys")
    return None


def check_file_config(config: Any, source: str, option: str = "ckpt_path", what: str = "a recipe",
                      allowed: Collection[str] | None = None) -> None:
    """Raise a ``CheckpointError`` naming ``option``, the file ``source``, the key and the target when the
    ``config`` read from that file (plain containers or an OmegaConf node) is not plain config or could call
    anything but the project's own targets (``allowed``: default :func:`allowed_targets`), wherever they
    are. :func:`check_recipe` then checks a recipe key by key."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    allowed = allowed_targets() if allowed is None else allowed
    if not isinstance(config, Mapping):
        _refuse(source, option, what, f"is a {type(config).__name__}, not a mapping of config nodes")
    for parts, value, depth in walk(config):
        problem = _problem(parts, value, depth, allowed)
        if problem:
            _refuse(source, option, what, problem, _TARGETS_FIX)


def target_problem(config: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> str | None:
    """What :func:`check_file_config` would refuse in ``config`` (plain containers), or None. Training asks it of
    its own recipe, so that a ``_target_`` given only on the command line (``loss.aux={_target_: ...}``) is
    refused before the run instead of in every checkpoint it writes."""
    allowed = allowed_targets(config_dir)
    for parts, value, depth in walk(config):
        problem = _problem(parts, value, depth, allowed) or _special_problem(parts, value, config_dir, "")
        if problem:
            return problem
    return None


def check_recipe(recipe: Any, source: str, option: str = "ckpt_path", config_dir: Path = CONFIG_DIR) -> None:
    """Refuse (a ``CheckpointError`` naming ``option``, the file ``source`` and the key) a training recipe
    that is not what training writes with the config files under ``config_dir``: see the module docstring."""
    from seg_template.recipe_resolution import Unresolvable, resolved_nodes

    check_file_config(recipe, source, option, "a recipe", allowed_targets(config_dir))
    nodes = {name: recipe.get(name) for name in RECIPE_NODES}
    if not isinstance(nodes["data"], Mapping) or any(n is not None and not isinstance(n, Mapping)
                                                    for n in nodes.values()):
        kinds = ", ".join(f"{k}: {type(v).__name__}" for k, v in nodes.items())
        _refuse(source, option, "a recipe", f"is not a training recipe (data, model and loss must be mappings; "
                f"got {kinds})")
    _check_format(recipe, source, option)
    _check_choices(recipe.get("choices"), source, option)
    present = {name for name, node in nodes.items() if node is not None}
    for parts, value, _ in [((), recipe, 0), *walk(recipe)]:
        problem = _key_problem(parts, value) or _reference_problem(parts, value, present)
        problem = problem or _special_problem(parts, value, config_dir, "")
        if problem:
            _refuse(source, option, "a recipe", problem, _TARGETS_FIX if parts and is_special(parts[-1]) else _DATA_FIX)
    try:
        resolved = resolved_nodes({name: nodes[name] for name in RECIPE_NODES if name in present})
    except Unresolvable as err:
        shown = _value_at(recipe, err.where)
        _refuse(source, option, "a recipe", f"{err.reason} (at {dotted(err.where) or 'its nodes'}"
                f"{f': {shown!r:.120}' if isinstance(shown, str) else ''})", _DATA_FIX)
    for parts, value, _ in walk(resolved):  # what references brought in, at the keys they land on
        problem = _special_problem(parts, value, config_dir, ", reached through a reference")
        if problem:
            _refuse(source, option, "a recipe", problem, _TARGETS_FIX)
    _check_shapes(recipe, resolved, source, option)


def _key_problem(parts: Parts, value: Any) -> str | None:
    """A mapping's keys must be identifiers (``choices`` names config groups, checked on its own)."""
    if not isinstance(value, Mapping) or parts == ("choices",):
        return None
    for key in value:
        if not is_identifier(key):
            return (f"has the key {key!r:.80} (at {dotted(parts) or 'the top'}), which is not a plain name: a "
                    f"recipe's keys are identifiers")
    return None


def _reference_problem(parts: Parts, value: Any, present: Collection[str]) -> str | None:
    """An interpolation may only read a key inside the recipe's own nodes (``data`` / ``model`` / ``loss``)."""
    if not parts or not isinstance(value, str) or "${" not in value:
        return None
    if parts[0] not in present:
        return f"has an interpolation outside its data / model / loss nodes ({value!r:.120}) (at {dotted(parts)})"
    for key, _ in references(value) or ():
        target = absolute(key, parts)
        if target is None or target[0] not in present:
            return (f"has a reference to {key[:80]!r} (at {dotted(parts)}), outside the recipe's "
                    f"{' / '.join(n for n in RECIPE_NODES if n in present)} nodes: a recipe holds only "
                    f"references to its own keys")
    return None


def _special_problem(parts: Parts, value: Any, config_dir: Path, how: str) -> str | None:
    """A special key and its value must be what the config files write at that same key."""
    key = parts[-1] if parts else None
    if not is_special(key) or value_token(value) in allowed_at(parts, config_dir):
        return None
    if key == TARGET:
        written = sorted(t.strip('"') for t in allowed_at(parts, config_dir))
        return (f"would call {dotted((value,))[:200]} (at {dotted(parts)}{how}), which no config file writes "
                f"at that key" + (f" (they write {', '.join(written[:4])})" if written else ""))
    return (f"has {key}: {value!r:.80} (at {dotted(parts)}{how}), which no config file writes at that key "
            f"(Hydra would build that node differently)")


def _check_format(recipe: Mapping[str, Any], source: str, option: str) -> None:
    from seg_template.recipe import RECIPE_FORMAT

    found = recipe.get("format")
    if type(found) is not int or found != RECIPE_FORMAT:
        _refuse(source, option, "a recipe", f"is of format {found!r:.40} (at format), which this version does not "
                f"read (it reads format {RECIPE_FORMAT})", "Use the seg_template version that wrote it.")


def _check_choices(choices: Any, source: str, option: str) -> None:
    """``{group: option}`` with plain names only (``{"data": "cityscapes"}``), or None."""
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


def _check_shapes(recipe: Mapping[str, Any], resolved: Mapping[str, Any], source: str, option: str) -> None:
    """``data.num_classes`` a positive integer; ``class_names`` (and ``data.class_names`` when set) that many
    printable strings; ``palette`` that many ``[r, g, b]`` integers in 0..255."""
    classes = resolved["data"].get("num_classes")
    if type(classes) is not int or classes < 1:
        _refuse(source, option, "a recipe", f"has data.num_classes {classes!r:.40}, not a positive integer "
                "(at data.num_classes)", _DATA_FIX)
    named = [(("class_names",), recipe.get("class_names"))]
    if resolved["data"].get("class_names") is not None:
        named.append((("data", "class_names"), resolved["data"]["class_names"]))
    for parts, names in named:
        if not isinstance(names, (list, tuple)) or len(names) != classes:
            _refuse(source, option, "a recipe", f"has {dotted(parts)} that are not a list of {classes} names "
                    f"(data.num_classes): {_preview(names)} (at {dotted(parts)})", _DATA_FIX)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.isprintable():
                _refuse(source, option, "a recipe", f"has a class name that is not a printable string: "
                        f"{_preview(name)} (at {dotted((*parts, i))})", _DATA_FIX)
    palette = recipe.get("palette")
    if not isinstance(palette, (list, tuple)) or len(palette) != classes:
        _refuse(source, option, "a recipe", f"has a palette that is not a list of {classes} colours "
                f"(data.num_classes): {_preview(palette)} (at palette)", _DATA_FIX)
    for i, colour in enumerate(palette):
        if not (isinstance(colour, (list, tuple)) and len(colour) == 3
                and all(type(c) is int and 0 <= c <= 255 for c in colour)):
            _refuse(source, option, "a recipe", f"has a palette colour that is not [r, g, b] of integers 0..255: "
                    f"{_preview(colour)} (at palette[{i}])", _DATA_FIX)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _value_at(config: Any, parts: Parts) -> Any:
    for key in parts:
        try:
            config = config[key]
        except (KeyError, IndexError, TypeError):
            return None
    return config


def read_run_yaml(path: str | Path, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The plain data (dicts, lists, str, numbers) of a YAML file that a run folder holds. A ``ConfigError``
    naming the file when it is not a regular file, is larger than ``max_bytes``, is not UTF-8 YAML, or holds
    an anchor or alias (``&a`` / ``*a``: what Hydra writes never does, and aliases of aliases multiply)."""
    import yaml

    file = Path(path)

    class NoAliasLoader(yaml.SafeLoader):  # the pure-Python composer: each node is seen before it is built
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                _refuse_yaml(file, f"holds a YAML anchor or alias ({event.start_mark.line + 1}:"
                             f"{event.start_mark.column + 1})")
            return super().compose_node(parent, index)

    if not file.is_file():
        _refuse_yaml(file, "is not a regular file")
    try:
        with file.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as err:
        _refuse_yaml(file, f"cannot be read ({err.strerror or err})")
    if len(data) > max_bytes:
        _refuse_yaml(file, f"is larger than {max_bytes} bytes")
    try:
        return yaml.load(data.decode("utf-8"), Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        _refuse_yaml(file, "is not UTF-8 text")
    except yaml.YAMLError as err:
        _refuse_yaml(file, f"is not readable YAML ({str(err).splitlines()[0][:120]})")
    except RecursionError:
        _refuse_yaml(file, "nests deeper than can be read")


def _refuse_yaml(file: Path, problem: str) -> NoReturn:
    raise ConfigError(f"'{dotted((str(file),))}' (a YAML file read back from a run folder) {problem}. It was not "
                      f"used: the files a run writes never do this, so it may have been crafted.")


def _refuse(source: str, option: str, what: str, problem: str, fix: str = _TARGETS_FIX) -> NoReturn:
    raise CheckpointError(f"{option}: '{source}' carries {what} that {problem}. The file was not used: it may "
                          f"have been crafted. {fix}")
