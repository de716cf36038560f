"""Load local weights into a model: backbone-only or full checkpoints, with a report of what did not fit.

``model.pretrained=<path>`` ends up in :func:`load_pretrained`. Accepted files: a plain ``state_dict``
(``torch.save(model.state_dict())``), a dict holding one under ``"state_dict"`` (Lightning ``.ckpt``),
``"model"`` (torchvision references) or ``"model_state_dict"``, and ``.safetensors``. Keys are matched after
dropping wrapper prefixes (``net.`` / ``model.`` of a LightningModule, ``module.`` of DDP, ``_orig_mod.`` of
``torch.compile``); a backbone-only file (an ImageNet ResNet, a timm HRNet) is matched under ``backbone.``.

Tensors whose shape differs (a classifier trained for another number of classes) are skipped and logged.
If too little of the model's backbone is covered, the file is for another architecture: we raise with the
keys that did not match instead of silently training from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
#: containers that hold the real state dict inside a checkpoint dict
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: leading components added by wrappers (LightningModule attribute, DDP, EMA) that are never part of a model
WRAPPER_PREFIXES = ("net.", "model.", "module.")
#: (strip, add) rewrites tried on every key; the one that matches most model keys wins
KEY_REWRITES = (("", ""), ("", "backbone."), ("features.", "backbone."))


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. ``mismatched`` holds ``(key, file_shape, model_shape)``."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched (skipped)")


def _preview(keys: list[str], limit: int = 10) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def looks_like_path(spec: str) -> bool:
    """True if ``spec`` names a file (exists, has a weights suffix or a directory part), not a weight tag."""
    return Path(spec).expanduser().exists() or spec.lower().endswith(WEIGHT_SUFFIXES) or "/" in spec or "\\" in spec


def resolve_path(spec: str | Path) -> Path:
    """Absolute path of ``spec``; relative paths are taken from the launch directory (Hydra's original cwd)."""
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(Path(spec).expanduser())))
    except ImportError:  # pragma: no cover - hydra is a dependency, but the loader does not need it
        return Path(spec).expanduser().resolve()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file, unwrapped from checkpoint containers; never unpickles arbitrary objects."""
    file = resolve_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model.pretrained: no weights file at '{file}' (given as '{path}')")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(file), device="cpu")
    else:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types; all mean "not a plain weights file"
            raise ValueError(
                f"model.pretrained: '{file}' holds pickled objects besides tensors, which "
                f"torch.load(weights_only=True) refuses ({type(err).__name__}: {str(err)[:300]}). If you trust "
                f"the file, extract its weights once: torch.save(torch.load(path, weights_only=False)['model'], "
                f"'weights.pth') (the key holding the state dict: 'model', 'state_dict', ...).") from err
    # peel containers: Lightning {"state_dict": ...}, torchvision references {"model": ...}
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"model.pretrained: '{file}' holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"model.pretrained: '{file}' holds no tensors (top-level keys: {_preview(list(obj))})")
    return tensors


def _strip_wrappers(key: str) -> str:
    key = key.replace("_orig_mod.", "")
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def match_keys(state: Mapping[str, Tensor], model_keys: set[str]) -> dict[str, str]:
    """Map file keys onto model keys (``{file_key: model_key}``), trying each rewrite in ``KEY_REWRITES``.

    Wrapper prefixes are only stripped when that improves the match (a model may itself have a ``model.``).
    """
    best: dict[str, str] = {}
    for strip_wrappers in (False, True):
        for strip, add in KEY_REWRITES:
            mapping = {}
            for key in state:
                name = _strip_wrappers(key) if strip_wrappers else key
                if strip and not name.startswith(strip):
                    continue
                name = add + name[len(strip):]
                if name in model_keys:
                    mapping[key] = name
            if len(mapping) > len(best):
                best = mapping
    return best


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "<state dict>",
                    min_coverage: float = 0.5) -> LoadReport:
    """Copy matching tensors of ``state`` into ``model``; skip shape mismatches; raise on a foreign file.

    ``min_coverage``: the fraction of the model's backbone tensors (all tensors if it has no ``backbone``)
    that must load, else the file is taken to be for another architecture and a ``ValueError`` lists what
    did not match.
    """
    target = model.state_dict()
    mapping = match_keys(state, set(target))
    report = LoadReport(source=source)
    to_load: dict[str, Tensor] = {}
    for file_key, model_key in mapping.items():
        tensor, expected = state[file_key], target[model_key]
        if tensor.shape != expected.shape:
            report.mismatched.append((model_key, tuple(tensor.shape), tuple(expected.shape)))
        else:
            to_load[model_key] = tensor
    report.loaded = sorted(to_load)
    report.unexpected = sorted(set(state) - set(mapping))
    report.missing = sorted(set(target) - set(to_load) - {m[0] for m in report.mismatched})

    core = [k for k in target if k.startswith("backbone.")]
    scope = "backbone tensors" if core else "tensors"
    core = core or list(target)
    covered = sum(k in to_load for k in core) / len(core)
    if covered < min_coverage:
        mism = [f"{k} {a}->{b}" for k, a, b in report.mismatched]
        raise ValueError(
            f"model.pretrained: '{source}' does not fit {type(model).__name__}: only {covered:.0%} of its "
            f"{scope} matched (need {min_coverage:.0%}); "
            f"the file is probably for another architecture. Unmatched file keys ({len(report.unexpected)}): "
            f"{_preview(report.unexpected)}. Shape mismatches ({len(mism)}): {_preview(mism)}. "
            f"Model keys not found ({len(report.missing)}): {_preview(report.missing)}.")
    model.load_state_dict(to_load, strict=False)
    log.info("Pretrained weights %s", report.summary())
    if report.mismatched:
        log.warning("Skipped shape-mismatched tensors (e.g. a head for another number of classes): %s",
                    _preview([f"{k} {a}->{b}" for k, a, b in report.mismatched]))
    if report.missing:
        log.info("Not in the file (kept at initialisation): %s", _preview(report.missing))
    if report.unexpected:
        log.info("In the file but not in the model (ignored): %s", _preview(report.unexpected))
    return report


def load_pretrained(model: nn.Module, path: str | Path, min_coverage: float = 0.5) -> LoadReport:
    """Load a local weights file into ``model`` (see the module docstring); returns the :class:`LoadReport`."""
    return load_state_into(model, read_state_dict(path), source=str(resolve_path(path)), min_coverage=min_coverage)
