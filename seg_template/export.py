"""Export task: a checkpoint to ONNX, checked against PyTorch before it is called a success.

``python export.py ckpt_path=<ckpt> [output_file=model.onnx] [export.check_shapes=[[1,512,1024]]]``. The model
comes from the checkpoint's recipe, which also travels inside the ONNX file (``predict.py model_file=`` reads
it). The file has dynamic batch, height and width; onnxruntime (CPU) and PyTorch then run the same random
inputs of every ``export.check_shapes`` and the export fails, leaving no ``model.onnx``, unless the logits
agree within ``export.atol`` and the argmax on at least ``export.min_agreement`` of the pixels. A NaN or inf
logit on either side fails it too (a checkpoint holding NaN/inf is refused when it is read).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from seg_template.build import build_net, require_ckpt_path
from seg_template.cli import hydra_main
from seg_template.errors import CheckpointError, ConfigError, UserError
from seg_template.recipe import (
    check_recipe_options,
    read_checkpoint_recipe,
    recipe_argv,
    recipe_from,
    with_recipe,
)

log = logging.getLogger(__name__)


class ExportMismatch(UserError, RuntimeError):
    """onnxruntime's results differ from PyTorch's beyond the tolerance: the exported file is not trusted. A
    result to act on (another exporter or opset, or a tolerance), printed as one block like a user error."""


def _shapes(cfg: DictConfig) -> list[tuple[int, int, int]]:
    shapes = [tuple(int(v) for v in s) for s in cfg.export.check_shapes]
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise ConfigError(f"export.check_shapes must be a list of [batch, height, width], got {cfg.export.check_shapes}")
    return shapes  # type: ignore[return-value]


def is_our_export(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model that export wrote (a ModelProto with a graph output and our recipe
    in its metadata, ``seg_template.recipe``): the only file export replaces."""
    import onnx

    from seg_template.onnx_model import RECIPE_KEY

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, or anything else a foreign file causes
        return False
    ours = any(entry.key == RECIPE_KEY for entry in model.metadata_props)
    return model.ir_version > 0 and len(model.graph.output) > 0 and ours


def check_output_file(output_file: str | Path, ckpt_path: str | Path) -> Path:
    """The file export writes, checked before anything is read: an ``.onnx`` name, not the checkpoint being
    exported (same path or same file through a link), and no existing file there, nor at the
    ``.unverified.onnx`` name kept beside it, unless it is an earlier export (:func:`is_our_export`). A
    ``ConfigError`` names the file otherwise: export replaced whatever ``output_file=`` named, another
    tool's ONNX model included."""
    target = Path(output_file).expanduser()
    if target.suffix.lower() != ".onnx":
        raise ConfigError(f"output_file={output_file}: export writes an ONNX model, so the name must end in .onnx "
                          "(e.g. output_file=model.onnx)")
    source = Path(ckpt_path).expanduser()
    for path in (target, target.with_name(target.stem + ".unverified.onnx")):
        if not os.path.lexists(path):
            continue
        if path.is_dir():
            raise ConfigError(f"output_file={output_file}: {path} is a folder; name a file, e.g. "
                              f"output_file={path / 'model.onnx'}")
        if path.exists() and source.exists() and os.path.samefile(path, source):
            raise ConfigError(f"output_file={output_file} is the checkpoint being exported (ckpt_path={ckpt_path}): "
                              "export would replace it. Name another file, e.g. output_file=model.onnx")
        if path.is_file() and not is_our_export(path):
            raise ConfigError(f"output_file={output_file}: {path} exists and is not a model export.py wrote (no "
                              "seg_template recipe in its metadata), so export would replace it. Name a new file "
                              "(or an earlier export's .onnx), or move that file")
    try:  # a folder that cannot take the file fails now, not after the export and its check
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".write_test_"):
            pass
    except OSError as err:
        raise ConfigError(f"output_file={output_file}: {target.parent} cannot be written ({err.strerror or err}); "
                          "name a file in a writable folder") from None
    return target


def run_export(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Path:
    """Export ``cfg.ckpt_path`` to ``cfg.output_file`` and check it; returns the file's path.

    ``overrides`` (Hydra syntax) win over the checkpoint's recipe (default: the command line's). Raises
    ``ExportMismatch`` when onnxruntime disagrees with PyTorch (the file is then kept beside the target as
    ``<name>.unverified.onnx`` for inspection, never as the target).
    """
    import torch

    from seg_template.models.weights import load_net_weights
    from seg_template.onnx_model import check_parity, export_onnx, require_onnx
    from seg_template.options import check_options

    ckpt_path = require_ckpt_path(cfg, "export.py")
    require_onnx("onnx", "onnxruntime", "onnxscript")
    check_options(cfg)  # typed options (export.check_shapes=[[1,abc,3]]...) before anything is read
    shapes = _shapes(cfg)
    check_output_file(cfg.output_file, ckpt_path)  # never writes over the checkpoint or a file of another kind
    recipe = read_checkpoint_recipe(ckpt_path)
    cfg = with_recipe(cfg, ckpt_path, recipe, overrides, "export.py")
    check_recipe_options(cfg, ckpt_path, recipe, overrides)  # the recipe's values with the typed options, as eval does
    target = Path(cfg.output_file)
    net, align_corners = build_net(cfg.model)
    load_net_weights(net, ckpt_path, configured_model=OmegaConf.to_container(cfg.model))
    net.eval()
    stored = recipe_from(cfg)  # the recipe as used here (with the overrides), for predict.py model_file=
    stored["choices"] = (recipe or {}).get("choices") or stored["choices"]
    n, h, w = shapes[0]
    unverified = target.with_name(target.stem + ".unverified.onnx")
    log.info("Exporting %s to ONNX (%s exporter, opset %s), traced at %dx3x%dx%d", ckpt_path,
             "dynamo" if cfg.export.get("dynamo", True) else "TorchScript", cfg.export.opset or "default", n, h, w)
    export_onnx(net, unverified, torch.randn(n, 3, h, w), align_corners, stored, cfg.export.opset,
                bool(cfg.export.get("dynamo", True)))
    parity = check_parity(net, unverified, shapes, align_corners, threads=int(cfg.export.threads))
    log.info("%s", parity.summary())
    if not parity.finite("PyTorch"):  # the weights are finite (the loader checked), the model's logits are not
        raise CheckpointError(
            f"ckpt_path: the model of '{ckpt_path}' gives non-finite logits on random normalised images "
            f"({parity.summary()}), so its exported file could not be trusted either; its weights are finite, yet "
            f"too large to compute with (the state of a run on the edge of diverging?): export an earlier "
            f"checkpoint of the run. The file is left at {unverified} for inspection")
    atol, rtol, agreement = float(cfg.export.atol), float(cfg.export.get("rtol", 0.0)), float(
        cfg.export.min_agreement)
    if not parity.ok(atol, agreement, rtol):
        if parity.agreement >= agreement:  # the same classes everywhere: only the logits' rounding is off
            fix = (f"the predicted classes agree, so the difference is rounding of logits as large as "
                   f"{parity.scale:.3g}: accept it with export.rtol=<larger> (now {rtol:g}) or export.atol=<larger>")
        else:
            fix = (f"the predicted classes differ: try the other exporter (export.dynamo="
                   f"{str(not cfg.export.get('dynamo', True)).lower()}) or another export.opset")
        raise ExportMismatch(
            f"the ONNX export of {ckpt_path} does not reproduce PyTorch: {parity.summary()}; required: max "
            f"|difference| <= {parity.tolerance(atol, rtol):.3g} (export.atol {atol:g} + export.rtol {rtol:g} x "
            f"the largest |logit| {parity.scale:.3g}) and agreement >= {100 * agreement:.2f}%. {fix}. The file "
            f"is left at {unverified} for inspection")
    os.replace(unverified, target)
    classes = int(cfg.data.num_classes)
    log.info("Wrote %s: input images[batch, 3, height, width] float32 (RGB normalised as data.val_transform), "
             "output logits[batch, %d, height, width]; run it with: python predict.py model_file=%s input=<images>",
             target, classes, target)
    return target


def run_task(cfg: DictConfig) -> None:
    run_export(cfg)


def main() -> None:
    """Entry point of ``python export.py ckpt_path=<ckpt> [overrides]``."""
    sys.argv = recipe_argv(sys.argv, ("data", "model"))
    hydra_main("export", run_task)


if __name__ == "__main__":
    main()
