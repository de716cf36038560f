"""Prediction entry point: segment images with a checkpoint and write index and colour masks.

``python predict.py ckpt_path=<ckpt> input=<image | folder | [images]> [inference.mode=slide ...]``
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from seg_template.eval import require_ckpt_path
from seg_template.inference import InferenceModel, load_net_weights
from seg_template.utils import CONFIG_DIR

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(spec: str | Sequence[str]) -> list[Path]:
    """The image files named by ``spec``: one file, every image in a folder (sorted), or a list of files."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"input folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} is neither an image file nor a folder")
    return files


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for datasets without a palette: the Pascal VOC bit-interleaving scheme."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        label, shift = index, 7
        while label:
            for channel in range(3):
                palette[index, channel] |= ((label >> channel) & 1) << shift
            label >>= 3
            shift -= 1
    return palette


def dataset_palette(data_cfg: DictConfig) -> np.ndarray:
    """``uint8[num_classes, 3]``: the palette of the data config's dataset class, else ``default_palette``."""
    num_classes = int(data_cfg.num_classes)
    split = data_cfg.get("val_set") or data_cfg.get("train_set")
    palette = getattr(get_class(split._target_), "palette", None) if split is not None else None
    if palette is None or len(palette) < num_classes:
        return default_palette(num_classes)
    return np.asarray(palette, dtype=np.uint8)[:num_classes]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict_files(model: torch.nn.Module, files: Iterable[Path], transform, palette: np.ndarray,
                  output_dir: Path, device: torch.device) -> list[Path]:
    """Write ``masks/<stem>.png`` (uint8 class ids) and ``color/<stem>.png`` for each file; returns the
    index-mask paths. ``transform`` is the data config's eval pipeline (normalisation)."""
    (output_dir / "masks").mkdir(parents=True, exist_ok=True)
    (output_dir / "color").mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        pixels = transform(image=image)["image"]
        if pixels.dtype == np.uint8:
            pixels = pixels.astype(np.float32) / 255.0
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))[None]
        labels = model(batch.to(device)).argmax(1)[0].to(torch.uint8).cpu().numpy()  # [H, W]
        mask_path = output_dir / "masks" / f"{path.stem}.png"
        Image.fromarray(labels).save(mask_path)
        Image.fromarray(palette[labels]).save(output_dir / "color" / f"{path.stem}.png")
        written.append(mask_path)
    return written


def run_predict(cfg: DictConfig) -> list[Path]:
    """Segment ``cfg.input`` with ``cfg.ckpt_path``; returns the written index masks."""
    ckpt_path = require_ckpt_path(cfg, "predict.py")
    if OmegaConf.is_missing(cfg, "input"):
        raise ValueError("input is required: python predict.py ckpt_path=<ckpt> input=<image | folder>")
    spec = cfg.input
    files = list_images(list(spec) if isinstance(spec, ListConfig) else str(spec))
    if int(cfg.data.num_classes) > 256:
        raise ValueError(f"data.num_classes={cfg.data.num_classes}: index masks are uint8 PNGs (<= 256)")
    net = instantiate(cfg.model)
    load_net_weights(net, ckpt_path)
    device = resolve_device(cfg.device)
    model = InferenceModel(net, **OmegaConf.to_container(cfg.inference, resolve=True)).to(device).eval()
    output_dir = Path(cfg.output_dir)
    written = predict_files(model, files, instantiate(cfg.data.val_transform), dataset_palette(cfg.data),
                            output_dir, device)
    log.info("Wrote %d masks to %s (masks/ = class ids, color/ = palette)", len(written), output_dir)
    return written


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    run_predict(cfg)


if __name__ == "__main__":
    main()
