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
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.errors import CheckpointError, ConfigError
from seg_template.models.outputs import logits_at, main_logits

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
        logits = main_logits(self.net(images))
        if d > 1:  # the net's stride from the padded size; keep ceil(h / stride) rows as the net does
            sh, sw = images.shape[-2] // logits.shape[-2], images.shape[-1] // logits.shape[-1]
            logits = logits[..., : (h + sh - 1) // sh, : (w + sw - 1) // sw]
        # always resized (not logits_at's shortcut): an exported graph must not bake in the example's size
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=self.align_corners)


def export_onnx(net: nn.Module, path: str | Path, sample: Tensor, align_corners: bool = False,
                recipe: Mapping[str, Any] | None = None, opset: int | None = None, dynamo: bool = True) -> Path:
    """Write ``net`` (eval mode, CPU) as ONNX to ``path`` (one file, weights inside) with dynamic batch,
    height and width; ``sample`` (``float[N, 3, H, W]``) is the example input the exporter traces with.

    ``dynamo``: torch's current exporter (``torch.export``; slow for big graphs: ~25 s for LR-ASPP on one
    core); False: the older TorchScript exporter, which torch deprecates but which exports in seconds. The
    dynamo exporter traces a batch of one as two images: with a batch of 1 it wrote a reshape of SegFormer's
    (smp's MiT) attention that fails on any other batch (torch 2.14).
    """
    import onnx
    from torch.export import Dim

    if dynamo and sample.shape[0] == 1:
        sample = sample.expand(2, -1, -1, -1)

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


def onnx_recipe(session: Any, path: str | Path = "") -> dict[str, Any] | None:
    """The training recipe in an ONNX file's metadata (None for a file exported elsewhere); a
    ``CheckpointError`` naming the file ``path`` when it is not JSON (damaged or crafted)."""
    text = session.get_modelmeta().custom_metadata_map.get(RECIPE_KEY)
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than json can read
        raise CheckpointError(f"model_file: '{path}' has metadata {RECIPE_KEY} that is not readable JSON "
                              f"({type(err).__name__}: {str(err)[:120]}); the file was not used") from None


def read_onnx_recipe(path: str | Path) -> dict[str, Any] | None:
    """:func:`onnx_recipe` of the file at ``path`` (a session without graph optimisation: metadata only)."""
    return onnx_recipe(ort_session(path, optimize=False), path)


def onnx_weights(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` for every floating-point weight of the ONNX file at ``path``: the initializers and
    the constants of the graph and its sub-graphs. The protobuf is read without its external data; each
    external tensor is then read alone, so a big model is never held twice."""
    require_onnx("onnx")
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    base_dir = str(Path(path).parent)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}

    def tensors(graph: Any) -> Iterator[tuple[str, Any]]:
        yield from ((t.name, t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield f"{node.name or node.op_type}.{attr.name}", attr.t
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    for name, tensor in tensors(model.graph):
        if tensor.data_type in floats:
            yield name, numpy_helper.to_array(tensor, base_dir)


def refuse_nonfinite_onnx(path: str | Path, option: str = "model_file") -> None:
    """Raise a ``CheckpointError`` naming the file and the weights when the ONNX file at ``path`` holds NaN or
    inf: it would give NaN logits, i.e. class 0 everywhere. Min and max are NaN / inf exactly when some
    element is, so no boolean copy of a tensor is made."""
    bad, total = [], 0
    for name, array in onnx_weights(path):
        total += 1
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            bad.append(name)
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(f"{option}: '{path}' holds NaN/inf in {len(bad)} of its {total} weight tensors "
                              f"({shown}): it was exported from a diverged model (or is a damaged copy); export a "
                              f"checkpoint written before the run diverged")


class OnnxNet(nn.Module):
    """An ONNX file as a network: ``forward(images[N, 3, H, W]) -> logits[N, C, H, W]`` through onnxruntime,
    so the inference code (sliding window, flips, scales) runs it as it runs a PyTorch network."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, device, threads)  # first: it names an unreadable file
        refuse_nonfinite_onnx(self.path)
        self.weights_source = f"model_file: '{self.path}'"  # for InferenceModel's messages
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(f"model_file: '{path}' takes {[(i.name, i.shape) for i in inputs]}; expected one "
                                  "input images[batch, 3, height, width]")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        classes = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        self.num_classes = classes if isinstance(classes, int) else None
        self.recipe = onnx_recipe(self.session, self.path)
        #: where the inputs are best kept: onnxruntime without its CUDA provider reads host memory
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.expected_classes: int | None = None

    def expect_classes(self, num_classes: int) -> None:
        """Refuse logits whose channel count is not ``num_classes`` (``data.num_classes``): now when the file
        states it, else at every forward pass (exporters may leave that dimension symbolic, and a recipe edited
        or typed over on the command line can disagree with the network, giving ids no class name covers)."""
        self.expected_classes = int(num_classes)
        if self.num_classes is not None:
            self._check_classes(self.num_classes)

    def _check_classes(self, found: int) -> None:
        if self.expected_classes is not None and found != self.expected_classes:
            raise ConfigError(f"model_file={self.path} outputs {found} classes (the channels of its logits) but "
                              f"data.num_classes={self.expected_classes} (its recipe, or the command line): its masks "
                              "would hold ids that the class names and colours do not describe. Pass the data "
                              f"options it was trained with (data.num_classes={found} and as many "
                              "data.class_names), or export its checkpoint again")

    def forward(self, images: Tensor) -> Tensor:
        array = images.detach().to("cpu", torch.float32).numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        if logits.ndim != 4:
            raise CheckpointError(f"model_file: '{self.path}' outputs an array of shape {list(logits.shape)} for "
                                  f"images {list(array.shape)}; expected logits[batch, classes, height, width]")
        self._check_classes(int(logits.shape[1]))
        return torch.from_numpy(logits).to(images.device)


@dataclass
class Parity:
    """How closely onnxruntime reproduced PyTorch over every checked input shape: the worst ``max_abs`` logit
    difference, the fraction of pixels with the same argmax, and how many logits were NaN / inf.

    NaN-aware: a non-finite logit on either side makes ``max_abs`` NaN (a difference that cannot be measured,
    never 0), its pixel counts as disagreeing, and ``ok`` false. ``nonfinite`` maps ``"onnxruntime"`` and
    ``"PyTorch"`` to their ``(NaN count, inf count)`` out of ``values`` logits."""

    max_abs: float
    agreement: float
    shapes: list[tuple[int, ...]]
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    values: int = 0
    scale: float = 0.0  # the largest |logit| PyTorch gave: float32 rounding grows with it

    def finite(self, side: str | None = None) -> bool:
        """Whether every logit of ``side`` (both sides when None) was finite."""
        return not any(sum(v) for k, v in self.nonfinite.items() if side in (None, k))

    def tolerance(self, atol: float, rtol: float = 0.0) -> float:
        """The accepted ``max_abs``: ``atol + rtol * scale`` (logits of 1e4 differ by ~1e-3 in float32 alone)."""
        return atol + rtol * self.scale

    def ok(self, atol: float, min_agreement: float, rtol: float = 0.0) -> bool:
        # comparisons with NaN are False: a NaN difference or agreement fails here, as it must
        return self.finite() and self.max_abs <= self.tolerance(atol, rtol) and self.agreement >= min_agreement

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        text = (f"onnxruntime (CPU) vs PyTorch on inputs {shapes}: max |logit difference| {self.max_abs:.2e}, "
                f"argmax agreement {100 * self.agreement:.3f}%")
        for side, (nan, inf) in self.nonfinite.items():
            parts = [f"NaN in {_share(nan, self.values)}" if nan else "",
                     f"inf in {_share(inf, self.values)}" if inf else ""]
            if nan or inf:
                text += f"; {side} output holds {' and '.join(p for p in parts if p)} of its values"
        return text


def _share(count: int, total: int) -> str:
    return f"{100 * count / max(total, 1):.3g}%" if count < total else "100%"


def check_parity(net: nn.Module, path: str | Path, shapes: Sequence[Sequence[int]], align_corners: bool = False,
                 seed: int = 0, threads: int = 0) -> Parity:
    """Run the ONNX file at ``path`` (onnxruntime, CPU) and ``net`` (PyTorch, CPU) on random normalised
    images of each ``[N, H, W]`` in ``shapes``; returns the worst logit difference, the argmax agreement and
    the NaN / inf counts of both sides (:class:`Parity`)."""
    net = net.eval().cpu()
    session = ort_session(path, "cpu", threads)
    generator = torch.Generator().manual_seed(seed)
    worst, same, total, values, seen, scale = 0.0, 0, 0, 0, [], 0.0
    counts = {"onnxruntime": [0, 0], "PyTorch": [0, 0]}
    for n, h, w in shapes:
        images = torch.randn(int(n), 3, int(h), int(w), generator=generator)
        with torch.no_grad():  # the PyTorch inference path itself (not the export wrapper): net, then upsample
            expected = logits_at(main_logits(net(images)), images.shape[-2:], align_corners).numpy()
        (got,) = session.run(None, {INPUT: images.numpy()})
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output {got.shape} differs from PyTorch's {expected.shape} for input "
                               f"{tuple(images.shape)}")
        for side, array in (("onnxruntime", got), ("PyTorch", expected)):
            counts[side][0] += int(np.isnan(array).sum())
            counts[side][1] += int(np.isinf(array).sum())
        # np.max propagates NaN (Python's max(0.0, nan) would drop it): a NaN here stays NaN in the result
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, as it should be
            diff = float(np.abs(got - expected).max())
        worst = diff if math.isnan(diff) or diff > worst else worst
        # a pixel agrees only when both logit vectors are finite and their argmax is the same
        finite = np.isfinite(got).all(1) & np.isfinite(expected).all(1)
        same += int(((got.argmax(1) == expected.argmax(1)) & finite).sum())
        total += expected.shape[0] * expected.shape[2] * expected.shape[3]
        values += expected.size
        seen.append(tuple(images.shape))
        finite_values = np.abs(expected[np.isfinite(expected)])
        scale = max(scale, float(finite_values.max()) if finite_values.size else 0.0)
    return Parity(worst, same / max(total, 1), seen, {k: (v[0], v[1]) for k, v in counts.items()}, values,
                  scale)
