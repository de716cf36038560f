"""The one weights loader: every file a user names (``ckpt_path``, ``model.pretrained``) is read here.

Trust policy: files are read with ``torch.load(weights_only=True)`` (or safetensors), which rebuilds tensors
and plain containers but never runs code stored in the file; anything else is refused with a
:class:`~seg_template.errors.CheckpointError` naming the file, as is an empty, truncated or foreign file.

Two ways to put the weights into a model:

- :func:`load_net_weights` (eval, predict): strict. The file must hold exactly this model's tensors (a
  Lightning ``.ckpt`` of ours, whose ``net.*`` entries are used, or a plain state dict); anything missing,
  unexpected or of another shape raises, naming the file, both shapes and the options to pass.
- :func:`load_pretrained` (``model.pretrained=<file>``, fine-tuning): lenient. Accepts a plain state dict,
  a dict holding one under ``"state_dict"`` (Lightning), ``"model"`` (torchvision references),
  ``"model_state_dict"`` or ``"net"``, and ``.safetensors``. Keys are matched after dropping wrapper
  prefixes (``net.`` / ``model.`` of a LightningModule, ``module.`` of DDP, ``_orig_mod.`` of
  ``torch.compile``); a backbone-only file (an ImageNet ResNet, a timm HRNet) is matched under ``backbone.``
  (smp models: ``encoder.``).
  Tensors of another shape (a head for another class count) are skipped and logged; if too little of the
  backbone is covered, the file is for another architecture and we raise instead of training from scratch.

Both refuse weights holding NaN or inf (:mod:`seg_template.models.finite`), naming the file and the tensors;
a file holding a sparse, nested, quantized, complex or ``meta`` tensor is refused by the reader itself
(:func:`read_weights_file`), whoever reads it.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seg_template.errors import CheckpointError, MissingFileError
from seg_template.models.finite import START_ELSEWHERE, refuse_nonfinite, refuse_odd_tensors

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
#: containers that hold the real state dict inside a checkpoint dict
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: leading components added by wrappers (LightningModule attribute, DDP, EMA) that are never part of a model
WRAPPER_PREFIXES = ("net.", "model.", "module.")
#: (strip, add) rewrites tried on every key; the one that matches most model keys wins. A backbone-only file
#: (an ImageNet ResNet's ``conv1.weight``) lands under ``backbone.`` (torchvision, HRNet) or ``encoder.`` (smp;
#: ``encoder.model.`` for its ``tu-`` timm encoders)
KEY_REWRITES = (("", ""), ("", "backbone."), ("features.", "backbone."), ("", "encoder."), ("", "encoder.model."))
#: where a model keeps its pretrained part: the coverage check of load_state_into counts these tensors
CORE_PREFIXES = ("backbone.", "encoder.")


@dataclass
class LoadReport:
    """What a load did. ``mismatched`` holds ``(key, file_shape, model_shape)``."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched (skipped)")


def _preview(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "none"
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


#: the file a command read with ``keep=True`` and has not taken yet: ``(identity, object)`` (read_weights_file)
_kept: tuple[tuple[Any, ...], Any] | None = None


def _identity(file: Path) -> tuple[Any, ...] | None:
    """What tells one version of ``file`` from another: its path, inode, size and modification time (an atomic
    save renames a new inode over it, an in-place copy changes size or time); None when it cannot be stat'ed."""
    try:
        st = file.stat()
    except OSError:
        return None
    return str(file), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def let_go() -> None:
    """Drop the object a ``keep=True`` read holds (Lightning restored another file, e.g. SLURM's ``hpc_ckpt``
    instead of ``ckpt_path``: nobody will take it)."""
    global _kept
    _kept = None


def read_weights_file(path: str | Path, option: str = "model.pretrained", *, keep: bool = False) -> Any:
    """The object stored in a ``torch.save`` / safetensors file, read without running any code from it.

    ``option`` names the config key the path came from, for the messages. Raises ``MissingFileError``
    (no such file) or ``CheckpointError`` (empty, truncated, not a torch file, or pickled Python objects
    that ``weights_only=True`` refuses - loading those would execute code chosen by the file's author). A
    file holding a tensor of a kind training never writes - sparse, nested, quantized, complex or ``meta``,
    anywhere in it - is refused here too, naming the tensor (``refuse_odd_tensors`` of
    :mod:`seg_template.models.finite`): every reader of a file, and every check after it, sees dense real
    tensors only.

    Each file is read once per command. A reader that looks before the command's real work - the recipe
    read before Hydra composes the config and again inside the task (``seg_template.recipe``), the check
    before a resume (``check_resume_checkpoint``) - passes ``keep=True``: the object is kept (one file at a
    time) and the next read of the same, unchanged file gets it without touching the disk; a read with
    ``keep=False`` (the weights loaded into the network, Lightning restoring a resume) takes it and lets it
    go. Whoever reads with ``keep=True`` must not change the object: the later readers get it as read. A file
    replaced between a look and the take is refused by the take (``CheckpointError``): the recipe and the
    weights of one command never come from two files; a later look reads the new file.
    """
    global _kept
    file = resolve_path(path)
    identity = _identity(file)
    if _kept is not None and identity is not None and _kept[0] == identity:
        obj = _kept[1]
        if not keep:
            _kept = None
        return obj
    if _kept is not None and _kept[0][0] == str(file):  # the file was replaced since this command looked at it
        _kept = None
        if not keep:  # its recipe (or the resume check) came from the old file, its weights would not
            raise CheckpointError(
                f"{option}: '{file}' was replaced while this command was using it (after its recipe or resume "
                f"check was read, before its weights were loaded), so the two could come from different files; "
                f"nothing was loaded. Run the command again once the file stays put (e.g. after the run writing "
                f"it has finished), or pass a copy of it.")
    obj = _read_weights_file(path, option)
    refuse_odd_tensors(obj, str(file), option)
    if keep and identity is not None and identity == _identity(file):  # not changed while it was read
        _kept = (identity, obj)
    return obj


def peek_checkpoint(path: str | Path) -> Any:
    """The object stored at ``path`` with its tensors memory-mapped, not read (a cheap look at a checkpoint's
    step or keys, ``weights_only=True``: no code runs); None when it cannot be read. Nothing is kept."""
    file = resolve_path(path)
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file: the caller says what that means
        return None


def _read_weights_file(path: str | Path, option: str) -> Any:
    """The object stored at ``path`` (:func:`read_weights_file`, before the tensors' kinds are checked)."""
    file = resolve_path(path)
    if not file.is_file():
        raise MissingFileError(f"{option}: no file at '{file}' (given as '{path}')")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{option}: '{file}' is empty (0 bytes), e.g. left by an interrupted save or "
                              f"copy; pass another checkpoint (best.ckpt or last.ckpt of the run)")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except Exception as err:  # safetensors raises its own error type for every kind of bad header
            raise CheckpointError(f"{option}: '{file}' is not a readable safetensors file "
                                  f"({type(err).__name__}: {str(err)[:200]})") from err
    try:
        with warnings.catch_warnings():
            # emitted for hand-made pickles, which are refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            # torch's notice when it reads a sparse tensor: refused right after (refuse_odd_tensors)
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants", category=UserWarning)
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None and not _starts_like_torch_file(file):  # "invalid load key", "unsupported operand"
            raise _not_torch_file(option, file) from err
        what = f"Python objects besides tensors (first: {found.group(1)})" if found else "pickled Python objects"
        raise CheckpointError(
            f"{option}: '{file}' stores {what}; reading them would run code from the file, so it is refused "
            f"(torch.load weights_only=True). If you trust whoever made it, re-save its tensors once: load it "
            f"with torch.load's weights_only set to False, then torch.save(ckpt['state_dict'], 'weights.pth') "
            f"(the key holding the weights may be 'model', 'state_dict', ...)") from err
    except Exception as err:  # EOFError, zip errors (RuntimeError), KeyError/IndexError from garbage bytes
        if not _starts_like_torch_file(file):  # a text file: "pop from empty list" says nothing to a user
            raise _not_torch_file(option, file) from err
        raise CheckpointError(f"{option}: '{file}' is not a readable PyTorch checkpoint - truncated by an "
                              f"interrupted save or copy, or another format ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from err


def _starts_like_torch_file(file: Path) -> bool:
    """Whether ``file`` begins as a ``torch.save`` zip or a binary pickle (legacy ``torch.save``) does."""
    with open(file, "rb") as f:
        return f.read(2) in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _not_torch_file(option: str, file: Path) -> CheckpointError:
    return CheckpointError(f"{option}: '{file}' is not a PyTorch checkpoint (neither a torch.save zip nor a "
                           f"pickle: a text file, or another format?)")


def unwrap_state_dict(obj: Any, source: str, option: str = "model.pretrained") -> dict[str, Tensor]:
    """The tensors of ``obj`` (a state dict, or a checkpoint dict holding one under ``NESTED_KEYS``)."""
    # peel containers: Lightning {"state_dict": ...}, torchvision references {"model": ...}
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{option}: '{source}' holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{option}: '{source}' holds no tensors (top-level keys: {_preview(list(obj))})")
    return tensors


def read_state_dict(path: str | Path, option: str = "model.pretrained") -> dict[str, Tensor]:
    """Tensors of a weights file, unwrapped from checkpoint containers; never unpickles arbitrary objects."""
    return unwrap_state_dict(read_weights_file(path, option), str(resolve_path(path)), option)


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


def compare_state(state: Mapping[str, Tensor], target: Mapping[str, Tensor], source: str,
                  mapping: Mapping[str, str] | None = None) -> tuple[LoadReport, dict[str, Tensor]]:
    """Which tensors of ``state`` fit ``target`` (a model's ``state_dict()``): the report and the loadable
    ``{model_key: tensor}``. ``mapping`` (file key -> model key) defaults to identical names."""
    if mapping is None:
        mapping = {k: k for k in state if k in target}
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
    return report, to_load


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "<state dict>",
                    min_coverage: float = 0.5) -> LoadReport:
    """Copy matching tensors of ``state`` into ``model``; skip shape mismatches; raise on a foreign file.

    ``min_coverage``: the fraction of the model's backbone tensors (``CORE_PREFIXES``: ``backbone.*``, smp's
    ``encoder.*``; all tensors if it has neither)
    that must load, else the file is taken to be for another architecture and a ``CheckpointError`` lists
    what did not match.
    """
    target = model.state_dict()
    mapping = match_keys(state, set(target))
    report, to_load = compare_state(state, target, source, mapping)
    core = [k for k in target if k.startswith(CORE_PREFIXES)]
    scope = f"{core[0].split('.')[0]} tensors" if core else "tensors"
    core = core or list(target)
    covered = sum(k in to_load for k in core) / len(core)
    if covered < min_coverage:
        mism = [f"{k} {a}->{b}" for k, a, b in report.mismatched]
        raise CheckpointError(
            f"model.pretrained: '{source}' does not fit {type(model).__name__}: only {covered:.0%} of its "
            f"{scope} matched (need {min_coverage:.0%}); "
            f"the file is probably for another architecture. Unmatched file keys ({len(report.unexpected)}): "
            f"{_preview(report.unexpected)}. Shape mismatches ({len(mism)}): {_preview(mism)}. "
            f"Model keys not found ({len(report.missing)}): {_preview(report.missing)}.")
    loaded = {file_key: state[file_key] for file_key, model_key in mapping.items() if model_key in to_load}
    refuse_nonfinite(loaded, source, "model.pretrained", START_ELSEWHERE)  # tensors left out do no harm
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
    """Load a local weights file into ``model`` leniently (see the module docstring); returns the report."""
    return load_state_into(model, read_state_dict(path), source=str(resolve_path(path)), min_coverage=min_coverage)


def training_overrides(file: Path) -> list[str]:
    """The ``model=`` / ``data=`` options of the run that wrote ``<run>/checkpoints/<file>`` (from
    ``<run>/.hydra/overrides.yaml``), or ``[]`` when that file is not there."""
    overrides = file.parent.parent / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return []
    try:  # the door's reader: a run folder handed over with a checkpoint may be crafted (an alias bomb)
        from seg_template.file_config import read_run_yaml

        items = read_run_yaml(overrides)
    except Exception:  # unreadable, malformed or refused: we only lose the hint
        return []
    if not isinstance(items, list):
        return []
    return [str(o) for o in items if str(o).lstrip("+~").split("=", 1)[0].split(".")[0] in ("model", "data")]


def model_option_changes(checkpoint: Any, configured_model: Mapping[str, Any] | None) -> list[str]:
    """``model.<key>: trained -> now`` for each model option of ``checkpoint``'s recipe that the configured
    model node (plain data) sets otherwise: a builder option that changes the tensors (``model.head_init``,
    ``model.aux``) is the culprit of a mismatch even when it was left at its default in one of the runs."""
    from seg_template.recipe import recipe_changes

    recipe = checkpoint.get("recipe") if isinstance(checkpoint, Mapping) else None
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("model"), Mapping) or configured_model is None:
        return []
    # the options that never change which tensors a network has: where weights come from, how it runs
    same_tensors = ("model.pretrained:", "model.compile:", "model.channels_last:")
    changes = recipe_changes({"model": recipe["model"]}, {"model": configured_model}, limit=100)
    return [c for c in changes if not c.startswith(same_tensors)][:6]


def mismatch_message(report: LoadReport, option: str, what: str, num_classes: Any = None,
                     model_changes: Sequence[str] = ()) -> str:
    """One message for a checkpoint that does not fit: the file, what differs and the options to pass."""
    parts = [f"{option}: '{report.source}' does not fit {what}"]
    if report.mismatched:
        parts.append(f"{len(report.mismatched)} tensors differ in shape: " + _preview(
            [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in report.mismatched], 4))
    if report.missing:
        parts.append(f"{len(report.missing)} model tensors are not in the checkpoint: {_preview(report.missing, 4)}")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} checkpoint tensors are not in the model: "
                     f"{_preview(report.unexpected, 4)}")
    if num_classes is not None:
        parts.append(f"the checkpoint was trained for num_classes={num_classes}")
    if model_changes:
        parts.append("the model options differ from the checkpoint's recipe (trained -> now): "
                     + ", ".join(model_changes))
    used = training_overrides(Path(report.source))
    hint = (f"the run that wrote it used: {' '.join(used)}" if used else
            "see <run>/.hydra/overrides.yaml of the run that wrote it")
    return "; ".join(parts) + f". Pass the model= / data= options it was trained with ({hint})."


def exact_fit(state: Mapping[str, Tensor], target: nn.Module, source: str, option: str = "ckpt_path",
              checkpoint: Any = None, configured_model: Mapping[str, Any] | None = None,
              ) -> tuple[LoadReport, dict[str, Tensor]]:
    """``state`` checked to be exactly ``target``'s tensors: the same names, each with its shape. Returns the
    report and ``{name: tensor}`` to load; else a ``CheckpointError`` (:func:`mismatch_message`) naming
    ``option``, the file ``source``, what differs, the class count ``checkpoint`` (the whole file's object)
    was trained for, and the options to pass. Eval / predict / export (:func:`load_net_weights`) and the
    check before a resume (``check_resume_checkpoint``) both ask here."""
    report, to_load = compare_state(state, target.state_dict(), source)
    if report.missing or report.unexpected or report.mismatched:
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
        classes = hparams.get("num_classes") if isinstance(hparams, Mapping) else None
        raise CheckpointError(mismatch_message(report, option, f"the configured model ({type(target).__name__})",
                                               classes, model_option_changes(checkpoint, configured_model)))
    return report, to_load


def load_net_weights(net: nn.Module, path: str | Path, option: str = "ckpt_path",
                     configured_model: Mapping[str, Any] | None = None) -> LoadReport:
    """Load a checkpoint's network weights into ``net`` strictly (eval, predict).

    A Lightning ``.ckpt`` of ours contributes its ``net.*`` tensors; any other file is taken as the
    network's own state dict (``module.`` / ``_orig_mod.`` wrapper prefixes dropped). Every tensor of
    ``net`` must be present with its shape, and nothing else, else ``CheckpointError`` names the file,
    the differing tensors with both shapes, and the options to pass. A file holding NaN or inf is refused
    as well. ``net.weights_source`` then names the file (``"ckpt_path: '/abs/best.ckpt'"``).
    """
    source = str(resolve_path(path))
    obj = read_weights_file(path, option)
    state = unwrap_state_dict(obj, source, option)
    if any(k.startswith("net.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("net.")}  # not the loss's buffers
        own = {k[len("net."):].replace("_orig_mod.", ""): v for k, v in state.items()}
    else:
        own = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in state.items()}
    target = getattr(net, "_orig_mod", net)
    report, to_load = exact_fit(own, target, source, option, obj, configured_model)
    refuse_nonfinite(state, source, option)  # NaN weights give NaN logits, whose argmax is class 0 everywhere
    target.load_state_dict(to_load)
    net.weights_source = f"{option}: '{source}'"  # for InferenceModel's messages (seg_template/inference)
    log.info("Loaded %d tensors from %s", len(report.loaded), source)
    return report
