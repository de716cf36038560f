"""Resolving a recipe's nodes on their own, as the file-config door (``seg_template/file_config.py``) does
before anything is built: a reference that loops, is missing or expands past a bound is found here, naming
its key, instead of as an OmegaConf traceback from ``instantiate`` (or a machine out of memory).

The door has already made sure every interpolation is a plain reference into the recipe's own nodes, so
the nodes resolve without the task's config around them, and resolve the same way inside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seg_template.config_paths import Parts, absolute, dotted, references, whole_reference

#: resolved values a recipe may expand to (a string counts one more per kilobyte): a genuine one holds a few
#: hundred (class weights, names); OmegaConf spends about a kilobyte per value, and ten lists of ten
#: references each would make 10^10 (a string doubled by ``${a}${a}`` 40 times, 2^40 of its length)
MAX_VALUES = 100_000
#: references followed one after another (``a: ${b}``, ``b: ${c}``...): genuine recipes use one or two
MAX_HOPS = 32
#: nodes and references nested while counting: well inside Python's recursion limit
MAX_NESTING = 128


class Unresolvable(Exception):
    """A recipe whose references cannot be resolved: ``where`` (the key) and ``reason``."""

    def __init__(self, where: Parts, reason: str) -> None:
        super().__init__(f"{reason} (at {dotted(where)})")
        self.where, self.reason = where, reason


def resolved_nodes(nodes: Mapping[str, Any]) -> dict[str, Any]:
    """``nodes`` (``{"data": {...}, "model": {...}}``, plain containers holding plain references only) with
    every interpolation resolved, as plain containers; ``???`` (a value to be given on the command line)
    stays None. Raises :class:`Unresolvable` for a loop, a missing key or more than :data:`MAX_VALUES`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _Counter(nodes).check()
    try:
        conf = OmegaConf.create(_without_missing(nodes))
        return OmegaConf.to_container(conf, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        where = tuple(str(err.full_key or "").replace("[", ".").replace("]", "").split("."))
        where = tuple(int(p) if p.isdigit() else p for p in where if p)
        reason = str(err).split("\n", 1)[0].strip()
        raise Unresolvable(where, f"has a reference that cannot be resolved: {reason[:200]}") from None
    except RecursionError:
        raise Unresolvable((), "has references nested too deep to resolve") from None


def _without_missing(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_missing(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_missing(v) for v in value]
    return None if value == "???" else value


class _Counter:
    """Counts the values each key resolves to, without resolving: a reference costs what it points at."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root, self.sizes, self.open = root, {}, set()

    def check(self) -> None:
        total = sum(self.size((name,)) for name in self.root)
        if total > MAX_VALUES:
            raise Unresolvable((), f"expands to more than {MAX_VALUES} values when its references are resolved")

    def lookup(self, parts: Parts, chain: tuple[Parts, ...] = ()) -> tuple[Parts, Any] | None:
        """``(where it really is, value)`` of the entry at ``parts``, following whole-value references on the
        way (``data.test_set.root`` with ``test_set: ${data.val_set}`` is ``data.val_set.root``); None when
        it is not there (OmegaConf then names it). ``chain``: the references being followed."""
        node: Any = self.root
        real: Parts = ()
        for key in parts:
            real, node = self.follow(real, node, chain)
            listed = isinstance(node, (list, tuple)) and isinstance(key, int) and 0 <= key < len(node)
            if not (listed or (isinstance(node, Mapping) and key in node)):
                return None
            node = node[key]
            real = (*real, key)
        return self.follow(real, node, chain)

    def follow(self, real: Parts, node: Any, chain: tuple[Parts, ...]) -> tuple[Parts, Any]:
        key = whole_reference(node) if isinstance(node, str) else None
        target = absolute(key, real) if key is not None else None
        if target is None:
            return real, node
        if real in chain:
            raise Unresolvable(chain[0], "refers back to itself")
        if len(chain) >= MAX_HOPS:
            raise Unresolvable(chain[0], f"refers through more than {MAX_HOPS} references")
        found = self.lookup(target, (*chain, real))
        return (real, node) if found is None else found

    def size(self, parts: Parts) -> int:
        found = self.lookup(parts)
        if found is None:
            return 1
        real, value = found
        if real in self.sizes:
            return self.sizes[real]
        if real in self.open:  # named where the file says it: the key whose reference closes the loop
            raise Unresolvable(parts, "refers back to itself")
        if len(self.open) >= MAX_NESTING:
            raise Unresolvable(real, f"is resolved through more than {MAX_NESTING} nested keys and references")
        self.open.add(real)
        if isinstance(value, Mapping):
            size = 1 + sum(self.size((*real, k)) for k in value)
        elif isinstance(value, (list, tuple)):
            size = 1 + sum(self.size((*real, i)) for i in range(len(value)))
        elif isinstance(value, str) and "${" in value:  # a string interpolation holds what it reads, printed
            size = 1 + len(value) // 1024 + sum(self.size(target) for key, _ in references(value) or ()
                                                if (target := absolute(key, real)) is not None)
        else:
            size = 1 + len(value) // 1024 if isinstance(value, str) else 1
        if size > MAX_VALUES:
            raise Unresolvable(real, f"expands to more than {MAX_VALUES} values when its references are resolved")
        self.open.discard(real)
        self.sizes[real] = size
        return size
