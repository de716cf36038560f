"""Whole-image, sliding-window and multi-scale + flip inference (seg_template/inference/)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_template.inference import InferenceModel, predict, predict_slide, predict_whole, window_starts


class Stride4Net(nn.Module):
    """A conv net with a 3x3 receptive field at the input, returning logits at stride 4 (the contract)."""

    def __init__(self, num_classes: int = 3, aux: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4),
                                  nn.Conv2d(8, num_classes, 1))
        self.aux = aux

    def forward(self, x: torch.Tensor):
        out = self.body(x)
        return {"out": out, "aux": out * 0} if self.aux else out


class PixelNet(nn.Module):
    """Per-pixel (1x1) logits at full resolution: any tiling or padding gives the same answer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 40, 56)


def test_whole_returns_image_size_logits(images: torch.Tensor) -> None:
    net = Stride4Net().eval()
    logits = predict_whole(net, images)
    assert logits.shape == (2, 3, 40, 56)
    # bilinear upsampling of the stride-4 map, done once: matches interpolating the raw output
    raw = net(images)
    assert torch.allclose(logits, torch.nn.functional.interpolate(raw, size=(40, 56), mode="bilinear"))


def test_dict_output_uses_out(images: torch.Tensor) -> None:
    torch.manual_seed(1)
    plain = Stride4Net()
    with_aux = Stride4Net(aux=True)
    with_aux.load_state_dict(plain.state_dict())
    assert torch.allclose(predict_whole(plain, images), predict_whole(with_aux, images))


def test_window_starts_cover_the_extent() -> None:
    assert window_starts(56, 32, 16) == [0, 16, 24]
    assert window_starts(32, 32, 16) == [0]
    assert window_starts(20, 32, 16) == [0]


def test_slide_with_one_window_equals_whole(images: torch.Tensor) -> None:
    net = Stride4Net().eval()
    with torch.no_grad():
        slide = predict_slide(net, images, crop_size=(40, 56), stride=(20, 28))
        whole = predict_whole(net, images)
    assert torch.allclose(slide, whole, atol=1e-6)


def test_overlapping_windows_are_averaged(images: torch.Tensor) -> None:
    net = PixelNet().eval()
    with torch.no_grad():
        whole = predict_whole(net, images)
        for crop, stride in (((16, 16), (8, 8)), ((24, 32), (10, 7)), ((64, 64), (32, 32))):  # last: padded
            slide = predict_slide(net, images, crop_size=crop, stride=stride)
            assert slide.shape == whole.shape
            assert torch.allclose(slide, whole, atol=1e-5), (crop, stride)


def test_slide_rejects_bad_windows(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="stride"):
        predict_slide(PixelNet(), images, crop_size=(16, 16), stride=(32, 8))


def test_flip_and_scales(images: torch.Tensor) -> None:
    net = Stride4Net().eval()
    with torch.no_grad():
        flipped = predict(net, images, flip=True)
        manual = (predict_whole(net, images) + predict_whole(net, images.flip(-1)).flip(-1)) / 2
        assert flipped.shape == (2, 3, 40, 56)
        assert torch.allclose(flipped, manual, atol=1e-6)
        # the flip average of a mirrored image is the mirror of the flip average
        assert torch.allclose(predict(net, images.flip(-1), flip=True), flipped.flip(-1), atol=1e-5)
        multi = predict(net, images, scales=[0.5, 1.0, 1.5], flip=True)
        assert multi.shape == (2, 3, 40, 56) and torch.isfinite(multi).all()
        assert torch.allclose(predict(net, images, scales=[1.0]), predict_whole(net, images))
        slide_ms = predict(net, images, mode="slide", crop_size=(24, 24), stride=(16, 16), scales=[0.75, 1.25])
        assert slide_ms.shape == (2, 3, 40, 56)


def test_bad_settings_name_the_key(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="crop_size"):
        predict(PixelNet(), images, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        predict(PixelNet(), images, mode="tiles")
    with pytest.raises(ValueError, match="scales"):
        predict(PixelNet(), images, scales=[])


def test_inference_model_wraps_a_net(images: torch.Tensor) -> None:
    net = PixelNet()
    wrapped = InferenceModel(net, mode="slide", crop_size=[16, 16], stride=[8, 8], scales=[1.0], flip=True)
    with torch.no_grad():
        assert torch.allclose(wrapped(images), net(images), atol=1e-5)  # 1x1 conv commutes with flips


@pytest.mark.parametrize("preset", ["whole", "slide", "ms_flip"])
@pytest.mark.parametrize("extra", [[], ["inference.bounded=true", "inference.window_batch=2"]])
def test_every_inference_key_is_an_inference_model_argument(compose_cfg, preset, extra) -> None:
    """eval.py and predict.py build ``InferenceModel(net, **cfg.inference)``: every key must be accepted
    (a bounded preset other than slide is a ConfigError naming the key)."""
    from omegaconf import OmegaConf

    from seg_template.errors import ConfigError

    cfg = compose_cfg("predict", [f"inference={preset}", *extra])
    settings = OmegaConf.to_container(cfg.inference, resolve=True)
    if extra and preset != "slide":
        with pytest.raises(ConfigError, match="inference"):
            InferenceModel(PixelNet(), **settings)
        return
    model = InferenceModel(PixelNet(), **settings)
    with torch.no_grad():
        labels = model.predict_labels(torch.randn(1, 3, 20, 30))
    assert labels.shape == (1, 20, 30)


def test_a_window_larger_than_the_image_warns_once(caplog) -> None:
    model = InferenceModel(Stride4Net(), mode="slide", crop_size=[48, 48], stride=[32, 32])
    with caplog.at_level("WARNING", logger="seg_template.inference.model"):
        model(torch.randn(1, 3, 32, 40))
        model(torch.randn(1, 3, 32, 40))
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "inference.crop_size=[48, 48] is larger than the 32x40" in caplog.text
