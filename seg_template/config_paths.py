"""Where a value sits in a config and what its interpolations point at: the vocabulary of the file-config
door (``seg_template/file_config.py``) and of the scan of the project's config files
(``seg_template/config_specials.py``).

A value's place is a tuple of keys, ``("data", "val_set", "root")``; list items are ints,
``("loss", "terms", 0, "_target_")``. :func:`dotted` prints it as a message names a key
(``loss.terms[0]._target_``), :func:`normalised` as the allow-list knows it, every list index alike
(``loss.terms[]._target_``).

An interpolation is a *plain reference* when it only reads another key: ``${data.root}``, relative ``${..x}``
or ``${oc.select:data.x,default}`` with a plain default. Resolvers (``${oc.create:...}``, ``${oc.env:...}``)
and nested interpolations are not: resolving them can build config or read the environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

Parts = tuple[Any, ...]
#: deeper nesting is refused: genuine recipes are ~6 levels deep, and OmegaConf recurses once per level
MAX_DEPTH = 64
_INTERPOLATION = re.compile(r"\$\{([^${}]*)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SEGMENT = rf"(?:{_NAME}|[0-9]+)"
#: a key as OmegaConf's grammar reads it: leading dots (relative), then names / indices joined by . or [i]
_KEY = re.compile(rf"(\.*)({_SEGMENT}(?:\.{_SEGMENT}|\[[0-9]+\])*)?")
_IDENTIFIER = re.compile(_NAME)
_SPECIAL = re.compile(r"_[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_")


def is_identifier(key: Any) -> bool:
    """True for a plain key name (``val_set``, ``_target_``): not a dotted path, an interpolation or a number."""
    return isinstance(key, str) and bool(_IDENTIFIER.fullmatch(key))


def is_special(key: Any) -> bool:
    """True for a key of Hydra's instantiate rather than an argument: ``_target_``, ``_partial_``, ``_args_``,
    ``_recursive_``, ``_convert_`` and any other ``_name_``."""
    return isinstance(key, str) and bool(_SPECIAL.fullmatch(key))


def dotted(parts: Parts, index: str | None = None) -> str:
    """``("data", "val_set", 0, "x")`` -> ``data.val_set[0].x`` (``index``, when given, replaces every list
    index); keys that cannot be printed as they are (newlines, escape codes, spaces at either end, empty) as
    ``repr``, so a crafted key cannot forge lines of a message nor pass for another one."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part if index is None else index}]"
        else:
            text = str(part)
            text = text if text.isprintable() and text == text.strip() and text else repr(text)  # spaces shown
            out += f".{text}" if out else text
    return out


def normalised(parts: Parts) -> str:
    """:func:`dotted` with every list index written ``[]``: the key as the config files may write it."""
    return dotted(parts, index="")


def walk(config: Any) -> Iterator[tuple[Parts, Any, int]]:
    """``(parts, value, depth)`` of every entry of ``config``, depth first in file order. Iterative, and it
    stops descending past :data:`MAX_DEPTH` (the caller refuses that entry): a crafted file may nest deeper
    than Python's recursion limit."""
    stack: list[tuple[Parts, Any]] = [((), config)]
    while stack:
        parts, value = stack.pop()
        if parts:
            yield parts, value, len(parts)
        if len(parts) >= MAX_DEPTH:
            continue
        if isinstance(value, Mapping):
            children = [((*parts, k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            children = [((*parts, i), v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(children))


def references(text: str) -> list[tuple[str, bool]] | None:
    """``[(key, has_default), ...]`` of the interpolations in ``text`` (``has_default``: an ``oc.select``
    with a default, which a missing key does not fail), or None when one of them is not a plain reference."""
    if "${" in _INTERPOLATION.sub("", text):  # nested or unclosed
        return None
    found = []
    for inner in _INTERPOLATION.findall(text):
        if inner.startswith("oc.select:"):
            key, comma, _ = inner[len("oc.select:"):].partition(",")
            found.append((key.strip(), bool(comma)))
        else:
            found.append((inner.strip(), False))
        if not found[-1][0] or not _KEY.fullmatch(found[-1][0]):
            return None
    return found


def is_plain_reference(text: str) -> bool:
    """True when every interpolation in ``text`` only reads another key: ``${data.x}``, ``${..x}`` or
    ``${oc.select:data.x,default}`` (a scalar or list default); resolvers and nested interpolations are not."""
    return references(text) is not None


def whole_reference(text: str) -> str | None:
    """The key of a value that is exactly one plain reference (``${data.val_set}``), else None."""
    found = _INTERPOLATION.fullmatch(text)
    keys = references(text) if found else None
    return keys[0][0] if keys and not keys[0][1] and not found[1].startswith("oc.select:") else None


def absolute(key: str, where: Parts) -> Parts | None:
    """The place a reference written at ``where`` reads: ``data.root`` -> ``("data", "root")``; relative
    keys count from the node holding ``where`` (``..x`` at ``("loss", "main", "y")`` -> ``("loss", "x")``).
    None when the key climbs above the top of the config or is not a key."""
    found = _KEY.fullmatch(key.strip())
    if not found:
        return None
    dots, rest = found.group(1), found.group(2) or ""
    tail = tuple(int(p) if p.isdigit() else p for p in re.findall(rf"{_NAME}|[0-9]+", rest))
    if not dots:
        return tail or None
    node = where[:-1]
    up = len(dots) - 1
    if up > len(node):
        return None
    return node[:len(node) - up] + tail
