"""Prediction task: segment images with a checkpoint and write index and colour masks.

``python predict.py ckpt_path=<ckpt> input=<image | folder | [images]> [inference=slide ...]``. A folder is
searched recursively and its sub-folders are mirrored under ``masks/`` and ``color/``, so two ``0001.png``
in different folders never overwrite each other. An unreadable image is named and skipped; the others are
still written, and the run ends with an error listing the skipped files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from seg_template.build import build_net, require_ckpt_path
from seg_template.cli import hydra_main
from seg_template.data.io import IMAGE_EXTENSIONS, list_images, read_image
from seg_template.errors import ConfigError, DataError, MissingFileError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def input_files(spec: str | Sequence[str]) -> list[tuple[Path, Path]]:
    """``(file, output name)`` pairs for ``spec``: one image, a folder (recursive; the output name keeps the
    sub-folder, with a ``.png`` suffix) or a list of images (named by their file names)."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[tuple[Path, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = list_images(path, recursive=True)
            if not found:
                raise MissingFileError(f"input folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend((f, f.relative_to(path).with_suffix(".png")) for f in found)
        elif path.is_file():
            files.append((path, Path(path.name).with_suffix(".png")))
        else:
            raise MissingFileError(f"input={path} is neither an image file nor a folder")
    names = [name for _, name in files]
    if len(set(names)) != len(names):
        raise ConfigError("input lists images with the same file name from different folders; their masks "
                          "would overwrite each other: pass their common parent folder instead")
    return files


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


def predict_files(model: torch.nn.Module, files: Iterable[tuple[Path, Path]], transform, palette: np.ndarray,
                  output_dir: Path, device: torch.device) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Write ``masks/<name>`` (uint8 class ids) and ``color/<name>`` for each ``(file, name)``.

    Returns the written index masks and the skipped ``(file, reason)`` pairs. ``transform`` is the data
    config's eval pipeline (normalisation); the model maps ``[1, 3, H, W]`` to ``[1, C, H, W]`` logits.
    """
    import torch
    from PIL import Image

    written, skipped = [], []
    with torch.inference_mode():
        for path, name in files:
            try:
                image = read_image(path)
            except DataError as err:
                log.warning("skipped %s: %s", path, err)
                skipped.append((path, str(err)))
                continue
            pixels = transform(image=image)["image"]
            batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))[None]
            labels = model(batch.to(device)).argmax(1)[0].to(torch.uint8).cpu().numpy()  # [H, W]
            mask_path, color_path = output_dir / "masks" / name, output_dir / "color" / name
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            color_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(mask_path)
            Image.fromarray(palette[labels]).save(color_path)
            written.append(mask_path)
    return written, skipped


def run_predict(cfg: DictConfig) -> list[Path]:
    """Segment ``cfg.input`` with ``cfg.ckpt_path``; returns the written index masks. Raises ``DataError``
    listing the skipped files after writing the others."""
    from hydra.utils import instantiate

    from seg_template.data.palette import dataset_palette
    from seg_template.inference import InferenceModel
    from seg_template.models.weights import load_net_weights

    ckpt_path = require_ckpt_path(cfg, "predict.py")
    if OmegaConf.is_missing(cfg, "input"):
        raise ConfigError("input is required: python predict.py ckpt_path=<ckpt> input=<image | folder>")
    spec = cfg.input
    files = input_files(list(spec) if isinstance(spec, ListConfig) else str(spec))
    if int(cfg.data.num_classes) > 256:
        raise ConfigError(f"data.num_classes={cfg.data.num_classes}: index masks are uint8 PNGs (<= 256)")
    output_dir = Path(cfg.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir={output_dir} cannot be created: {err}") from err
    net, _ = build_net(cfg.model)
    load_net_weights(net, ckpt_path)
    device = resolve_device(cfg.device)
    model = InferenceModel(net, **OmegaConf.to_container(cfg.inference, resolve=True)).to(device).eval()
    written, skipped = predict_files(model, files, instantiate(cfg.data.val_transform),
                                     dataset_palette(cfg.data), output_dir, device)
    log.info("Wrote %d masks to %s (masks/ = class ids, color/ = palette)", len(written), output_dir)
    if skipped:
        listed = "\n  ".join(f"{path}: {reason}" for path, reason in skipped)
        raise DataError(f"{len(skipped)} of {len(files)} input images could not be read and were skipped "
                        f"(the other masks are written):\n  {listed}")
    return written


def run_task(cfg: DictConfig) -> None:
    run_predict(cfg)


def main() -> None:
    """Entry point of ``python predict.py ckpt_path=<ckpt> input=<images>``."""
    hydra_main("predict", run_task)


if __name__ == "__main__":
    main()
