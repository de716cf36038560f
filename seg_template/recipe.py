"""A checkpoint's recipe: what a trained network needs around it (data config, model, loss, class names,
palette), stored inside every checkpoint, so that ``python eval.py ckpt_path=X`` needs nothing else.

Writing (training): :func:`recipe_from` turns the composed config into plain containers that
``torch.load(weights_only=True)`` reads back (no ``DictConfig``, no ``Path``). Interpolations between the
stored nodes are kept (``data.val_set.root: ${data.root}``), so ``data.root=/elsewhere`` on another machine
still reaches every split; references outside them (``${paths.data_dir}``) are resolved as they were in
training, so the same machine finds its data without retyping anything.

Reading (eval, predict, export): :func:`with_recipe` puts the recipe's nodes in place of the task config's
defaults, then applies the options typed on the command line again, so they win: ``data.root=``,
``data.val_set.length=``, ``model.*``; a whole group typed again (``data=voc``) replaces the recipe's node.

A recipe comes from a file, so it may have been crafted: every way it is read or applied here passes
``seg_template.file_config.check_recipe`` first, which refuses, before anything is instantiated, whatever
training does not write: a ``_target_`` (or ``_partial_``, ``_args_``...) the project's configs do not write
at that key, a reference outside the recipe's nodes, nodes that do not resolve, a ``format`` other than
:data:`RECIPE_FORMAT`, class names or a palette that do not fit ``data.num_classes``.
"""

from __future__ import annotations

import copy
import logging
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from seg_template.config_paths import Parts, absolute, dotted, references, walk
from seg_template.errors import CheckpointError, ConfigError
from seg_template.file_config import RECIPE_NODES, check_recipe, is_option_name

log = logging.getLogger(__name__)

#: the config nodes a checkpoint carries (RECIPE_NODES, from the door): interpolations among them are kept,
#: others resolved. RECIPE_FORMAT: what recipe_from writes and the door accepts.
RECIPE_FORMAT = 1
#: the no-recipe hint shows at most this many of the run's options, each at most this long
_HINT_OPTIONS, _HINT_CHARS = 20, 200


def _is_internal(text: str, where: Parts) -> bool:
    """True when every interpolation in ``text`` (written at ``where``) is a plain reference to a key inside
    the recipe's nodes (``${data.x}``, ``${..x}``, ``${oc.select:data.x,default}``): what the door
    (``file_config.check_recipe``) lets a recipe keep. Resolvers and other roots are resolved instead."""
    keys = references(text)
    return bool(keys) and all((target := absolute(key, where)) is not None and target[0] in RECIPE_NODES
                              for key, _ in keys)


def _portable(raw: Any, resolved: Any, where: Parts) -> Any:
    """``raw`` (unresolved container at ``where``) with external interpolations replaced by their
    ``resolved`` values."""
    if isinstance(raw, dict):
        return {str(k): _portable(v, resolved[k], (*where, str(k))) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_portable(r, v, (*where, i)) for i, (r, v) in enumerate(zip(raw, resolved, strict=True))]
    if isinstance(raw, str) and "${" in raw:
        return raw if _is_internal(raw, where) else resolved
    return raw


def recipe_from(cfg: DictConfig) -> dict[str, Any]:
    """The recipe of a training config: ``{"format", "data", "model", "loss", "class_names", "palette",
    "choices"}`` as plain containers (``palette`` is ``[[r, g, b], ...]``, ``choices`` the config groups
    picked, e.g. ``{"data": "cityscapes", "model": "hrnet_w18"}``)."""
    from seg_template.data.palette import dataset_palette

    recipe: dict[str, Any] = {"format": RECIPE_FORMAT}
    for name in RECIPE_NODES:
        if cfg.get(name) is not None:
            node = cfg[name]
            recipe[name] = _portable(OmegaConf.to_container(node, resolve=False),
                                     OmegaConf.to_container(node, resolve=True), (name,))
    num_classes = int(cfg.data.num_classes)
    recipe["class_names"] = [str(n) for n in (cfg.data.get("class_names") or range(num_classes))]
    recipe["palette"] = dataset_palette(cfg.data).tolist()
    recipe["choices"] = _choices()
    return recipe


def _choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in choices.items() if k.split("/", 1)[0] in RECIPE_NODES and v is not None}


def read_checkpoint_recipe(path: str | Path) -> dict[str, Any] | None:
    """The recipe stored in the checkpoint at ``path``, or None (a plain state dict, an older or foreign
    checkpoint). Unreadable files raise the weights loader's ``CheckpointError`` / ``MissingFileError``, a
    recipe that could call anything but the project's own targets a ``CheckpointError`` (file_config.py).

    The file is read by the one reader with ``keep=True``: the recipe read before Hydra composes the config
    (:func:`recipe_argv`), again in the task, and the weights loaded after it are one read of the file."""
    from seg_template.models.weights import read_weights_file, resolve_path

    file = resolve_path(path)
    if file.suffix == ".safetensors":
        return None
    obj = read_weights_file(path, "ckpt_path", keep=True)
    recipe = obj.get("recipe") if isinstance(obj, Mapping) else None
    if recipe is None:
        return None
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("data"), Mapping):
        raise CheckpointError(f"ckpt_path: '{file}' has a 'recipe' entry that is not a training recipe "
                              f"(expected a mapping with data/model/loss, got {type(recipe).__name__})")
    check_recipe(recipe, str(file), "ckpt_path")
    return copy.deepcopy(dict(recipe))  # the kept object reaches the weights loader unchanged


def recipe_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> list[str]:
    """``key: old -> new`` for every data / model / loss value that differs between two recipes (as
    :func:`recipe_from` writes them: a checkpoint's and this run's), in config order; at most ``limit`` items,
    then ``... and N more``. A resume names them: its weights and optimiser state continue under them."""
    def leaves(recipe: Mapping[str, Any]) -> dict[str, Any]:  # values and whole lists, by dotted key
        return {dotted(parts): value for parts, value, _ in walk(recipe) if not isinstance(value, Mapping)
                and not any(isinstance(part, int) for part in parts)}

    def resolved(recipe: Mapping[str, Any]) -> dict[str, Any]:  # internal references only (the door's rule)
        nodes = {name: recipe[name] for name in RECIPE_NODES if isinstance(recipe.get(name), Mapping)}
        try:
            return OmegaConf.to_container(OmegaConf.create(nodes), resolve=True)  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - shown as stored
            return nodes

    before, after = leaves(resolved(old)), leaves(resolved(new))
    missing = object()

    def shown(value: Any) -> str:
        text = "(none)" if value is missing else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    changes = [f"{key}: {shown(before.get(key, missing))} -> {shown(after.get(key, missing))}"
               for key in [*after, *(k for k in before if k not in after)]
               if before.get(key, missing) != after.get(key, missing)]
    return changes[:limit] + ([f"... and {len(changes) - limit} more"] if len(changes) > limit else [])


def typed_overrides() -> list[str]:
    """The options typed on the command line of this Hydra job (``[]`` outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def apply_recipe(cfg: DictConfig, recipe: Mapping[str, Any], overrides: Sequence[str], *,
                 source: str = "<recipe>", option: str = "ckpt_path") -> DictConfig:
    """A copy of ``cfg`` whose ``data`` / ``model`` / ``loss`` come from ``recipe``, with ``overrides``
    (Hydra syntax, as typed) applied on top. A node whose group is in ``overrides`` (``data=voc``) keeps the
    composed one; ``key=value``, ``+key=value`` and ``~key`` under a replaced node are applied again.

    ``recipe`` is checked first (``file_config.check_recipe``: a ``CheckpointError`` naming ``option``, the
    file ``source``, the key and the target when it could call anything but the project's own targets)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    check_recipe(recipe, source, option)
    _check_choices(recipe, source, option)

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    trained = recipe.get("choices") or {}
    # a group typed with the option it was trained with (as recipe_argv adds it) is no change of recipe
    chosen = {o.key_or_group.split("/", 1)[0] for o in parsed
              if "." not in o.key_or_group and o.value() != trained.get(o.key_or_group)}
    out = copy.deepcopy(cfg)
    replaced = [n for n in RECIPE_NODES if recipe.get(n) is not None and n not in chosen]
    with open_dict(out):
        for name in replaced:
            out[name] = copy.deepcopy(recipe[name])
        for o in parsed:
            key = o.key_or_group
            if "." not in key or key.split(".", 1)[0] not in replaced:
                continue
            if o.is_delete():
                parent_key, _, leaf = key.rpartition(".")
                parent = OmegaConf.select(out, parent_key)
                if isinstance(parent, DictConfig) and leaf in parent:
                    del parent[leaf]
            else:
                OmegaConf.update(out, key, o.value(), merge=True, force_add=True)
    return out


def _check_choices(recipe: Mapping[str, Any], source: str, option: str) -> None:
    """The recipe's ``choices`` (``model: hrnet_w48``) must describe its nodes: the option's config file here
    builds the same ``_target_`` as the stored node. Otherwise the run log, ``recipe_argv`` (which composes
    that option's config so that its keys can be typed) and the node disagree: a ``CheckpointError``."""
    from seg_template.paths import CONFIG_DIR

    for group, choice in (recipe.get("choices") or {}).items():
        node, file = recipe.get(group), CONFIG_DIR / str(group) / f"{choice}.yaml"
        if not isinstance(node, Mapping) or not is_option_name(str(choice)) or not file.is_file():
            continue
        written = OmegaConf.load(file).get("_target_")
        if written is not None and node.get("_target_") != written:
            raise CheckpointError(f"{option}={source} carries a recipe whose choices say {group}={choice}, but "
                                  f"its {group} node builds {node.get('_target_')!r:.120}, not {written!r} (a "
                                  f"file edited by hand?). Pass the {group} it was trained with: {group}=<option>")


def _typed_roots(overrides: Sequence[str]) -> set[str]:
    """Top-level keys or groups the overrides touch: ``data.root=x`` -> ``data``, ``+model/x=y`` -> ``model``."""
    return {re.split(r"[./=]", o.lstrip("+~"), maxsplit=1)[0] for o in overrides}


def _safe_to_retype(option: str) -> bool:
    """False for an option that names code (``model._target_=``, ``+data._args_=``) or holds an interpolation:
    a run folder handed over with a checkpoint may be crafted too, and a hint is there to be copied."""
    key = option.lstrip("+~").split("=", 1)[0]
    return option.isprintable() and "${" not in option and not any(
        part.startswith("_") for part in re.split(r"[./@]", key))


def no_recipe_message(source: str, option: str, script: str) -> str:
    """What to pass when the file at ``source`` has no recipe; names the run's own options when the file
    sits in ``<run>/checkpoints/`` next to ``<run>/.hydra/overrides.yaml``."""
    from seg_template.models.weights import resolve_path, training_overrides

    file = resolve_path(source)
    listed = training_overrides(file)
    safe = [o for o in listed if _safe_to_retype(str(o))]
    # a crafted overrides.yaml could flood the message too: a run types a few short options
    shown = [o for o in safe if len(str(o)) <= _HINT_CHARS][:_HINT_OPTIONS]
    used = list(shown)
    if len(safe) < len(listed):
        used.append(f"and {len(listed) - len(safe)} option(s) naming code or interpolations, not shown")
    if len(shown) < len(safe):
        used.append(f"and {len(safe) - len(shown)} more option(s), too many or too long to show")
    # quoted for the shell: a crafted overrides.yaml ('model=small; touch x', `...`, $(...)) stays inert text
    shown_words = [shlex.quote(str(o)) for o in shown] + used[len(shown):]
    hint = (f"the run that wrote it used: {' '.join(shown_words)}" if used else
            "its training run lists them in <run>/.hydra/overrides.yaml; a run that set neither used "
            "data=synthetic model=small")
    return (f"{option}={source} carries no training recipe (a checkpoint of an older version or of another "
            f"tool), so the data and model it was trained with are unknown. Pass them as in training: "
            f"python {script} {option}={source} data=<data config> model=<model config> ({hint})")


def check_recipe_options(cfg: DictConfig, source: str, recipe: Mapping[str, Any] | None,
                         overrides: Sequence[str] | None = None, option: str = "ckpt_path") -> None:
    """:func:`seg_template.options.check_options` of a config rebuilt from ``recipe``, read from ``source``: a
    problem with a key the command line did not set (``overrides``, default the command line's; a group given
    with the option it was trained with, as :func:`recipe_argv` adds it, sets nothing) came from the file, so
    the message names it (``ckpt_path=<file> carries ...``), not the user's options."""
    from seg_template.options import check_class_weights, problems

    found = problems(cfg)
    if not found:
        check_class_weights(cfg)  # eval builds the loss: its weights file read (and named) before the model
        return
    overrides = typed_overrides() if overrides is None else list(overrides)
    trained = (recipe or {}).get("choices") or {}
    typed = {o.lstrip("+~").split("=", 1)[0] for o in overrides
             if o.split("=", 1) != [o.split("=", 1)[0], str(trained.get(o.split("=", 1)[0]))]}
    groups = {k for k in typed if "." not in k} | (set() if recipe else set(RECIPE_NODES))  # data=voc: composed

    def from_file(text: str) -> bool:
        key = re.split(r"[\s:=]", text, maxsplit=1)[0]
        root = re.split(r"[.\[]", key, maxsplit=1)[0]
        return root in RECIPE_NODES and root not in groups and not any(
            key == t or key.startswith((t + ".", t + "[")) for t in typed)

    shown = [f"{text}{'  (from the file)' if from_file(text) else ''}" for text in found[:10]]
    more = f"\n  ... and {len(found) - 10} more" if len(found) > 10 else ""
    if not any(map(from_file, found)):  # the user's own options: as check_options says it
        raise ConfigError("\n  ".join(found[:10]) + more)
    head = (f"{option}={source} carries a recipe whose options are refused" if all(map(from_file, found)) else
            f"the options rebuilt from the recipe of {option}={source} and the command line are refused")
    raise ConfigError(f"{head} (a file written by another version or edited by hand?):\n  "
                      + "\n  ".join(shown) + more)


def with_recipe(cfg: DictConfig, source: str, recipe: Mapping[str, Any] | None,
                overrides: Sequence[str] | None = None, script: str = "eval.py",
                option: str = "ckpt_path") -> DictConfig:
    """The config to rebuild a trained network with: ``cfg`` under ``recipe`` (see :func:`apply_recipe`),
    ``overrides`` defaulting to the command line's. Without a recipe the user must have passed ``data=`` or
    ``model=`` options, else a ``CheckpointError`` says which. ``model.pretrained`` is dropped (the weights
    come from ``source``) and so is ``model.compile`` unless typed (a training GPU's choice)."""
    overrides = typed_overrides() if overrides is None else list(overrides)
    typed = _typed_roots(overrides)
    if recipe is None:
        if not typed & {"data", "model"}:
            raise CheckpointError(no_recipe_message(source, option, script))
        log.warning("%s carries no recipe: using the data / model options given", source)
        out = copy.deepcopy(cfg)
    else:
        from seg_template.models.weights import resolve_path

        out = apply_recipe(cfg, recipe, overrides, source=str(resolve_path(source)), option=option)
        trained = recipe.get("choices") or {}
        chosen = " ".join(f"{k}={v}" for k, v in trained.items())
        # recipe_argv adds <group>=<trained option> to the command line: that is the recipe, not the user
        mine = [o for o in overrides if _typed_roots([o]) & set(RECIPE_NODES)
                and o.split("=", 1) != [o.split("=", 1)[0], str(trained.get(o.split("=", 1)[0]))]]
        log.info("Recipe of %s%s%s", source, f": {chosen}" if chosen else "",
                 f"; from the command line: {' '.join(mine)}" if mine else "")
    with open_dict(out):
        if "pretrained" in out.model:
            out.model.pretrained = None
        if "compile" in out.model and not any(o.lstrip("+~").startswith("model.compile") for o in overrides):
            out.model.compile = False
    return out


def read_recipe(path: str | Path) -> dict[str, Any] | None:
    """The recipe of a checkpoint or of an exported ``.onnx`` file (its metadata), or None; checked as
    :func:`read_checkpoint_recipe` checks it."""
    if str(path).lower().endswith(".onnx"):
        from seg_template.models.weights import resolve_path
        from seg_template.onnx_model import read_onnx_recipe

        file = resolve_path(path)
        recipe = read_onnx_recipe(file)
        if recipe is not None:
            check_recipe(recipe, str(file), "model_file")
        return recipe
    return read_checkpoint_recipe(path)


def recipe_argv(argv: list[str], groups: Sequence[str], sources: Sequence[str] = ("ckpt_path",)) -> list[str]:
    """``argv`` plus ``<group>=<option it was trained with>`` for each of ``groups`` the command line does
    not choose, read from the recipe of the file named by the first of ``sources`` given (``ckpt_path=``).

    Hydra then composes the same config files as training did, so options that exist only there
    (``data.val_set.label_type=`` of Cityscapes, ``model.width=`` of ``small``) can be typed; the recipe's
    stored values still replace the composed ones (:func:`apply_recipe`). Left as it is for help, sweeps,
    a file that cannot be read or is refused (the task reports it) and options that are not plain names
    of a config file here (a crafted ``../x`` or ``a b`` never becomes an option).
    """
    from seg_template.paths import CONFIG_DIR, argv_values

    args = argv[1:]
    if any(a in ("-m", "--multirun", "-h", "--help", "--hydra-help", "--info") for a in args):
        return argv
    values = argv_values(args)
    source = next((values[s] for s in sources if values.get(s)), None)
    if not source or "," in source:
        return argv
    try:
        recipe = read_recipe(source)
    except Exception:  # missing or unreadable: the task reads it again and names the problem
        return argv
    choices = (recipe or {}).get("choices") or {}
    extra = [f"{g}={choices[g]}" for g in groups if g in choices and g not in values
             and is_option_name(choices[g]) and (CONFIG_DIR / g / f"{choices[g]}.yaml").is_file()]
    return [*argv, *extra]
