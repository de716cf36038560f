"""The loss family: cross-entropy (plain or class-weighted), HRNet-style OHEM, and the aux-head wrapper.

Shapes: ``logits`` float ``[N, C, h, w]`` at the model's native stride, ``target`` integer ``[N, H, W]`` holding
``[0, C)`` or ``ignore_index``. 4-D logits whose ``(h, w) != (H, W)`` are bilinearly upsampled to ``(H, W)``
first. ``[N, C]`` / ``[N, C, d1..dK]`` logits with ``[N]`` / ``[N, d1..dK]`` targets work as in
``torch.nn.CrossEntropyLoss`` (no resizing). Out-of-range labels raise ``ValueError`` before any gather, so a
GPU run reports them instead of a device-side assert.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import to_absolute_path
from torch import Tensor, nn

from seg_template.lean_ce import lean_cross_entropy, lean_ohem_cross_entropy

WeightSpec = Sequence[float] | str | Path | Tensor | np.ndarray | None


def load_class_weights(spec: WeightSpec) -> Tensor | None:
    """Class weights as float32 ``[C]`` from a list, a ``.npy`` / ``.json`` / ``.txt`` file, or ``None``."""
    if spec is None:
        return None
    source = "class weights"
    if isinstance(spec, str | Path):
        # relative to where the user launched, even if Hydra changed the working directory
        path = Path(to_absolute_path(str(spec)))
        source = f"class weights file {path}"
        if not path.is_file():
            raise FileNotFoundError(f"{source} not found (set data.class_weights or loss.main.weight)")
        try:
            spec = _read_weight_file(path)
        except ValueError as err:  # includes json.JSONDecodeError and a bad number in a .txt
            raise ValueError(f"{source}: {err}") from err
    try:
        values = spec.detach().cpu().numpy() if isinstance(spec, Tensor) else np.asarray(list(spec), dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: expected a list of numbers, got {spec!r}") from err
    values = values.astype(np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{source}: expected a non-empty 1-D list of numbers, got shape {values.shape}")
    bad = values[~np.isfinite(values) | (values < 0)]
    if bad.size:
        raise ValueError(f"{source}: class weights must be finite and >= 0, got {bad.tolist()}")
    return torch.tensor(values, dtype=torch.float32)


def _read_weight_file(path: Path) -> np.ndarray | list[float]:
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".txt":  # numbers separated by whitespace or commas; '#' starts a comment
        lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
        return [float(tok) for line in lines for tok in line.replace(",", " ").split()]
    raise ValueError(f"unsupported suffix {path.suffix!r} (use .npy, .json or .txt)")


def check_target(logits: Tensor, target: Tensor, ignore_index: int,
                 weight: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """Validate shapes, weight length and labels before anything indexes with them.

    Returns ``(safe_target, valid, n_valid)``: int64 target with ignored pixels set to class 0 (safe to
    gather with), the bool valid-pixel mask (both shaped like ``target``) and the number of valid pixels.
    """
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if logits.dim() < 2 or target.dim() != logits.dim() - 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: "
                         "expected logits [N, C, ...] and target [N, ...]")
    if logits.dim() != 4 and target.shape[1:] != logits.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)}: spatial sizes differ "
                         "and only 4-D logits [N, C, h, w] are resized")
    num_classes = logits.shape[1]
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(f"class weights have {weight.numel()} entries but the logits have {num_classes} "
                         "classes (check data.class_weights / loss.main.weight)")
    valid = target != ignore_index
    safe_target = target.long() * valid  # cheaper than torch.where; ignored -> class 0
    # one host sync for the range check and the count; few, cheap full passes (they add up on a busy CPU)
    low, high, n_valid = torch.stack((*torch.aminmax(safe_target), torch.count_nonzero(valid))).tolist()
    if low < 0 or high >= num_classes:
        values = torch.unique(target[valid & ((target < 0) | (target >= num_classes))]).tolist()
        raise ValueError(f"target has labels {values[:20]} outside [0, {num_classes}) that are not "
                         f"ignore_index={ignore_index}; fix the masks or data.ignore_index / data.num_classes")
    return safe_target, valid, n_valid


def upsampled_nll(logits: Tensor, target: Tensor, ignore_index: int, align_corners: bool) -> Tensor:
    """Unweighted per-pixel cross-entropy shaped like ``target`` (0 at ignored pixels).

    The naive path: it materialises the upsampled logits ``[N, C, H, W]`` (and autograd keeps their
    log-softmax). This is the one step a memory-lean kernel replaces; everything else is per-pixel.
    """
    if logits.dim() == 4 and logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners)
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")


class _PixelCrossEntropy(nn.Module):
    """What CE and OHEM share: ignore index, class-weight buffer, upsampling, label checks."""

    def __init__(self, ignore_index: int, weight: WeightSpec, align_corners: bool,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.align_corners = bool(align_corners)
        # 4-D logits then go through seg_template.lean_ce: same values and gradients, no [N, C, H, W] tensors
        self.memory_efficient = bool(memory_efficient)
        # not persistent: changing data.class_weights must not break loading an older checkpoint
        self.register_buffer("weight", load_class_weights(weight), persistent=False)

    def pixel_losses(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor | None, int]:
        """``(weighted nll, unweighted nll, per-pixel weight or None, n_valid)``; tensors shaped like target,
        0 at ignored pixels."""
        safe_target, valid, n_valid = check_target(logits, target, self.ignore_index, self.weight)
        nll = upsampled_nll(logits, target.long(), self.ignore_index, self.align_corners)
        if self.weight is None:
            return nll, nll, None, n_valid
        pixel_weight = self.weight.to(nll.dtype)[safe_target] * valid
        return pixel_weight * nll, nll, pixel_weight, n_valid

    def extra_repr(self) -> str:
        weighted = "none" if self.weight is None else f"[{self.weight.numel()}]"
        return (f"ignore_index={self.ignore_index}, weight={weighted}, align_corners={self.align_corners}, "
                f"memory_efficient={self.memory_efficient}")


class CrossEntropy(_PixelCrossEntropy):
    """``torch.nn.CrossEntropyLoss`` semantics (ignore index, class weights, reductions) after upsampling.

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar`` (``"none"``: ``[N, H, W]``, 0 where ignored).
    ``"mean"`` divides by the summed weight of the non-ignored targets; unlike PyTorch it returns 0.0 (with a
    zero gradient that still flows) when every pixel is ignored or has weight 0, instead of NaN.
    """

    def __init__(self, ignore_index: int = 255, weight: WeightSpec = None, align_corners: bool = False,
                 reduction: str = "mean", memory_efficient: bool = False) -> None:
        super().__init__(ignore_index, weight, align_corners, memory_efficient)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.memory_efficient and logits.dim() == 4:
            check_target(logits, target, self.ignore_index, self.weight)
            return lean_cross_entropy(logits, target, self.weight, self.ignore_index, self.align_corners,
                                      self.reduction)
        losses, _, pixel_weight, n_valid = self.pixel_losses(logits, target)
        if self.reduction == "none":
            return losses
        total = losses.sum()
        if self.reduction == "sum":
            return total
        # all ignored: total is an exact 0 that depends on logits, so 0 / 1 keeps the graph and avoids NaN
        if pixel_weight is None:
            return total / max(n_valid, 1)
        denom = pixel_weight.sum()
        return total / torch.where(denom > 0, denom, 1)


def weighted_cross_entropy(weight: WeightSpec = None, **kwargs) -> CrossEntropy:
    """``CrossEntropy`` that insists on class weights (``loss=wce``): a null weight is a config mistake."""
    if weight is None:
        raise ValueError("loss=wce needs class weights: set data.class_weights (a list or a .npy/.json/.txt "
                         "path, e.g. from scripts/compute_class_weights.py) or pass loss.main.weight=<file>")
    return CrossEntropy(weight=weight, **kwargs)


class OhemCrossEntropy(_PixelCrossEntropy):
    """Online hard example mining cross-entropy with HRNet's semantics (``lib/core/criterion.py``).

    ``forward(logits [N, C, h, w], target [N, H, W]) -> scalar``. After upsampling, p is the softmax
    probability of the target class (unweighted). Over the valid pixels of the batch, p_k is the
    (min_kept+1)-th smallest p (the largest when fewer pixels are valid); the pixels with
    p < max(p_k, thresh) are kept, and the loss is the plain mean of their class-weighted cross-entropy.

    ``min_kept`` counts pixels per process batch, as in HRNet: under DDP every process selects on its own
    batch, so a global budget is ``min_kept * world_size``. Where HRNet returns NaN or crashes we return
    0.0 with a zero gradient that still flows: when every pixel is ignored, and when nothing is strictly
    below the threshold (e.g. saturated probabilities all equal to p_k: every remaining pixel is easy).
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255,
                 weight: WeightSpec = None, align_corners: bool = False, memory_efficient: bool = False) -> None:
        super().__init__(ignore_index, weight, align_corners, memory_efficient)
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEM thresh must be in (0, 1], got {thresh}")
        if int(min_kept) != min_kept or min_kept < 1:
            raise ValueError(f"OHEM min_kept must be an integer >= 1, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.memory_efficient and logits.dim() == 4:
            check_target(logits, target, self.ignore_index, self.weight)
            return lean_ohem_cross_entropy(logits, target, self.thresh, self.min_kept, self.weight,
                                           self.ignore_index, self.align_corners)
        losses, nll, _, n_valid = self.pixel_losses(logits, target)
        kept, n_kept = self.hard_pixels(nll.detach(), n_valid)
        # for finite losses the mask product equals torch.where(kept, losses, 0) and is cheaper;
        # an empty kept set gives 0 / 1 with the graph intact
        return (losses * kept).sum() / max(n_kept, 1)

    def hard_pixels(self, nll: Tensor, n_valid: int) -> tuple[Tensor, int]:
        """Mask of the kept pixels (shaped like ``nll``) and their number, without sorting.

        The selection runs on nll = -log p, which orders pixels opposite to p: p < thresh is
        nll > -ln(thresh), p_k is exp(-nll) at the (k+1)-th largest nll. Ignored pixels have nll == 0, the
        smallest possible value: never above a threshold >= 0 and ranked after every valid pixel, so
        ranks over all pixels are the ranks among the valid ones and no masked copy is needed.
        """
        below = nll > -math.log(self.thresh)  # p < thresh
        n_below = int(torch.count_nonzero(below))
        k = min(self.min_kept, n_valid - 1)  # 0-based rank of p_k among the valid pixels
        if n_valid == 0 or n_below > k:
            return below, n_below  # more than k pixels under thresh: p_k < thresh, the threshold is thresh
        # p_k >= thresh, so it is the threshold; kthvalue on -nll (= log p) is faster than on nll's
        # mostly-zero low end
        log_p_k = torch.kthvalue(-nll.flatten(), k + 1).values
        kept = nll > -log_p_k
        return kept, int(torch.count_nonzero(kept))

    def extra_repr(self) -> str:
        return f"thresh={self.thresh}, min_kept={self.min_kept}, {super().extra_repr()}"


class SegmentationLoss(nn.Module):
    """Main loss plus an auxiliary-head term: ``main(out) + aux_weight * CE(aux)``.

    ``outputs`` is what the model returns: logits ``[N, C, h, w]`` or ``{"out": ..., "aux": ...}``
    (``aux`` may be missing or None). The aux term is a ``CrossEntropy`` with the main loss's ignore index,
    class weights and ``align_corners``, averaged over the valid pixels only. Typical ``aux_weight``:
    HRNet-OCR 0.4, torchvision 0.5. ``memory_efficient`` selects the lean kernels for the aux term (the
    main loss has its own flag; the loss configs set both from one key).
    """

    def __init__(self, main: nn.Module, aux_weight: float = 0.4, memory_efficient: bool = False) -> None:
        super().__init__()
        if not hasattr(main, "ignore_index"):
            raise TypeError(f"main loss {type(main).__name__} needs an ignore_index attribute")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.main = main
        self.aux_weight = float(aux_weight)
        self.aux = CrossEntropy(ignore_index=main.ignore_index, weight=getattr(main, "weight", None),
                                align_corners=getattr(main, "align_corners", False),
                                memory_efficient=memory_efficient)

    def parts(self, outputs: Tensor | Mapping[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "loss_main"}`` plus ``"loss_aux"`` (unweighted) when the outputs carry aux logits."""
        if isinstance(outputs, Mapping):
            if "out" not in outputs:
                raise KeyError(f"model output dict needs an 'out' entry, got keys {list(outputs)}")
            out, aux = outputs["out"], outputs.get("aux")
        elif isinstance(outputs, Tensor):
            out, aux = outputs, None
        else:
            raise TypeError(f"model outputs must be a Tensor or a dict with 'out', got {type(outputs).__name__}")
        loss_main = self.main(out, target)
        if aux is None:
            return {"loss": loss_main, "loss_main": loss_main}
        loss_aux = self.aux(aux, target)
        return {"loss": loss_main + self.aux_weight * loss_aux, "loss_main": loss_main, "loss_aux": loss_aux}

    def forward(self, outputs: Tensor | Mapping[str, Tensor], target: Tensor) -> Tensor:
        return self.parts(outputs, target)["loss"]
