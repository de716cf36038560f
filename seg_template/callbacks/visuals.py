"""Pictures of the model at work during training: after each validation, a grid of a few fixed validation
images, one row each — image | ground truth | prediction — written to ``<run>/images/val_epoch_<k>.png``
and to TensorBoard, W&B or MLflow when those loggers are on.

The class colours are laid over a grey copy of the image (its own colours would shift their hue). The grid
is drawn with numpy + PIL (``seg_template.visualize``), not matplotlib: it is redrawn every epoch,
and a figure costs ten times more. ``k`` is the 0-based epoch, as in ``metrics.csv`` and the checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from seg_template.data.base import IMAGENET_MEAN, IMAGENET_STD
from seg_template.data.palette import default_palette
from seg_template.data.preflight import sample_indices
from seg_template.models.outputs import logits_at, main_logits
from seg_template.visualize import font, legend_panel, overlay

log = logging.getLogger("seg_template")

#: Pascal VOC's colour for its "void" boundary band: how people expect ignored pixels to look
IGNORE_COLOUR = (224, 224, 192)
COLUMNS = ("image", "ground truth", "prediction")
GAP = 4  # pixels of white between tiles


def find_normalize(transform: Any) -> Any | None:
    """The albumentations ``Normalize`` step in ``transform`` (searched through nested ``.transforms``)."""
    if transform is None:
        return None
    if type(transform).__name__ == "Normalize" and hasattr(transform, "mean"):
        return transform
    for step in getattr(transform, "transforms", None) or ():
        found = find_normalize(step)
        if found is not None:
            return found
    return None


def to_display(image: Tensor, transform: Any = None) -> np.ndarray:
    """``image`` float[3, H, W] as the dataset returned it -> ``uint8[H, W, 3]`` for people.

    Undoes the transform's ``Normalize`` (ImageNet mean/std unless it says otherwise); without one, the
    dataset scaled the pixels to [0, 1]. A normalisation that cannot be inverted is min-max stretched.
    """
    pixels = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    norm = find_normalize(transform)
    if norm is not None and getattr(norm, "normalization", "standard") in ("standard", None):
        scale = float(getattr(norm, "max_pixel_value", 255.0) or 255.0)
        mean = np.asarray(norm.mean if norm.mean is not None else IMAGENET_MEAN, dtype=np.float32) * scale
        std = np.asarray(norm.std if norm.std is not None else IMAGENET_STD, dtype=np.float32) * scale
        pixels = pixels * std + mean
    elif norm is not None:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) / max(high - low, 1e-6) * 255.0
    else:
        pixels = pixels * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _scaled(height: int, width: int, size: int) -> tuple[float, int, int]:
    scale = size / max(height, width)
    return scale, max(1, round(height * scale)), max(1, round(width * scale))


def resize_tile(image: np.ndarray, labels: Sequence[np.ndarray],
                size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scale ``image`` uint8[H, W, 3] (bilinear) and each ``labels[H, W]`` (nearest) so that the longer side
    is ``size`` pixels."""
    height, width = image.shape[:2]
    scale, new_h, new_w = _scaled(height, width, size)
    if (new_h, new_w) == (height, width):
        return image, list(labels)
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    rows = np.minimum((np.arange(new_h) + 0.5) / scale, height - 1).astype(np.int64)
    cols = np.minimum((np.arange(new_w) + 0.5) / scale, width - 1).astype(np.int64)
    return image, [lab[rows[:, None], cols[None, :]] for lab in labels]


def enlarge(picture: np.ndarray, size: int) -> np.ndarray:
    """``picture`` uint8[H, W, 3] enlarged (nearest) until its longer side is ``size``; larger ones unchanged."""
    height, width = picture.shape[:2]
    _, new_h, new_w = _scaled(height, width, size)
    if new_h <= height:
        return picture
    return np.asarray(Image.fromarray(picture).resize((new_w, new_h), Image.NEAREST))


def _font_size(tile_size: int) -> int:
    return max(11, min(18, tile_size // 14))


def header_height(tile_size: int, title: bool = True) -> int:
    """Pixels above the first row of a :func:`prediction_grid`: the title line, then the column names."""
    size = _font_size(tile_size)
    return size + 2 * GAP + (size + 2 * GAP if title else 0)


def prediction_grid(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], palette: np.ndarray,
                    class_names: Sequence[str], ignore_index: int, title: str = "", tile_size: int = 256,
                    alpha: float = 0.6) -> np.ndarray:
    """``uint8[H, W, 3]``: one row per ``(image uint8[h, w, 3], target int[h, w], prediction int[h, w])``:
    the image, then the ground truth and the prediction as colour overlays; ignored pixels in VOC's void
    colour; a legend of the classes shown at the right.

    ``H = header_height(tile_size, bool(title)) + sum(row height + GAP)``: every tile's longer side is
    ``tile_size`` and each row is as tall as its tiles (wide images make short rows, not blank bands).
    """
    palette = np.asarray(palette, dtype=np.uint8)
    font_size = _font_size(tile_size)
    header = header_height(tile_size, bool(title))
    tiles, present, has_ignore = [], set(), False
    for image, target, pred in rows:
        # colour at the smaller of the two resolutions: shrink a large image first, enlarge a small one last
        # (nearest: its pixels stay crisp), so the cost does not grow with the picture
        if max(image.shape[:2]) > tile_size:
            image, (target, pred) = resize_tile(image, (target, pred), tile_size)
        ignored = target == ignore_index
        has_ignore |= bool(ignored.any())
        # the class colours go over a grey copy: the image's own colours would change their hue
        grey = np.repeat(np.rint(image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None], 3, -1)
        truth = overlay(grey, np.where(ignored, len(palette), target), palette, alpha)
        truth[ignored] = IGNORE_COLOUR
        present |= set(np.unique(target[~ignored]).tolist()) | set(np.unique(pred).tolist())
        tiles.append([enlarge(t, tile_size) for t in (image, truth, overlay(grey, pred, palette, alpha))])
    width = len(COLUMNS) * (tile_size + GAP) + GAP
    heights = [max(tile.shape[0] for tile in row) for row in tiles]
    height = header + sum(h + GAP for h in heights)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        y = header + sum(h + GAP for h in heights[:r])
        for c, tile in enumerate(row):
            x = GAP + c * (tile_size + GAP)
            canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    picture = Image.fromarray(canvas)
    draw, face = ImageDraw.Draw(picture), font(font_size)
    if title:
        draw.text((GAP, GAP), title, fill=(0, 0, 0), font=face)
    for c, name in enumerate(COLUMNS):
        draw.text((GAP + c * (tile_size + GAP), header - font_size - GAP), name, fill=(0, 0, 0), font=face)
    entries = [(class_names[i] if i < len(class_names) else str(i), tuple(int(v) for v in palette[i]))
               for i in sorted(present) if 0 <= i < len(palette)]
    if has_ignore:
        entries.append((f"ignored ({ignore_index})", IGNORE_COLOUR))
    legend = legend_panel(entries, height, font_size)[:height]
    return np.concatenate([np.asarray(picture), legend], axis=1)


class ValidationImages(Callback):
    """After each validation (not the sanity check), draws :func:`prediction_grid` for ``num_images`` fixed
    validation samples into ``dirpath/val_epoch_<k>.png`` and the active image-capable loggers.

    Global rank 0 only. It calls the module's ``net`` directly (not the DDP wrapper) in eval mode under
    ``no_grad``, so no collective operation runs and the other ranks need not take part. ``seconds`` adds
    up the time spent here (the run's log gets it at the end of fit).
    """

    def __init__(self, dirpath: str | Path, num_images: int = 4, every_n_epochs: int = 1,
                 tile_size: int = 256, alpha: float = 0.6, log_to_loggers: bool = True) -> None:
        if num_images < 1 or every_n_epochs < 1 or tile_size < 16:
            raise ValueError("callbacks.val_images: num_images and every_n_epochs must be >= 1 and tile_size "
                             f">= 16, got {num_images}, {every_n_epochs}, {tile_size}")
        self.dirpath = Path(dirpath)
        self.num_images, self.every_n_epochs = int(num_images), int(every_n_epochs)
        self.tile_size, self.alpha, self.log_to_loggers = int(tile_size), float(alpha), bool(log_to_loggers)
        self.indices: list[int] | None = None  # chosen once, at the first validation
        self.seconds, self.written = 0.0, 0
        self._fit_start = time.monotonic()
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ hooks
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if (trainer.sanity_checking or not trainer.is_global_zero
                or ((trainer.current_epoch + 1) % self.every_n_epochs and not last_epoch)):
            return
        if any(name in type(trainer.strategy).__name__ for name in ("FSDP", "DeepSpeed")):
            # their forward gathers sharded weights from every rank: rank 0 alone would wait forever
            self._warn_once("sharded", "callbacks.val_images: skipped under %s (sharded weights)",
                            type(trainer.strategy).__name__)
            return
        start = time.perf_counter()
        grid = self.draw(trainer, pl_module)
        if grid is not None:
            epoch = trainer.current_epoch
            width = len(str(max((trainer.max_epochs or 0) - 1, 0))) if (trainer.max_epochs or 0) > 0 else 3
            self.dirpath.mkdir(parents=True, exist_ok=True)
            path = self.dirpath / f"val_epoch_{epoch:0{width}d}.png"
            Image.fromarray(grid).save(path, compress_level=3)  # level 6 costs 2x the time for 8% less
            if self.log_to_loggers:
                self.send_to_loggers(trainer, grid, path)
            self.written += 1
        self.seconds += time.perf_counter() - start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.monotonic()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.written:
            fit = max(time.monotonic() - self._fit_start, 1e-9)
            log.info("Validation images: %d grid(s) in %s (%.1f s, %.1f%% of the fit's %.0f s)", self.written,
                     self.dirpath, self.seconds, 100 * self.seconds / fit, fit)

    # ------------------------------------------------------------------ drawing
    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> np.ndarray | None:
        """The grid for the current weights, or None when there is no validation set to draw from."""
        dataset = _val_dataset(trainer)
        if dataset is None or len(dataset) == 0:
            self._warn_once("data", "callbacks.val_images: no validation dataset, no images")
            return None
        if self.indices is None:
            self.indices = sample_indices(len(dataset), self.num_images)
        net = getattr(pl_module, "net", pl_module)
        num_classes = int(getattr(pl_module, "num_classes", 0))
        ignore_index = int(getattr(pl_module, "ignore_index", 255))
        align_corners = bool(getattr(pl_module, "align_corners", False))
        rows = []
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for index in self.indices:
                    sample = dataset[index]
                    image, target = sample["image"], sample["mask"]
                    logits = main_logits(net(image[None].to(pl_module.device))).float()
                    pred = logits_at(logits, target.shape[-2:], align_corners).argmax(1)[0].cpu().numpy()
                    shown = to_display(image, getattr(dataset, "transform", None))
                    if shown.shape[:2] != tuple(target.shape):  # data.val_transform resized the image, not the mask
                        shown = cv2.resize(shown, tuple(target.shape)[::-1], interpolation=cv2.INTER_LINEAR)
                    rows.append((shown, target.numpy(), pred))
        finally:
            net.train(was_training)
        palette = getattr(dataset, "palette", None)
        if palette is None or len(palette) < num_classes:
            palette = default_palette(max(num_classes, 1))
        miou = trainer.callback_metrics.get("val/mIoU")
        title = f"epoch {trainer.current_epoch}"
        if miou is not None:
            title += f", val/mIoU {float(miou):.4f}"
        return prediction_grid(rows, np.asarray(palette, dtype=np.uint8)[:max(num_classes, 1)],
                               getattr(pl_module, "class_names", ()), ignore_index, title, self.tile_size,
                               self.alpha)

    def send_to_loggers(self, trainer: pl.Trainer, grid: np.ndarray, path: Path) -> None:
        """TensorBoard ``add_image``, W&B ``log_image``, MLflow ``log_image``; a logger that fails warns once
        and training goes on (a picture is not worth a run)."""
        from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

        step = trainer.global_step
        for logger in trainer.loggers:
            try:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image("val/predictions", grid, global_step=step, dataformats="HWC")
                elif isinstance(logger, WandbLogger):
                    logger.log_image(key="val/predictions", images=[grid], step=step)
                elif isinstance(logger, MLFlowLogger):
                    logger.experiment.log_image(logger.run_id, grid, artifact_file=f"images/{path.name}")
            except Exception as err:  # noqa: BLE001 - any logger backend error
                name = type(logger).__name__
                self._warn_once(name, "callbacks.val_images: %s could not take the image (%s)", name, err)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def _val_dataset(trainer: pl.Trainer) -> Any | None:
    """The (whole, unsharded) dataset behind the first validation loader."""
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    return getattr(loaders, "dataset", None)
