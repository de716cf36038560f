"""The CPU default: a small fully-convolutional net that trains in minutes on a laptop.

Three stride-2 conv-BN-ReLU stages reach stride 8; two dilated convolutions there widen the receptive
field to ~140 px (enough to see a whole object, since on the synthetic data the class *is* the shape);
a light decoder fuses that context back into the stride-4 features. Logits come out at stride 4; the loss
and inference upsample them (model contract).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.models.common import finalize_model, weight_name
from seg_template.options import require


class ConvBNReLU(nn.Sequential):
    """3x3 (or ``kernel``) convolution without bias (BN has one), batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                      bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SmallSegNet(nn.Module):
    """``forward(images[N, 3, H, W]) -> logits[N, num_classes, ceil(H/4), ceil(W/4)]``.

    ``width`` is the channel count of the stride-2 stage; later stages use 2x and 4x that.
    ``align_corners``: of the decoder's upsampling (the convention ``model.align_corners`` sets everywhere).
    """

    def __init__(self, num_classes: int, width: int = 16, align_corners: bool = False) -> None:
        super().__init__()
        require("model.num_classes", num_classes)
        require("model.width", width)
        w = width
        self.num_classes, self.align_corners = num_classes, bool(align_corners)
        self.stem = nn.Sequential(ConvBNReLU(3, w, stride=2), ConvBNReLU(w, w))
        self.stage4 = nn.Sequential(ConvBNReLU(w, 2 * w, stride=2), ConvBNReLU(2 * w, 2 * w))
        self.stage8 = nn.Sequential(ConvBNReLU(2 * w, 4 * w, stride=2), ConvBNReLU(4 * w, 4 * w))
        self.context = nn.Sequential(ConvBNReLU(4 * w, 4 * w, dilation=2), ConvBNReLU(4 * w, 4 * w, dilation=4))
        self.fuse = ConvBNReLU(6 * w, 2 * w)
        self.classifier = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        x4 = self.stage4(self.stem(images))
        x8 = self.stage8(x4)
        x8 = x8 + self.context(x8)  # residual: the dilated convs add context, they need not relearn x8
        up = F.interpolate(x8, size=x4.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.classifier(self.fuse(torch.cat([up, x4], dim=1)))


def small_segnet(num_classes: int, width: int = 16, pretrained: str | None = None, align_corners: bool = False,
                 compile: bool = False) -> SmallSegNet:
    """Build :class:`SmallSegNet`; ``pretrained`` is a local weights file (no downloads), loaded with
    ``torch.load(weights_only=True)`` and a report of missing / unexpected / shape-mismatched tensors."""
    model = SmallSegNet(num_classes=num_classes, width=width, align_corners=align_corners)
    if pretrained is not None and not isinstance(pretrained, str):
        raise TypeError(f"model.pretrained must be a local file path or null, got {pretrained!r}")
    if pretrained and weight_name(pretrained) is not None:
        raise ConfigError(f"model.pretrained={pretrained!r}: the small model has no named weights to download; "
                         f"give a local file path (e.g. a .ckpt or .pth) or null")
    finalize_model(model, pretrained=pretrained, compile=compile)
    return model
