"""ONNX: export a trained network, prove the file computes what PyTorch computes, and run it.

The exported graph maps ``images[batch, 3, height, width]`` (float32, RGB normalised as ``data.val_transform``
does) to ``logits[batch, C, height, width]``: the network plus the one bilinear upsampling to the input size
that inference does, so a deployment needs no post-processing besides argmax. Batch, height and width are
dynamic. The training recipe (class names, palette, data config) travels in the file's metadata
(``seg_template.recipe``, JSON), so ``predict.py model_file=model.onnx`` needs nothing else.

Needs the ``onnx`` extra (``pip install -e ".[onnx]"``: onnx, onnxruntime, onnxscript); nothing here is
imported by training.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

RECIPE_KEY = "seg_template.recipe"
INPUT, OUTPUT = "images", "logits"


def require_onnx(*modules: str) -> None:
    """Raise a ``ConfigError`` naming the extra to install when one of ``modules`` is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX needs {', '.join(missing)}: pip install -e '.[onnx]' "
                          "(onnx, onnxruntime, onnxscript)")


class ImageSizeLogits(nn.Module):
    """``net`` followed by one bilinear upsampling of its ``"out"`` logits to the input size:
    ``[N, 3, H, W] -> [N, C, H, W]`` (what is exported, and what the parity check compares).

    A net with a ``size_divisor`` (HRNet: 32) pads its input to a multiple of it and crops its logits. ONNX's
    integer division truncates towards zero where Python's floors, so a net written with negative operands
    (``-(-h // 4)``) would be exported one pixel short for odd sizes. Padding here first (the net's own
    padding is then a no-op) and cropping with non-negative arithmetic keeps any such net exact.
    """

    def __init__(self, net: nn.Module, align_corners: bool = False) -> None:
        super().__init__()
        self.net, self.align_corners = net, bool(align_corners)
        self.size_divisor = int(getattr(net, "size_divisor", 1) or 1)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        d = self.size_divisor
        if d > 1:  # zeros at the bottom / right, as the net itself pads (zero = the normalised mean)
            images = F.pad(images, (0, (d - w % d) % d, 0, (d - h % d) % d))
        out = self.net(images)
        logits = out["out"] if isinstance(out, Mapping) else out
        if d > 1:  # the net's stride from the padded size; keep ceil(h / stride) rows as the net does
            sh, sw = images.shape[-2] // logits.shape[-2], images.shape[-1] // logits.shape[-1]
            logits = logits[..., : (h + sh - 1) // sh, : (w + sw - 1) // sw]
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=self.align_corners)


def export_onnx(net: nn.Module, path: str | Path, sample: Tensor, align_corners: bool = False,
                recipe: Mapping[str, Any] | None = None, opset: int | None = None, dynamo: bool = True) -> Path:
    """Write ``net`` (eval mode, CPU) as ONNX to ``path`` (one file, weights inside) with dynamic batch,
    height and width; ``sample`` (``float[N, 3, H, W]``) is the example input the exporter traces with.

    ``dynamo``: torch's current exporter (``torch.export``; slow for big graphs: ~25 s for LR-ASPP on one
    core); False: the older TorchScript exporter, which torch deprecates but which exports in seconds.
    """
    import onnx
    from torch.export import Dim

    model = ImageSizeLogits(net, align_corners).eval().cpu()
    # the exporter's optimiser logs every pass at INFO ("Removed 89 unused nodes"): not for users' consoles
    quiet = {name: logging.getLogger(name) for name in ("onnxscript", "onnx_ir")}
    levels = {name: logger.level for name, logger in quiet.items()}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # exporter deprecation chatter; failures still raise
        for logger in quiet.values():
            logger.setLevel(logging.WARNING)
        try:
            if dynamo:
                program = torch.onnx.export(
                    model, (sample.cpu(),), None, input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
                    dynamic_shapes={"images": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}, dynamo=True)
                proto = program.model_proto
            else:
                buffer = io.BytesIO()
                axes = {0: "batch", 2: "height", 3: "width"}
                torch.onnx.export(model, (sample.cpu(),), buffer, input_names=[INPUT], output_names=[OUTPUT],
                                  opset_version=opset, dynamic_axes={INPUT: axes, OUTPUT: axes}, dynamo=False)
                proto = onnx.load_from_string(buffer.getvalue())
        finally:
            for name, logger in quiet.items():
                logger.setLevel(levels[name])
    if recipe is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = RECIPE_KEY, json.dumps(recipe)
    proto.doc_string = ("seg_template semantic segmentation: images[batch,3,height,width] float32 RGB, "
                        "normalised as the recipe's data.val_transform -> logits[batch,classes,height,width]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def ort_session(path: str | Path, device: str = "cpu", threads: int = 0, optimize: bool = True) -> Any:
    """An onnxruntime session for ``path``: the CUDA provider when ``device`` is CUDA and available, else
    the CPU; ``threads`` > 0 caps its intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable or invalid files
        raise CheckpointError(f"model_file: '{path}' is not a readable ONNX model "
                              f"({type(err).__name__}: {str(err)[:300]})") from err


def onnx_recipe(session: Any) -> dict[str, Any] | None:
    """The training recipe in an ONNX file's metadata (None for a file exported elsewhere)."""
    text = session.get_modelmeta().custom_metadata_map.get(RECIPE_KEY)
    return json.loads(text) if text else None


def read_onnx_recipe(path: str | Path) -> dict[str, Any] | None:
    """:func:`onnx_recipe` of the file at ``path`` (a session without graph optimisation: metadata only)."""
    return onnx_recipe(ort_session(path, optimize=False))


class OnnxNet(nn.Module):
    """An ONNX file as a network: ``forward(images[N, 3, H, W]) -> logits[N, C, H, W]`` through onnxruntime,
    so the inference code (sliding window, flips, scales) runs it as it runs a PyTorch network."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, device, threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(f"model_file: '{path}' takes {[(i.name, i.shape) for i in inputs]}; expected one "
                                  "input images[batch, 3, height, width]")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        classes = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        self.num_classes = classes if isinstance(classes, int) else None
        self.recipe = onnx_recipe(self.session)
        #: where the inputs are best kept: onnxruntime without its CUDA provider reads host memory
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

    def forward(self, images: Tensor) -> Tensor:
        array = images.detach().to("cpu", torch.float32).numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits).to(images.device)


@dataclass
class Parity:
    """How closely onnxruntime reproduced PyTorch: the worst ``max_abs`` logit difference and the fraction
    of pixels with the same argmax, over every checked input shape."""

    max_abs: float
    agreement: float
    shapes: list[tuple[int, ...]]

    def ok(self, atol: float, min_agreement: float) -> bool:
        return self.max_abs <= atol and self.agreement >= min_agreement

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        return (f"onnxruntime (CPU) vs PyTorch on inputs {shapes}: max |logit difference| {self.max_abs:.2e}, "
                f"argmax agreement {100 * self.agreement:.3f}%")


def check_parity(net: nn.Module, path: str | Path, shapes: Sequence[Sequence[int]], align_corners: bool = False,
                 seed: int = 0, threads: int = 0) -> Parity:
    """Run the ONNX file at ``path`` (onnxruntime, CPU) and ``net`` (PyTorch, CPU) on random normalised
    images of each ``[N, H, W]`` in ``shapes``; returns the worst logit difference and the argmax agreement."""
    net = net.eval().cpu()
    session = ort_session(path, "cpu", threads)
    generator = torch.Generator().manual_seed(seed)
    worst, same, total, seen = 0.0, 0, 0, []
    for n, h, w in shapes:
        images = torch.randn(int(n), 3, int(h), int(w), generator=generator)
        with torch.no_grad():  # the PyTorch inference path itself (not the export wrapper): net, then upsample
            out = net(images)
            logits = out["out"] if isinstance(out, Mapping) else out
            expected = F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                     align_corners=align_corners).numpy()
        (got,) = session.run(None, {INPUT: images.numpy()})
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output {got.shape} differs from PyTorch's {expected.shape} for input "
                               f"{tuple(images.shape)}")
        worst = max(worst, float(np.abs(got - expected).max()))
        same += int((got.argmax(1) == expected.argmax(1)).sum())
        total += expected.shape[0] * expected.shape[2] * expected.shape[3]
        seen.append(tuple(images.shape))
    return Parity(worst, same / max(total, 1), seen)
