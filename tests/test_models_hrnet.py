"""HRNet's two options that bring timm's backbone and our head to HRNet-Semantic-Segmentation's own network
(lib/models/seg_hrnet.py): bilinear, size-matched fuse layers (any input size, no padding) and HRNet's head
initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule

from seg_template.errors import ConfigError
from seg_template.models.hrnet import BilinearFuseModule, hrnet


def _fused_as_hrnet(module: BilinearFuseModule, x: list[torch.Tensor]) -> list[torch.Tensor]:
    """HRNet's HighResolutionModule.forward, written from its source: y_i = sum_j path_ij(x_j), the coarser
    branches (j > i) resized with F.interpolate(size=x_i's size, mode="bilinear", align_corners=...)."""
    x = [branch(t) for branch, t in zip(module.branches, x, strict=True)]
    out = []
    for i, paths in enumerate(module.fuse_layers):
        y = x[0] if i == 0 else paths[0](x[0])
        for j in range(1, len(x)):
            if j == i:
                y = y + x[j]
            elif j > i:
                y = y + F.interpolate(paths[j](x[j]), size=x[i].shape[-2:], mode="bilinear",
                                      align_corners=module.align_corners)
            else:
                y = y + paths[j](x[j])
        out.append(torch.relu(y))
    return out


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_fuse_layers_compute_hrnets_fuse(align_corners: bool) -> None:
    torch.manual_seed(0)
    net = hrnet("hrnet_w18_small", 5, align_corners=align_corners, fuse_upsample="bilinear").eval()
    modules = [m for m in net.modules() if isinstance(m, HighResolutionModule) and m.num_branches > 1]
    assert modules and all(type(m) is BilinearFuseModule for m in modules)
    assert not any(isinstance(m, torch.nn.Upsample) for m in net.modules())
    module = modules[-1]  # four branches: 130 / 65 / 33 / 17 px for a 520 px input, no powers of two
    sizes = [(130, 97), (65, 49), (33, 25), (17, 13)]
    x = [torch.randn(1, c, *s) for c, s in zip(module.num_in_chs, sizes, strict=False)]
    with torch.no_grad():
        ours, reference = module([t.clone() for t in x]), _fused_as_hrnet(module, [t.clone() for t in x])
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def test_bilinear_fuse_takes_any_size_unpadded_and_keeps_the_parameters() -> None:
    torch.manual_seed(0)
    nearest = hrnet("hrnet_w18_small", 5).eval()
    bilinear = hrnet("hrnet_w18_small", 5, fuse_upsample="bilinear").eval()
    assert (nearest.size_divisor, bilinear.size_divisor) == (32, 1)
    assert nearest.state_dict().keys() == bilinear.state_dict().keys()  # checkpoints load either way
    bilinear.load_state_dict(nearest.state_dict())
    image = torch.randn(1, 3, 520, 390)  # HRNet's ADE20K evaluation size: long side 520
    with torch.no_grad():
        assert bilinear(image).shape == (1, 5, 130, 98)
        assert nearest(image).shape == (1, 5, 130, 98)  # padded to 544 x 416 and cropped back
        square = torch.randn(1, 3, 256, 256)  # a multiple of 32: only the fuse upsampling differs
        assert not torch.allclose(nearest(square), bilinear(square))


def test_hrnet_head_init_is_hrnets_last_layer() -> None:
    torch.manual_seed(0)
    default = hrnet("hrnet_w48", 19).head
    torch.manual_seed(0)
    head = hrnet("hrnet_w48", 19, head_init="hrnet").head
    assert default.fuse[0].bias is None and head.fuse[0].bias is not None  # 720 -> 720 1x1 conv, bias in HRNet
    for conv in (head.fuse[0], head.classifier):
        assert conv.weight.std().item() == pytest.approx(0.001, rel=0.05)  # init_weights: N(0, 0.001)
        assert conv.bias is not None
    assert default.classifier.weight.std().item() > 0.01  # PyTorch's default init


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fuse_upsample": "bicubic"}, r"model\.fuse_upsample='bicubic': choose from nearest, bilinear"),
    ({"head_init": "normal"}, r"model\.head_init='normal': choose from default, hrnet"),
])
def test_bad_hrnet_options_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        hrnet("hrnet_w18_small", 3, **kwargs)
