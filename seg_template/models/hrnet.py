"""HRNetV2 for segmentation: a timm HRNet backbone with HRNet's light head, logits at stride 4.

The backbone is ``timm.create_model(variant, features_only=True, feature_location="")``: with an empty
``feature_location`` timm's ``HighResolutionNetFeatures`` returns the raw outputs of the four branches of
the last stage (strides 4 / 8 / 16 / 32; w18: 18 / 36 / 72 / 144 channels, w48: 48 / 96 / 192 / 384)
instead of the classification head's widened ("incre") features; ``out_indices=(1, 2, 3, 4)`` drops the
stride-2 stem tap. The head (HRNetV2, Sun et al. 2019) resizes the three coarser branches to the stride-4
one, concatenates them and applies 1x1 conv - BN - ReLU - 1x1 classifier.

Two options bring the network to HRNet-Semantic-Segmentation's own (``lib/models/seg_hrnet.py``), which the
published recipes (configs/experiment/*hrnet*) use:

- ``fuse_upsample``: timm's fuse layers upsample the coarser branches with ``nn.Upsample(scale_factor=2**k,
  mode="nearest")`` (HRNet's ImageNet classifier, whose weights timm carries), so inputs are padded to a
  multiple of 32. ``bilinear`` is the segmentation code's ``F.interpolate(..., size=<the target branch's size>,
  mode="bilinear", align_corners=<model.align_corners>)``: any input size, no padding.
- ``head_init``: ``default`` is a bias-free fuse conv (the BN after it absorbs a bias) with PyTorch's default
  init; ``hrnet`` is HRNet's ``last_layer``: both 1x1 convs with a bias, weights drawn from N(0, 0.001).

Variants: ``hrnet_w18_small`` (HRNet's "W18-Small-v1"), ``hrnet_w18_small_v2``, ``hrnet_w18``, ``hrnet_w48``
(and any other timm ``hrnet_w*``).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.models.common import finalize_model, weight_name
from seg_template.models.download import fetch_weights, timm_source

BRANCH_INDICES = (1, 2, 3, 4)  # timm feature taps: 0 is the stride-2 stem, 1..4 the HRNet branches
FUSE_UPSAMPLE = ("nearest", "bilinear")
HEAD_INIT = ("default", "hrnet")


class BilinearFuseModule(HighResolutionModule):
    """timm's ``HighResolutionModule`` whose fuse layers resize the coarser branches bilinearly to the exact
    size of the branch they join (HRNet-Semantic-Segmentation's fuse), not by a fixed power of two with
    nearest neighbour. Parameters and their names are timm's; only ``forward`` differs.

    ``forward([x_1[N,C1,h1,w1], ..., x_b])`` -> the fused branches, ``x_i``'s sizes kept.
    """

    align_corners: bool = False

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(t) for branch, t in zip(self.branches, x, strict=True)]
        fused = []
        for i, paths in enumerate(self.fuse_layers):
            y = None
            for j, path in enumerate(paths):
                z = path(x[j])  # j > i: 1x1 conv + BN (the nn.Upsample is an Identity here)
                if j > i:
                    z = F.interpolate(z, size=x[i].shape[-2:], mode="bilinear", align_corners=self.align_corners)
                y = z if y is None else y + z
            fused.append(self.fuse_act(y))
        return fused


def use_bilinear_fuse(backbone: nn.Module, align_corners: bool) -> int:
    """Turn every fuse layer of a timm HRNet ``backbone`` into HRNet's bilinear, size-matched one, in place
    (:class:`BilinearFuseModule`); returns how many modules changed."""
    changed = 0
    for module in backbone.modules():
        if type(module) is HighResolutionModule and isinstance(module.fuse_layers, nn.ModuleList):
            for i, paths in enumerate(module.fuse_layers):
                for j in range(i + 1, len(paths)):
                    upsample = paths[j][-1]
                    if not isinstance(upsample, nn.Upsample):
                        raise RuntimeError(f"timm's HRNet fuse path {i}<-{j} ends in {type(upsample).__name__}, not "
                                           "nn.Upsample: this timm version is not the one seg_template knows")
                    paths[j][-1] = nn.Identity()
            module.__class__ = BilinearFuseModule
            module.align_corners = align_corners
            changed += 1
    return changed


class HRNetHead(nn.Module):
    """Concat all branches at the stride-4 resolution, fuse with 1x1 conv-BN-ReLU, classify with 1x1 conv.

    ``forward([x4[N,C1,h,w], x8, x16, x32])`` -> ``logits[N,num_classes,h,w]``.
    """

    def __init__(self, in_channels: list[int], num_classes: int, align_corners: bool = False,
                 init: str = "default") -> None:
        super().__init__()
        channels = sum(in_channels)
        self.align_corners = align_corners
        self.fuse = nn.Sequential(
            # default: no bias, the BN right after absorbs it; hrnet: HRNet's last_layer has one
            nn.Conv2d(channels, channels, 1, bias=init == "hrnet"),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        if init == "hrnet":  # HRNet's init_weights: conv weights N(0, 0.001); biases keep PyTorch's init
            for conv in (self.fuse[0], self.classifier):
                nn.init.normal_(conv.weight, std=0.001)

    def forward(self, branches: list[Tensor]) -> Tensor:
        size = branches[0].shape[-2:]
        resized = [branches[0]] + [
            F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in branches[1:]
        ]
        return self.classifier(self.fuse(torch.cat(resized, dim=1)))


class HRNetSegmentation(nn.Module):
    """``forward(images[N,3,H,W])`` -> ``logits[N,num_classes,ceil(H/4),ceil(W/4)]`` (no aux head).

    With timm's nearest fuse layers (upsampling by exact powers of two), inputs whose sides are not multiples
    of 32 (ADE20K validation images, odd crops) are zero-padded (zero = the normalised mean) at the bottom /
    right and the logits cropped back: ``size_divisor`` is 32. With ``fuse_upsample="bilinear"`` every size
    goes through as it is (``size_divisor`` 1).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, align_corners: bool = False,
                 fuse_upsample: str = "nearest", head_init: str = "default") -> None:
        super().__init__()
        self.backbone = backbone
        self.size_divisor = 32
        if fuse_upsample == "bilinear" and use_bilinear_fuse(backbone, align_corners):
            self.size_divisor = 1
        self.head = HRNetHead(list(backbone.feature_info.channels()), num_classes, align_corners, head_init)

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
          compile: bool = False, fuse_upsample: str = "nearest", head_init: str = "default") -> HRNetSegmentation:
    """Build HRNetV2-``variant`` for ``num_classes`` classes (output stride 4).

    ``pretrained``: null, a local file (timm backbone or full model; see ``seg_template.models.weights``),
    ``true`` (timm's default ImageNet weights when cached or downloadable, else from scratch with a warning:
    see ``seg_template.models.download``), or a timm tag such as ``ms_in1k`` (must be obtained; timm
    downloads it from the Hugging Face hub on first use).
    ``align_corners``: for the branch upsampling (the head's, and the fuse layers' with ``fuse_upsample=
    "bilinear"``); HRNet's configs set it per recipe: false for Cityscapes, HRNet's default true for ADE20K.
    ``fuse_upsample`` (``nearest`` | ``bilinear``) and ``head_init`` (``default`` | ``hrnet``): the module
    docstring.
    """
    for key, value, choices in (("fuse_upsample", fuse_upsample, FUSE_UPSAMPLE), ("head_init", head_init, HEAD_INIT)):
        if value not in choices:
            raise ConfigError(f"model.{key}={value!r}: choose from {', '.join(choices)}")
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
    net = HRNetSegmentation(backbone, num_classes, align_corners, fuse_upsample, head_init)
    return finalize_model(net, pretrained, compile)
