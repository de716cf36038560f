"""torchvision's FCN / DeepLabV3 / LR-ASPP returning logits at their native stride (no final resize).

torchvision's ``forward`` bilinearly resizes every output to the input size; our losses and inference do
that once, at the end, so here we run ``backbone -> classifier`` (and ``aux_classifier``) ourselves.
Parameter names are torchvision's (``backbone.*``, ``classifier.*``, ``aux_classifier.*``), so torchvision
checkpoints load as they are.

Output strides (measured in tests/test_models.py):

=========================  ======  ===========================
arch                       "out"   "aux" (``aux=true``)
=========================  ======  ===========================
fcn_resnet50 / 101           8     8 (FCNHead on layer3)
deeplabv3_resnet50 / 101     8     8 (FCNHead on layer3)
deeplabv3_mobilenet_v3      16     8 (FCNHead on the C2 block)
lraspp_mobilenet_v3          8     no aux head
=========================  ======  ===========================
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights, segmentation
from torchvision.models._api import WeightsEnum

from seg_template.models.common import finalize_model, weight_name
from seg_template.models.download import fetch_weights, torchvision_cached
from seg_template.models.weights import load_state_into

#: arch -> (torchvision builder, whole-model weights enum, backbone weights enum, has an aux head)
ARCHS: dict[str, tuple[Callable[..., nn.Module], type[WeightsEnum], type[WeightsEnum], bool]] = {
    "fcn_resnet50": (segmentation.fcn_resnet50, segmentation.FCN_ResNet50_Weights, ResNet50_Weights, True),
    "fcn_resnet101": (segmentation.fcn_resnet101, segmentation.FCN_ResNet101_Weights, ResNet101_Weights, True),
    "deeplabv3_resnet50": (segmentation.deeplabv3_resnet50, segmentation.DeepLabV3_ResNet50_Weights,
                           ResNet50_Weights, True),
    "deeplabv3_resnet101": (segmentation.deeplabv3_resnet101, segmentation.DeepLabV3_ResNet101_Weights,
                            ResNet101_Weights, True),
    "deeplabv3_mobilenet_v3": (segmentation.deeplabv3_mobilenet_v3_large,
                               segmentation.DeepLabV3_MobileNet_V3_Large_Weights, MobileNet_V3_Large_Weights, True),
    "lraspp_mobilenet_v3": (segmentation.lraspp_mobilenet_v3_large,
                            segmentation.LRASPP_MobileNet_V3_Large_Weights, MobileNet_V3_Large_Weights, False),
}


class NativeStrideSegmenter(nn.Module):
    """A torchvision segmentation model's parts, called without the final upsampling.

    ``forward(images[N,3,H,W])`` -> ``logits[N,C,H/s,W/s]``, or ``{"out": ..., "aux": aux_logits}`` when an
    auxiliary classifier is present (its stride may differ from "out": see the module docstring).
    ``head_takes_dict``: LR-ASPP's head reads the ``{"low", "high"}`` feature dict instead of ``"out"``.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None,
                 head_takes_dict: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.head_takes_dict = head_takes_dict

    def forward(self, images: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.backbone(images)
        out = self.classifier(features if self.head_takes_dict else features["out"])
        if self.aux_classifier is None:
            return out
        return {"out": out, "aux": self.aux_classifier(features["aux"])}


def resolve_weights(arch: str, name: str) -> WeightsEnum:
    """A torchvision weight for ``arch`` from its name: ``COCO_WITH_VOC_LABELS_V1`` (whole model),
    ``IMAGENET1K_V1`` (backbone), a qualified ``ResNet101_Weights.IMAGENET1K_V2``, or ``default`` (the
    backbone's default ImageNet weights). Resolving downloads nothing.
    """
    _, seg_enum, backbone_enum, _ = ARCHS[arch]
    if name == "default":
        return backbone_enum.DEFAULT
    if "." in name:
        weight = torchvision.models.get_weight(name)
        if isinstance(weight, (seg_enum, backbone_enum)):
            return weight
        raise ValueError(f"model.pretrained='{name}' is a torchvision weight for another model than {arch} "
                         f"(expected {seg_enum.__name__}.* or {backbone_enum.__name__}.*)")
    for enum in (seg_enum, backbone_enum):
        if name in enum.__members__:
            return enum[name]
    raise ValueError(
        f"model.pretrained='{name}' is neither a file nor a torchvision weight name for {arch}. Whole model: "
        f"{list(seg_enum.__members__)}; backbone: {list(backbone_enum.__members__)}; or a local file path.")


def torchvision_model(arch: str, num_classes: int, aux: bool = False, pretrained: str | bool | None = None,
                      align_corners: bool = False, compile: bool = False) -> NativeStrideSegmenter:
    """Build ``arch`` (a key of ``ARCHS``) for ``num_classes`` classes, at native stride.

    ``align_corners`` is how the loss, the metrics and inference upsample these logits (``model.align_corners``,
    read by the module); the torchvision heads keep their own internal convention (``False``), so nothing
    here depends on it.

    ``pretrained``: null, a local file (see ``seg_template.models.weights``), ``true`` (the backbone's default
    ImageNet weights when they are cached or can be downloaded, else from scratch with a warning: see
    ``seg_template.models.download``), or a torchvision weight name (must be obtained; a whole-model
    weight's classifier is skipped when ``num_classes`` differs from its 21 VOC classes).
    """
    if arch not in ARCHS:
        raise ValueError(f"model.arch='{arch}' is unknown; choose from {sorted(ARCHS)}")
    builder, seg_enum, _, has_aux = ARCHS[arch]
    if aux and not has_aux:
        raise ValueError(f"model.aux=true but {arch} has no auxiliary head in torchvision; set model.aux=false")
    name = weight_name(pretrained)
    weight = resolve_weights(arch, name) if name else None
    kwargs = {"aux_loss": True} if aux else {}

    def build(backbone_weight: WeightsEnum | None) -> nn.Module:
        return builder(weights=None, weights_backbone=backbone_weight, num_classes=num_classes, **kwargs)

    reference: nn.Module | None = None
    if weight is not None and not isinstance(weight, seg_enum):  # backbone weights: the builder loads them
        reference = fetch_weights(lambda: build(weight), f"the {weight} backbone weights of {arch}", weight.url,
                                  torchvision_cached(weight.url), best_effort=name == "default")
    if reference is None:
        reference = build(None)
    model = NativeStrideSegmenter(reference.backbone, reference.classifier, getattr(reference, "aux_classifier", None),
                                  head_takes_dict=arch.startswith("lraspp"))
    if isinstance(weight, seg_enum):
        state = fetch_weights(lambda: weight.get_state_dict(progress=True, check_hash=True), f"the {weight} weights",
                              weight.url, torchvision_cached(weight.url), best_effort=False)
        load_state_into(model, state, source=str(weight))
    return finalize_model(model, pretrained, compile)
