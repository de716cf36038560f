"""Prediction task: segment images with a checkpoint (or an exported ONNX file) and write masks and overlays.

``python predict.py ckpt_path=<ckpt> input=<image | folder | [images]> [inference=slide ...]``, or
``model_file=model.onnx`` instead of ``ckpt_path`` to run the exported model through onnxruntime with the same
pre- and post-processing. The data config (normalisation, class names, palette) and the model come from the
recipe stored in the file; options typed on the command line win over it.

A folder is searched recursively and its sub-folders are mirrored under every output folder (see
seg_template/predict_outputs.py), so two ``0001.png`` in different folders never overwrite each other. Images
of one size are batched (``batch_size``); an unreadable file is named and skipped, the others are still
written, and the run ends with an error listing the skipped files.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from seg_template.cli import hydra_main
from seg_template.errors import ConfigError, DataError
from seg_template.options import check_options
from seg_template.predict_inputs import input_files
from seg_template.recipe import check_recipe_options, recipe_argv, with_recipe

if TYPE_CHECKING:
    import torch

__all__ = ["input_files", "main", "resolve_device", "run_predict"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``device=auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:1``...; a ``ConfigError`` for a
    name torch does not know or a GPU this machine does not have (torch would fail later, unnamed)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"device={name} is not a torch device: use auto, cpu, cuda or cuda:<index>") from err
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= gpus:
        raise ConfigError(f"device={name}: this machine has {gpus} CUDA GPU(s); use device=auto or device=cpu")
    return device


def _source(cfg: DictConfig) -> tuple[str, str]:
    """``(option, path)`` of the model to run: ``model_file`` (ONNX) or ``ckpt_path``, exactly one."""
    ckpt = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.get("ckpt_path")
    onnx_file = cfg.get("model_file")
    if ckpt and onnx_file:
        raise ConfigError(f"pass ckpt_path or model_file, not both (got ckpt_path={ckpt} model_file={onnx_file})")
    if onnx_file:
        if not str(onnx_file).lower().endswith(".onnx"):
            raise ConfigError(f"model_file={onnx_file} is not an .onnx file (checkpoints go to ckpt_path=)")
        return "model_file", str(onnx_file)
    if not ckpt:
        raise ConfigError("ckpt_path is required: python predict.py ckpt_path=<run>/checkpoints/best.ckpt "
                          "input=<image | folder> (or model_file=model.onnx from export.py)")
    return "ckpt_path", str(ckpt)


def _build_net(cfg: DictConfig, option: str, path: str, device: torch.device,
               overrides: Sequence[str] | None) -> tuple[Any, DictConfig]:
    """The network to run and the config it is run with (the file's recipe under ``overrides``)."""
    from seg_template.models.weights import resolve_path

    if option == "model_file":
        from seg_template.onnx_model import OnnxNet, require_onnx

        require_onnx("onnxruntime")
        file = resolve_path(path)
        if not file.is_file():
            from seg_template.errors import MissingFileError

            raise MissingFileError(f"model_file: no file at '{file}' (given as '{path}')")
        net = OnnxNet(file, device=str(device))
        cfg = with_recipe(cfg, path, net.recipe, overrides, "predict.py", option)
        check_recipe_options(cfg, path, net.recipe, overrides, option)
        net.expect_classes(int(cfg.data.num_classes))  # at once, or at the first batch when the file does not say
        return net, cfg
    from seg_template.build import build_net
    from seg_template.models.weights import load_net_weights
    from seg_template.recipe import read_checkpoint_recipe

    recipe = read_checkpoint_recipe(path)
    cfg = with_recipe(cfg, path, recipe, overrides, "predict.py", option)
    check_recipe_options(cfg, path, recipe, overrides, option)
    net, _ = build_net(cfg.model)
    load_net_weights(net, path, configured_model=OmegaConf.to_container(cfg.model))
    return net.to(device), cfg


def _inputs_only(files: list[tuple[Path, Path]], spec: Any, output_dir: Path,
                 log_dir: str | None) -> list[tuple[Path, Path]]:
    """``files`` without predict's own outputs (``predict_outputs.without_outputs``), saying how many were
    left out; a ``ConfigError`` when nothing is left."""
    from seg_template.predict_outputs import without_outputs

    kept, left_out = without_outputs(files, output_dir, Path(log_dir) if log_dir else None)
    where = f"predict's output folders (output_dir={output_dir} and earlier runs') or paths.log_dir={log_dir}"
    if left_out and not kept:
        raise ConfigError(f"input={spec}: all {left_out} images found lie in {where}, which are never inputs; "
                          "point input at the images themselves")
    if left_out:
        log.info("Left out %d of the %d images found: they lie in %s", left_out, len(files), where)
    return kept


def run_predict(cfg: DictConfig, overrides: Sequence[str] | None = None) -> list[Path]:
    """Segment ``cfg.input`` with ``cfg.ckpt_path`` or ``cfg.model_file``; returns the written index masks.

    ``overrides`` (Hydra syntax) win over the file's recipe (default: the command line's). Raises
    ``DataError`` listing the skipped files after writing the others.
    """
    import torch
    from hydra.utils import get_class, instantiate

    from seg_template.data.palette import dataset_palette
    from seg_template.inference import InferenceModel
    from seg_template.predict_inputs import DEFAULT_MAX_IMAGE_PIXELS, image_loader
    from seg_template.predict_outputs import OutputWriter, ProgressReport, check_writable, submission_table

    check_options(cfg)  # the typed options, before anything is read (again below, under the file's recipe)
    option, path = _source(cfg)
    if OmegaConf.is_missing(cfg, "input") or not cfg.get("input"):
        raise ConfigError("input is required: python predict.py ckpt_path=<ckpt> input=<image | folder>")
    spec = cfg.input
    files = input_files(list(spec) if isinstance(spec, ListConfig) else str(spec))
    output_dir = check_writable(Path(cfg.output_dir))  # before any model is built or image read
    files = _inputs_only(files, spec, output_dir, OmegaConf.select(cfg, "paths.log_dir", default=None))
    device = resolve_device(cfg.device)
    net, cfg = _build_net(cfg, option, path, device, overrides)
    if option == "model_file" and net.device != device.type:
        log.info("onnxruntime runs %s on the %s (its CUDA provider needs onnxruntime-gpu)", path, net.device)
        device = resolve_device(net.device)
    classes = int(cfg.data.num_classes)
    if classes > 256:
        raise ConfigError(f"data.num_classes={classes}: index masks are uint8 PNGs (<= 256 classes)")
    model = InferenceModel(net, **OmegaConf.to_container(cfg.inference, resolve=True)).eval()
    split = cfg.data.get("val_set") or cfg.data.get("train_set")
    table = submission_table(get_class(split._target_), classes) if cfg.get("submission_ids") else None
    palette = dataset_palette(cfg.data)
    names = list(cfg.data.get("class_names") or [str(i) for i in range(classes)])
    writer = OutputWriter(output_dir, palette, names, alpha=cfg.get("overlay_alpha", 0.5), submission=table,
                          legend=cfg.get("legend", True))
    limit = cfg.max_image_pixels if "max_image_pixels" in cfg else DEFAULT_MAX_IMAGE_PIXELS  # null: no limit
    loader = image_loader(files, instantiate(cfg.data.val_transform), cfg.batch_size, cfg.num_workers,
                          pin_memory=device.type == "cuda", max_image_pixels=limit)
    log.info("Predicting %d images with %s=%s on %s (%s)", len(files), option, path, device, dict(cfg.inference))
    written, skipped = [], []
    progress = ProgressReport(len(files))
    with torch.inference_mode():
        for batch in loader:
            for file, reason in batch["errors"]:
                log.warning("skipped %s: %s", file, reason)
                skipped.append((file, reason))
            if "image" in batch:
                # class ids in every inference mode, including bounded sliding windows on huge images
                labels = model.predict_labels(batch["image"].to(device, non_blocking=True), dtype=torch.uint8,
                                              names=batch["name"]).cpu()  # names: for an error's message
                for name, rgb, mask in zip(batch["name"], batch["rgb"], labels.numpy(), strict=True):
                    written.append(writer.write(name, rgb, mask))
            progress.update(len(batch["errors"]) + len(batch["name"]))
    progress.close()
    folders = "masks/ = class ids, color/ = palette, overlay/ = image + colours + legend"
    if table is not None:
        folders += ", submission/ = the dataset's official ids"
    log.info("Wrote %d images' outputs to %s (%s)", len(written), output_dir, folders)
    if skipped:
        listed = "\n  ".join(reason if str(file) in reason else f"{file}: {reason}" for file, reason in skipped)
        raise DataError(f"{len(skipped)} of {len(files)} input images could not be read and were skipped "
                        f"(the other outputs are written):\n  {listed}")
    return written


def run_task(cfg: DictConfig) -> None:
    run_predict(cfg)


def main() -> None:
    """Entry point of ``python predict.py ckpt_path=<ckpt> input=<images>``."""
    sys.argv = recipe_argv(sys.argv, ("data", "model"), sources=("model_file", "ckpt_path"))
    hydra_main("predict", run_task)


if __name__ == "__main__":
    main()
