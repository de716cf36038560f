"""HRNetV2 for segmentation: a timm HRNet backbone with HRNet's light head, logits at stride 4.

The backbone is ``timm.create_model(variant, features_only=True, feature_location="")``: with an empty
``feature_location`` timm's ``HighResolutionNetFeatures`` returns the raw outputs of the four branches of
the last stage (strides 4 / 8 / 16 / 32; w18: 18 / 36 / 72 / 144 channels, w48: 48 / 96 / 192 / 384)
instead of the classification head's widened ("incre") features; ``out_indices=(1, 2, 3, 4)`` drops the
stride-2 stem tap. The head (HRNetV2, Sun et al. 2019) resizes the three coarser branches to the stride-4
one, concatenates them and applies 1x1 conv - BN - ReLU - 1x1 classifier.

Variants: ``hrnet_w18_small`` (HRNet's "W18-Small-v1"), ``hrnet_w18_small_v2``, ``hrnet_w18``, ``hrnet_w48``
(and any other timm ``hrnet_w*``).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.models.common import finalize_model, weight_name
from seg_template.models.download import fetch_weights, timm_source

BRANCH_INDICES = (1, 2, 3, 4)  # timm feature taps: 0 is the stride-2 stem, 1..4 the HRNet branches


class HRNetHead(nn.Module):
    """Concat all branches at the stride-4 resolution, fuse with 1x1 conv-BN-ReLU, classify with 1x1 conv.

    ``forward([x4[N,C1,h,w], x8, x16, x32])`` -> ``logits[N,num_classes,h,w]``.
    """

    def __init__(self, in_channels: list[int], num_classes: int, align_corners: bool = False) -> None:
        super().__init__()
        channels = sum(in_channels)
        self.align_corners = align_corners
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),  # no bias: BN right after absorbs it
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, branches: list[Tensor]) -> Tensor:
        size = branches[0].shape[-2:]
        resized = [branches[0]] + [
            F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in branches[1:]
        ]
        return self.classifier(self.fuse(torch.cat(resized, dim=1)))


class HRNetSegmentation(nn.Module):
    """``forward(images[N,3,H,W])`` -> ``logits[N,num_classes,ceil(H/4),ceil(W/4)]`` (no aux head).

    HRNet's fuse layers upsample by exact powers of two, so inputs whose sides are not multiples of 32 (ADE20K
    validation images, odd crops) are zero-padded (zero = the normalised mean) at the bottom / right and
    the logits cropped back.
    """

    size_divisor = 32

    def __init__(self, backbone: nn.Module, num_classes: int, align_corners: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = HRNetHead(list(backbone.feature_info.channels()), num_classes, align_corners)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        d = self.size_divisor
        # non-negative integer arithmetic only: ONNX's division truncates where Python's floors
        pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        logits = self.head(self.backbone(images))
        return logits[..., : (h + 3) // 4, : (w + 3) // 4]  # ceil(h / 4): the stride-4 rows of the real image


def timm_pretrained_tag(variant: str, name: str) -> str:
    """The timm model name for weight ``name`` of ``variant`` (``ms_in1k`` -> ``hrnet_w48.ms_in1k``).

    Checked against timm's local registry: nothing is downloaded here.
    """
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{variant}.*")]
    if name == "default":
        if not tags:
            raise ValueError(f"model.pretrained: timm has no pretrained weights for {variant}")
        return variant  # timm picks the variant's default tag
    tag = name.split(".", 1)[1] if name.startswith(f"{variant}.") else name
    if tag not in tags:
        raise ValueError(f"model.pretrained='{name}' is neither a file nor a timm weight tag of {variant}; "
                         f"choose from {tags} (or true for the default), or give a local file path")
    return f"{variant}.{tag}"


def hrnet(variant: str, num_classes: int, pretrained: str | bool | None = None, align_corners: bool = False,
          compile: bool = False) -> HRNetSegmentation:
    """Build HRNetV2-``variant`` for ``num_classes`` classes (output stride 4).

    ``pretrained``: null, a local file (timm backbone or full model; see ``seg_template.models.weights``),
    ``true`` (timm's default ImageNet weights when cached or downloadable, else from scratch with a warning:
    see ``seg_template.models.download``), or a timm tag such as ``ms_in1k`` (must be obtained; timm
    downloads it from the Hugging Face hub on first use).
    ``align_corners``: for the branch upsampling; HRNet's plain configs use false, its OCR configs true.
    """
    if not variant.startswith("hrnet_w"):
        raise ValueError(f"model.variant='{variant}' is not a timm HRNet (hrnet_w18_small, hrnet_w18, hrnet_w48, ...)")
    if variant not in timm.list_models("hrnet_w*"):
        raise ValueError(f"model.variant='{variant}' is unknown to timm; choose from {timm.list_models('hrnet_w*')}")

    def build(model_name: str, with_weights: bool) -> nn.Module:
        return timm.create_model(model_name, pretrained=with_weights, features_only=True, feature_location="",
                                 out_indices=BRANCH_INDICES)

    name = weight_name(pretrained)
    backbone: nn.Module | None = None
    if name is not None:
        tag = timm_pretrained_tag(variant, name)
        url, cached = timm_source(tag)
        backbone = fetch_weights(lambda: build(tag, True), f"the ImageNet weights of {tag}", url, cached,
                                 best_effort=name == "default")
    if backbone is None:
        backbone = build(variant, False)
    return finalize_model(HRNetSegmentation(backbone, num_classes, align_corners), pretrained, compile)
