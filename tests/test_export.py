"""ONNX export with proof (export.py) and running the exported file (predict.py model_file=)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seg_template.errors import ConfigError
from seg_template.onnx_model import ImageSizeLogits
from tests.helpers import TINY, TRAINED, predict, run_script, save_checkpoint, skip_unless_importable

CHECK = ["export.check_shapes=[[1,40,56],[2,33,47]]", "export.threads=1"]
#: the fast tests use torch's TorchScript exporter (seconds); the slow ones the default dynamo one (~10 s)
FAST_CHECK = [*CHECK, "export.dynamo=false"]


@pytest.fixture(autouse=True)
def _needs_onnx(one_thread) -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        skip_unless_importable(name)


def export(compose_cfg, out, *overrides):
    from seg_template.export import run_export

    return run_export(compose_cfg("export", overrides, output_dir=out), overrides=list(overrides))


def test_export_small_then_predict_with_onnxruntime(compose_cfg, tmp_path, caplog) -> None:
    import onnx

    ckpt = save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t"), tmp_path / "m.ckpt")
    with caplog.at_level(logging.INFO, logger="seg_template"):
        model_file = export(compose_cfg, tmp_path / "export", f"ckpt_path={ckpt}", *FAST_CHECK)
    assert model_file == tmp_path / "export" / "model.onnx" and model_file.is_file()
    parity = next(r.getMessage() for r in caplog.records if "max |logit difference|" in r.getMessage())
    assert "2x3x33x47" in parity and "argmax agreement" in parity
    meta = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    recipe = json.loads(meta["seg_template.recipe"])
    assert recipe["model"]["width"] == 8 and recipe["class_names"][0] == "background"

    # the same masks from the checkpoint (PyTorch) and from the ONNX file (onnxruntime), with the recipe alone
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    for name, size in (("a.png", (40, 56)), ("b.png", (35, 61))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / "in" / name)
    from_ckpt = predict(compose_cfg, tmp_path / "p1", f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}")
    from_onnx = predict(compose_cfg, tmp_path / "p2", f"model_file={model_file}", f"input={tmp_path / 'in'}",
                        "inference.flip=true")
    assert [p.name for p in from_onnx] == [p.name for p in from_ckpt] == ["a.png", "b.png"]
    assert (tmp_path / "p2" / "overlay" / "b.png").is_file()
    flipped = predict(compose_cfg, tmp_path / "p3", f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}",
                      "inference.flip=true")
    for a, b in zip(from_onnx, flipped, strict=True):  # same pre/post-processing, flip included
        assert (np.asarray(Image.open(a)) == np.asarray(Image.open(b))).mean() > 0.999

    with pytest.raises(ConfigError, match=r"model\.onnx outputs 6 classes .*data\.num_classes=5"):
        predict(compose_cfg, tmp_path / "p4", f"model_file={model_file}", f"input={tmp_path / 'in'}",
                "data.num_classes=5", "data.class_names=null")  # names for 5 classes: null, 0..4


def test_export_fails_loudly_over_tolerance(compose_cfg, tmp_path, monkeypatch) -> None:
    from seg_template.export import ExportMismatch

    ckpt = save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t"), tmp_path / "m.ckpt")
    traced = ImageSizeLogits.forward  # a faulty exporter: the file computes every logit + 1
    monkeypatch.setattr(ImageSizeLogits, "forward", lambda self, images: traced(self, images) + 1.0)
    with pytest.raises(ExportMismatch, match=r"max \|logit difference\| 1\.00e\+00.*required: max \|difference\| "
                                             r"<= 0\.001"):
        export(compose_cfg, tmp_path / "export", f"ckpt_path={ckpt}", "export.check_shapes=[[1,32,32]]",
               "export.threads=1", "export.dynamo=false")
    assert not (tmp_path / "export" / "model.onnx").exists()
    assert (tmp_path / "export" / "model.unverified.onnx").is_file()


class PaddingNet(nn.Module):
    """Pads to multiples of 32 and crops stride-4 logits with ``-(-h // 4)``, as HRNet does."""

    size_divisor = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        images = nn.functional.pad(images, (0, -w % 32, 0, -h % 32))
        return self.conv(images)[..., : -(-h // 4), : -(-w // 4)]


def test_export_wrapper_equals_the_inference_path() -> None:
    torch.manual_seed(0)
    net = PaddingNet().eval()
    wrapped = ImageSizeLogits(net)
    for size in ((37, 53), (64, 96), (33, 31)):
        images = torch.randn(2, 3, *size)
        plain = nn.functional.interpolate(net(images), size=size, mode="bilinear", align_corners=False)
        assert torch.equal(wrapped(images), plain)


@pytest.mark.slow
def test_export_torchvision_model(compose_cfg, tmp_path) -> None:
    """A torchvision model (the cheapest, LR-ASPP MobileNetV3) through the whole export and parity check."""
    cfg = compose_cfg(overrides=[*TINY, "model=lraspp_mobilenet_v3"], output_dir=tmp_path / "t")
    ckpt = save_checkpoint(cfg, tmp_path / "m.ckpt")
    assert export(compose_cfg, tmp_path / "export", f"ckpt_path={ckpt}", *CHECK).is_file()


@pytest.mark.slow
def test_export_and_predict_scripts(compose_cfg, tmp_path) -> None:
    ckpt = save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t"), tmp_path / "m.ckpt")
    exported = run_script("export.py", f"ckpt_path={ckpt}", *CHECK, f"output_file={tmp_path / 'm.onnx'}",
                          f"paths.log_dir={tmp_path}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "argmax agreement" in exported.stdout + exported.stderr
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "in" / "x.png")
    predicted = run_script("predict.py", f"model_file={tmp_path / 'm.onnx'}", f"input={tmp_path / 'in'}",
                           f"output_dir={tmp_path / 'out'}", f"paths.log_dir={tmp_path}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (tmp_path / "out" / "overlay" / "x.png").is_file()


def test_a_mismatch_of_rounding_only_says_to_raise_the_tolerance(compose_cfg, tmp_path, monkeypatch) -> None:
    """A finite model with logits around 1e4 (a stranger's checkpoint): float32 rounding alone differs by ~5e-3,
    over export.atol; the classes agree. It was a traceback advising another opset; now export.rtol accepts it,
    and with export.rtol=0 one block says the classes agree and which tolerance to raise."""
    from seg_template.cli import user_message
    from seg_template.export import ExportMismatch
    from tests.bad_input_files import raised_user_error

    ckpt = save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t"), tmp_path / "m.ckpt")
    # logits of 1e4 on both sides (the model's, scaled), and the file's off by a rounding-sized 5e-3
    monkeypatch.setattr("seg_template.onnx_model.main_logits", lambda out: (out["out"] if isinstance(
        out, dict) else out) * 1e4)
    traced = ImageSizeLogits.forward
    monkeypatch.setattr(ImageSizeLogits, "forward", lambda self, images: traced(self, images) + 5e-3)
    shapes = ["export.check_shapes=[[1,32,32]]", "export.threads=1", "export.dynamo=false"]
    export(compose_cfg, tmp_path / "ok", f"ckpt_path={ckpt}", *shapes)  # within rtol x the largest |logit|
    assert (tmp_path / "ok" / "model.onnx").is_file()
    err = raised_user_error(lambda: export(compose_cfg, tmp_path / "strict", f"ckpt_path={ckpt}", *shapes,
                                           "export.rtol=0"))
    assert isinstance(err, ExportMismatch)
    message = user_message(err)
    assert "the predicted classes agree" in message and "export.rtol=<larger>" in message
    assert "Traceback" not in message
