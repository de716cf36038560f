"""Which options exist: a key of the composed config that no config file writes is a mistake, refused with the
closest real key, before a task builds anything.

Hydra's ``+key=value`` adds any key, and a key nobody reads does nothing: ``+resume_in_plce=false`` resumed in
place and overwrote the run's ``last.ckpt``; a key inside a node handed to a constructor failed later with a
``TypeError`` traceback. The rule, applied by :func:`unknown_keys`:

- a key the config files write (``configs/**/*.yaml``, seg_template/option_schema.py) exists. Inside a node with
  a ``_target_`` it must have been written under that same target (or in a file that names none there, as an
  experiment does); otherwise the target is asked, as for a new key.
- a key the files do not write exists when the ``_target_`` of its node takes it as a keyword argument
  (``inspect.signature``; ``**kwargs`` takes anything): ``+optimizer.amsgrad=true``,
  ``+trainer.accumulate_grad_batches=2``. Only such keys are looked up, so a normal run imports nothing here.
- a new node with its own ``_target_`` in a collection of objects (``+callbacks.probe._target_=...``, the
  ``callbacks`` and ``logger`` nodes) exists; its keys are then asked of its target.
- ``paths.*`` and ``hydra.*`` are free (interpolation helpers, Hydra's own settings). Everything else is refused:
  a node without ``_target_`` whose keys become keyword arguments (``inference.*`` -> ``InferenceModel``) is
  checked against the files' keys alone.

A forker adds an option by writing it, with its default, in a YAML file under ``configs/`` (then it is known,
and typed by its value), or passes ``+key=value`` to a target that takes it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from typing import Any

from seg_template.option_rules import show
from seg_template.option_schema import Seen

#: keys that ``hydra.utils.instantiate`` reads itself in a node with a ``_target_``
INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})
#: top-level nodes whose keys are free
FREE = ("paths", "hydra")
ADD_ONE = "a new option: write it with its default in a YAML file under configs/"


def unknown_keys(cfg: Any, table: dict[str, Seen]) -> list[str]:
    """One problem per key of ``cfg`` (a ``DictConfig``) that does not exist (see the module docstring), in
    config order; the keys below a refused one are not looked at."""
    found: list[str] = []
    _visit(cfg, "", table, found)
    return found


def _visit(node: Any, prefix: str, table: dict[str, Seen], found: list[str]) -> None:
    from omegaconf import DictConfig, OmegaConf

    target = _target_of(node)
    for key in node:
        if not prefix and key in FREE:
            continue
        path = _join(prefix, key)
        # an interpolation's content is checked where it is written, not under this key
        value = None if OmegaConf.is_interpolation(node, key) else _value(node, key)
        if key in INSTANTIATE_KEYS and (target is not None or key == "_target_"):
            continue
        seen = table.get(path)
        if seen is not None and (target is None or None in seen.targets or target in seen.targets):
            if _taken_whole(value, seen, target, key):
                continue
        elif target is not None:
            params = _parameters(target)
            if params is not None and key not in params:
                why = f"{target} takes no argument {key!r}"
                others = sorted(t for t in seen.targets if t and t != "???") if seen is not None else []
                if others:  # written for another target: +optimizer.momentum on AdamW
                    why += f" (the config files give it to {', '.join(others[:3])})"
                elif seen is not None and "???" in seen.targets:  # a base: data_base.yaml's max_image_pixels
                    why += (" (a base config this one starts from, such as configs/data_base.yaml, gives it to "
                            "every class named here: take it as an argument)")
                found.append(_refusal(path, value, table, list(params), why, new=""))
                continue
            if not (isinstance(value, DictConfig) and "_target_" in value):
                continue  # the target takes the value whole
        elif not (isinstance(value, DictConfig) and "_target_" in value and _holds_objects(prefix, table)):
            here = _options_here(node, prefix, table)
            found.append(_refusal(path, value, table, here, "no config file writes this option", new=ADD_ONE))
            continue
        if isinstance(value, DictConfig):
            _visit(value, path, table, found)


def _taken_whole(value: Any, seen: Seen, target: str | None, key: str) -> bool:
    """Whether a node stands where the files write only a value (``aux: ce``; ``loss.aux={term: focal,
    gamma: 1.0}``) and the enclosing ``_target_`` takes it as one argument: its keys are then that argument's
    business (the loss names its own mistakes), not options of their own."""
    from omegaconf import DictConfig

    if not isinstance(value, DictConfig) or "_target_" in value or "mapping" in seen.kinds or target is None:
        return False
    params = _parameters(target)
    return params is not None and key in params


def _options_here(node: Any, prefix: str, table: dict[str, Seen]) -> list[str]:
    """The keys of ``node`` the files write, values first, then the nodes (``data``, ``model``...)."""
    from omegaconf import DictConfig

    known = [str(k) for k in node if _join(prefix, k) in table and (prefix or k not in FREE)]
    nodes = [k for k in known if isinstance(_value(node, k), DictConfig)]
    return [k for k in known if k not in nodes] + nodes


def _value(node: Any, key: str) -> Any:
    """``node[key]``, or None when it cannot be read here (``???``): its key is what counts."""
    try:
        return node[key]
    except Exception:  # noqa: BLE001 - a missing value is named by the task that needs it
        return None


def _target_of(node: Any) -> str | None:
    """The ``_target_`` string of a ``DictConfig`` node, or None."""
    try:
        target = node.get("_target_")
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve names no target
        return None
    return target if isinstance(target, str) else None


def _holds_objects(path: str, table: dict[str, Seen]) -> bool:
    """Whether the files make ``path`` a collection of objects: no ``_target_`` of its own, entries with one
    (``callbacks``, ``logger``). The top level is not one."""
    if not path or f"{path}._target_" in table:
        return False
    return any(k.startswith(f"{path}.") and k.endswith("._target_") and k.count(".") == path.count(".") + 2
               for k in table)


def _join(prefix: str, key: Any) -> str:
    """``prefix.key``; a key that is not a plain name (``val_set.length``, ``${oc.env:HOME}``) as repr."""
    name = key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", key) else repr(key)
    return f"{prefix}.{name}" if prefix else name


@functools.lru_cache(maxsize=256)
def _parameters(target: str) -> tuple[str, ...] | None:
    """The keyword arguments ``target`` takes, or None when it takes any (``**kwargs``) or cannot be looked up
    here (instantiating it names that problem). A class of this project whose ``__init__`` takes ``**kwargs``
    passes them to its base class (``AtomicModelCheckpoint`` -> ``ModelCheckpoint``): the base's arguments
    count as its own."""
    obj = _locate(target)
    if obj is None:
        return None
    if inspect.isclass(obj):
        return _init_parameters(obj)
    return _named(obj)


def _named(call: Any) -> tuple[str, ...] | None:
    """The keyword arguments of ``call``'s signature; None for ``**kwargs`` or no signature."""
    try:
        params = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):  # some builtins have none
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in keyword and p.name != "self")


def _init_parameters(cls: type) -> tuple[str, ...] | None:
    if getattr(cls, "extra_keys_from_config_files", False):
        # its **kwargs take the keys a config file writes at its node (a dataset's own options), which the
        # schema knows: a key typed only on the command line reaches nothing there, so it is a typo
        params = inspect.signature(cls.__init__).parameters.values()
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return tuple(p.name for p in params if p.kind in keyword and p.name != "self")
    names: list[str] = []
    for owner in cls.__mro__:
        if "__init__" not in vars(owner) or owner is object:
            continue
        own = _named(owner.__init__)
        if own is not None:
            return tuple(dict.fromkeys([*names, *own]))
        if not owner.__module__.startswith("seg_template."):
            return None  # a library's **kwargs goes wherever that library sends it (wandb.init...)
        signature = inspect.signature(owner.__init__).parameters.values()
        names += [p.name for p in signature if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY) and p.name != "self"]
    return None


def _locate(target: str) -> Any:
    """The object a dotted ``target`` names (the longest importable module, then attributes), or None."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or a broken one): try a shorter prefix
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _refusal(path: str, value: Any, table: dict[str, Seen], here: list[str], why: str, new: str) -> str:
    """``<key>=<value>: <why>; did you mean <closest>? (<new>)`` (or the options ``here`` when none is close). The
    closest key is looked for among ``here`` (the target's arguments, or the keys this node has), then the keys
    the files write beside it, then the same name anywhere (``+max_epochs`` -> ``trainer.max_epochs``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        try:
            value = OmegaConf.to_container(value, resolve=False)
        except Exception:  # noqa: BLE001 - shown by its key alone
            value = None
    shown = f"{path}" if value is None or isinstance(value, dict) else f"{path}={show(value)}"
    after = f" ({new})" if new else ""
    parent, _, name = path.rpartition(".")
    here = [k for k in here if k not in INSTANTIATE_KEYS]
    beside = [k.rpartition(".")[2] for k in table if k.rpartition(".")[0] == parent]
    for candidates in (here, [k for k in beside if k not in INSTANTIATE_KEYS and k != name]):
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        if close:
            return f"{shown}: {why}; did you mean {_join(parent, close[0])}?{after}"
    # the same name elsewhere, for a key that is nowhere (one written for another target is where it belongs)
    elsewhere = [k for k in table if k.rpartition(".")[2] not in INSTANTIATE_KEYS] if path not in table else []
    close = difflib.get_close_matches(name, [k.rpartition(".")[2] for k in elsewhere], n=1, cutoff=0.8)
    if close:
        match = next(k for k in elsewhere if k.rpartition(".")[2] == close[0])
        return f"{shown}: {why}; did you mean {match}?{after}"
    if not here:
        return f"{shown}: {why}{after}"
    listed = ", ".join(here[:12]) + (", ..." if len(here) > 12 else "")
    where = f"the options of {parent}" if parent else "the top-level options"
    return f"{shown}: {why} ({where}: {listed}{'; ' + new if new else ''})"
