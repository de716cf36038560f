"""Loss terms by name, and a weighted sum of terms (``loss=ce_dice``, or any sum written in a config).

A term is a module ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar`` (docs/extending.md: A loss).
Here a term is given as

- a name in :data:`TERMS` (``dice``), built with the shared settings (``ignore_index``, class ``weight``,
  ``align_corners``, ``memory_efficient``, OHEM's ``min_kept``) that its constructor takes;
- ``{term: <name>, <option>: <value>, ...}``: the same, with the term's own options (``gamma``, ``smooth``,
  ``thresh``...; ``class_weights`` for its class weights);
- a module already built (a ``_target_`` node that Hydra instantiated: a forker's own term).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.losses.class_weights import WeightSpec, load_class_weights
from seg_template.losses.cross_entropy import CrossEntropy
from seg_template.losses.dice import DiceLoss
from seg_template.losses.focal import FocalLoss
from seg_template.losses.lovasz import LovaszSoftmax
from seg_template.losses.ohem import OhemCrossEntropy
from seg_template.option_rules import real_rule
from seg_template.options import require, rule_for

#: the terms a config may name; each class's ``name`` is its key (what its values are logged under)
TERMS: dict[str, type[nn.Module]] = {
    "ce": CrossEntropy, "ohem": OhemCrossEntropy, "dice": DiceLoss, "focal": FocalLoss, "lovasz": LovaszSoftmax,
}
#: the settings terms may share, passed to the named terms whose constructor takes them (min_kept: OHEM's
#: pixel budget per process batch, data.ohem_min_kept in the configs, for ohem and a focal entry with thresh)
SHARED = ("ignore_index", "weight", "align_corners", "memory_efficient", "min_kept")
#: a term's name: one segment of a metric name (train/loss/<name>)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def term_name(term: nn.Module) -> str:
    """What a term's value is logged under: its class's ``name`` (``ce``, ``dice``...), else the class name in
    lower case (a forker's term without one)."""
    return str(getattr(term, "name", type(term).__name__.lower()))


def build_term(spec: Any, shared: Mapping[str, Any], key: str) -> nn.Module:
    """A term from ``spec`` (a name, ``{term: <name>, <option>: ...}`` or a module; see the module docstring).

    ``shared`` holds the settings passed to a named term whose constructor takes them (None: left at the
    term's default); ``key`` is the config key ``spec`` came from, for messages."""
    if isinstance(spec, nn.Module):
        return spec
    options = {"term": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, Mapping) else None
    if options is None or "term" not in options:
        raise ConfigError(f"{key}={spec!r}: a loss term is a name ({', '.join(TERMS)}), "
                          f"{{term: <name>, <option>: <value>}} or a _target_ node")
    name = options.pop("term")
    if isinstance(name, nn.Module):  # {term: {_target_: ...}}: options belong in that node
        if options:
            raise ConfigError(f"{key}: {sorted(options)} next to a built term ({type(name).__name__}): write "
                              f"its options inside its _target_ node")
        return name
    cls = TERMS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"{key}.term={name!r} is no loss term: one of {', '.join(TERMS)}, or a _target_ node "
                          f"for your own (docs/extending.md: A loss)")
    if "class_weights" in options:
        # read once, here, so that a problem is named at this entry's key; the term takes the tensor
        options["weight"] = load_class_weights(_plain(options.pop("class_weights")), keys=f"{key}.class_weights")
    elif "weight" in options:
        raise ConfigError(f"{key}.weight: a term's class weights are written class_weights; its weight in the sum "
                          f"is the entry's weight (loss.main.terms[i].weight), the aux term's loss.aux_weight")
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        own = sorted(set(accepted) - set(SHARED)) + ["class_weights"]
        raise ConfigError(f"{key}.{unknown[0]}: {name} has no option {unknown[0]!r}; its options: {', '.join(own)}")
    for option, value in options.items():  # the rules of loss.main.<option>, named at this entry's key
        rule = rule_for(f"loss.main.{option}")
        if rule is not None and option != "weight":  # class weights: read above
            require(f"{key}.{'class_weights' if option == 'weight' else option}", _plain(value), rule)
    kwargs = {k: v for k, v in shared.items() if k in accepted and v is not None}
    try:
        return cls(**{**kwargs, **options})
    except ConfigError as error:  # the term names its options as loss.main's; here they are this entry's
        raise ConfigError(str(error).replace("loss.main.", f"{key}.")) from None


class TermSum(nn.Module):
    """A weighted sum of loss terms: ``sum_i weight_i * term_i(logits, target)``.

    ``terms`` lists ``{term, weight, name}`` entries: ``term`` as in :func:`build_term` (a name with its
    options beside it, or a built module), ``weight`` its factor (default 1), ``name`` what its value is logged
    under (default the term's name; two terms of one name need one). ``ignore_index``, ``weight`` (class
    weights: a list or a file, as ``CrossEntropy`` takes them), ``align_corners`` and ``memory_efficient`` are
    handed to the named terms that take them, as one term's config writes them, and ``min_kept`` (OHEM's pixel
    budget per process batch) to the entries that select pixels (``ohem``; ``focal`` with ``thresh``).

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar``; :meth:`parts` gives each term's unweighted
    value by name, which the LightningModule logs as ``train/loss/<name>``.
    """

    name = "sum"

    def __init__(self, terms: Sequence[Any], ignore_index: int | None = None, weight: WeightSpec = None,
                 align_corners: bool | None = None, memory_efficient: bool = False,
                 min_kept: int | None = None) -> None:
        super().__init__()
        if isinstance(terms, (str, Mapping)) or not isinstance(terms, Sequence) or not terms:
            raise ConfigError(f"loss.main.terms={terms!r}: a list of {{term: <name>, weight: <factor>}} entries, "
                              "e.g. [{term: ce, weight: 1.0}, {term: dice, weight: 0.5}]")
        require("loss.memory_efficient", memory_efficient)
        shared = {"ignore_index": ignore_index, "weight": weight, "align_corners": align_corners,
                  "memory_efficient": memory_efficient, "min_kept": min_kept}
        modules, factors, names = [], [], []
        for i, entry in enumerate(terms):
            key = f"loss.main.terms[{i}]"
            if not isinstance(entry, Mapping) or "term" not in entry:
                raise ConfigError(f"{key}={entry!r}: each entry is {{term: <name>, weight: <factor>}} "
                                  f"(terms: {', '.join(TERMS)})")
            options = {k: v for k, v in entry.items() if k not in ("weight", "name")}
            term = build_term(options, shared, key)
            factor = require(f"{key}.weight", entry.get("weight", 1.0), real_rule(0, example=0.5))
            name = entry["name"] if "name" in entry else term_name(term)
            if not isinstance(name, str) or not _NAME.fullmatch(name) or name.lower() == "aux":
                raise ConfigError(f"{key}.name={name!r}: a term's name is a metric name, train/loss/<name>: letters, "
                                  f"digits and _ . - ('aux' is the auxiliary head's term)")
            if name in names:
                raise ConfigError(f"{key}: a second term named {name!r}; give one of them a name "
                                  f"({key}.name=...) so that each is logged on its own")
            modules.append(term)
            factors.append(float(factor))
            names.append(str(name))
        if not any(factors):
            raise ConfigError(f"loss.main.terms: every weight is 0 ({', '.join(names)}), so the loss would stay 0.0 "
                              "and nothing would be learnt; give at least one term a weight > 0")
        self.terms = nn.ModuleList(modules)
        self.factors = factors
        self.names = names
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.register_buffer("weight", load_class_weights(weight), persistent=False)

    def parts(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each term's unweighted value by name (scalars)."""
        return {name: scalar_loss(term(logits, target), term)
                for name, term in zip(self.names, self.terms, strict=True)}

    def combine(self, parts: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum of :meth:`parts`' values."""
        return sum(factor * parts[name] for name, factor in zip(self.names, self.factors, strict=True))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.combine(self.parts(logits, target))

    def extra_repr(self) -> str:
        return " + ".join(f"{factor:g} * {name}" for name, factor in zip(self.names, self.factors, strict=True))


def _plain(value: Any) -> Any:
    """A config list or mapping as plain Python (what the rules and the weights loader read)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def scalar_loss(loss: Any, term: nn.Module) -> Tensor:
    """``loss`` when it is a 0-d tensor; a ``TypeError`` naming ``term``'s class otherwise (a term that forgot
    to reduce failed much later, inside Lightning's logging, without naming the loss)."""
    if isinstance(loss, Tensor) and loss.ndim == 0:
        return loss
    what = f"a tensor of shape {list(loss.shape)}" if isinstance(loss, Tensor) else f"a {type(loss).__name__}"
    raise TypeError(f"the loss term {type(term).__module__}.{type(term).__name__} returned {what}: a loss term "
                    f"returns one scalar (e.g. the mean over the valid pixels; docs/extending.md: A loss)")
