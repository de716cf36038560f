"""segmentation_models_pytorch as a model family (seg_template/models/smp.py): every configs/model/smp*.yaml trains a
fast_dev_run step through the real entry point, any input size gives logits of that size, the library's
refusals and ours name the option, starting weights come from a local file or smp's cache (never downloaded
here), and smp_unet / smp_segformer export to ONNX with parity through export.py. Skipped without the `.[smp]`
extra."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from seg_template.errors import CheckpointError, ConfigError
from tests.helpers import TINY, options, save_checkpoint, skip_unless_onnx

smp = pytest.importorskip("segmentation_models_pytorch", reason='the smp models need pip install -e ".[smp]"')

from seg_template.models.smp import smp_model  # noqa: E402 - after the skip: the builder imports smp

SMP_CONFIGS = [name for name in options("model") if name == "smp" or name.startswith("smp_")]
#: cheap (arch, encoder, the multiple their sides are padded to) covering each kind: none (U-Net takes any
#: size), 32, 16 (a dilated encoder), MiT
PAIRS = [("unet", "resnet18", 1), ("fpn", "resnet18", 32), ("deeplabv3plus", "resnet18", 16),
         ("segformer", "mit_b0", 32)]

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_the_smp_configs_are_the_ones_the_issue_names() -> None:
    assert {"smp", "smp_unet", "smp_fpn", "smp_deeplabv3plus", "smp_segformer", "smp_upernet"} <= set(SMP_CONFIGS)


@pytest.mark.parametrize("name", SMP_CONFIGS)
def test_config_trains_a_fast_dev_run_step(name, compose_cfg, tmp_path) -> None:
    """`python train.py model=<name> debug=fdr` on 33x47 synthetic images (not multiples of 32): train, val and
    test steps give finite losses and metrics."""
    from seg_template.train import train

    sizes = ["data.train_set.image_size=[33,47]", "data.batch_size=2", "data.train_set.length=2",
             "data.val_set.length=2", "data.test_set.length=2"]
    cfg = compose_cfg(overrides=[f"model={name}", "debug=fdr", *TINY, *sizes], output_dir=tmp_path)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert isinstance(objects["module"].net, smp.base.SegmentationModel)
    for key in ("train/loss", "val/loss", "val/mIoU", "test/mIoU"):
        assert torch.isfinite(torch.as_tensor(metrics[key])), key


@pytest.mark.parametrize(("arch", "encoder", "divisor"), PAIRS)
def test_sides_not_multiple_of_32_give_logits_of_the_image_size(arch, encoder, divisor) -> None:
    """Full-size logits for 33x47 images, equal to the logits of the image zero-padded at the bottom / right to
    the multiple smp asks for (what smp itself runs), cropped."""
    torch.manual_seed(0)
    model = smp_model(arch, encoder, num_classes=3).eval()
    assert model.size_divisor == divisor
    images = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        logits = model(images)
        padded = F.pad(images, (0, -47 % divisor, 0, -33 % divisor))
        reference = smp.base.SegmentationModel.forward(model, padded)  # smp's own forward, no padding of ours
    assert logits.shape == (2, 3, 33, 47)
    torch.testing.assert_close(logits, reference[..., :33, :47], rtol=0, atol=0)


def test_parameter_names_are_smps_own() -> None:
    model = smp_model("unet", "resnet18", num_classes=3)
    assert isinstance(model, smp.Unet) and type(model).__name__ == "PaddedUnet"
    assert "encoder.conv1.weight" in model.state_dict() and "segmentation_head.0.weight" in model.state_dict()
    plain = smp.Unet("resnet18", encoder_weights=None, classes=3)
    model.load_state_dict(plain.state_dict())  # an smp state dict loads as it is


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"arch": "unett", "encoder": "resnet18"}, r"model\.arch='unett'.*'segformer'"),
    ({"arch": "unet", "encoder": "resnet19"}, r"model\.encoder=resnet19 .*'resnet18'.*tu-<any timm model>"),
    ({"arch": "unet", "encoder": "tu-resnet19"}, r"model\.encoder=tu-resnet19: timm has no model"),
    ({"arch": "linknet", "encoder": "mit_b0"}, r"arch=linknet with model\.encoder=mit_b0.*not supported.*no mit_b"),
    ({"arch": "unet", "encoder": "resnet18", "decoder_chanels": [8]}, r"model\.decoder_chanels.*decoder_channels"),
    ({"arch": "unet", "encoder": "resnet18", "classes": 4}, r"model\.classes: set model\.num_classes"),
    ({"arch": "unet", "encoder": "resnet18", "aux": True}, r"model\.aux=true.*classification head.*aux=false"),
    ({"arch": "unet", "encoder": "resnet18", "aux_params": {"classes": 3}}, r"model\.aux_params.*classification"),
    ({"arch": "unet", "encoder": "resnet18", "activation": "softmax"}, r"model\.activation.*raw"),
    ({"arch": "unet", "encoder": "resnet18", "pretrained": "instagram"}, r"'instagram'.*\['imagenet', 'ssl', 'swsl'\]"),
], ids=["arch", "encoder", "timm_encoder", "pair", "option", "classes", "aux", "aux_params", "activation", "weight"])
def test_refusals_name_the_option(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        smp_model(num_classes=3, **kwargs)


def test_missing_smp_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[smp\]"'):
        smp_model("unet", "resnet18", num_classes=3)


# ------------------------------------------------------------------------------------------- starting weights
@pytest.mark.parametrize(("encoder", "prefix"), [("resnet18", "encoder."), ("tu-resnet18", "encoder.model.")])
def test_backbone_file_lands_in_the_encoder(tmp_path, encoder, prefix) -> None:
    """A torchvision / timm ResNet-18 file (``conv1.weight``, ``fc.*``) loads into ``encoder.*`` (smp's own
    encoders) or ``encoder.model.*`` (its timm ones): weights.py's rewrites; the classifier is ignored."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    source = resnet18().state_dict()  # timm's resnet18 has the same names
    torch.save(source, tmp_path / "resnet18.pth")
    model = smp_model("unet", encoder, num_classes=3, pretrained=str(tmp_path / "resnet18.pth"))
    own = model.state_dict()
    for key, tensor in source.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[prefix + key], tensor, rtol=0, atol=0, msg=key)


def test_smp_encoder_file_as_safetensors(tmp_path) -> None:
    """The file smp's hub serves (an encoder state dict, model.safetensors) passed as a local file."""
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("mit_b0")
    save_file(encoder.state_dict(), str(tmp_path / "model.safetensors"))
    model = smp_model("segformer", "mit_b0", num_classes=3, pretrained=str(tmp_path / "model.safetensors"))
    for key, tensor in encoder.state_dict().items():
        torch.testing.assert_close(model.state_dict()[f"encoder.{key}"], tensor, rtol=0, atol=0, msg=key)


def test_true_offline_warns_once_and_trains_from_scratch(offline, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        model = smp_model("unet", "resnet18", num_classes=3, pretrained=True)
    assert isinstance(model, smp.Unet)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "training from scratch" in record.message and "pass model.pretrained=<that file>" in record.message
    assert "https://huggingface.co/smp-hub/resnet18.imagenet/resolve/" in record.message
    assert not (offline / "hf").exists(), "nothing was downloaded"


@pytest.mark.parametrize("name", ["ssl", "resnet18.imagenet"])
def test_a_named_weight_offline_is_an_error(offline, name) -> None:
    weights = name.split(".")[-1]
    with pytest.raises(CheckpointError, match=rf"the {weights} weights of smp's encoder resnet18.*smp-hub/resnet18"
                                              rf"\.{weights}.*model\.pretrained=<that file>"):
        smp_model("unet", "resnet18", num_classes=3, pretrained=name)


def test_true_reads_smps_cache_offline(offline, caplog) -> None:
    """Encoder weights in the Hugging Face cache (where smp keeps them: smp-hub/<encoder>.<weights> at a pinned
    revision) are used without the network and without a warning."""
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    folder = offline / "hf" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in smp.encoders.get_encoder("resnet18").state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    with caplog.at_level(logging.WARNING):
        model = smp_model("unet", "resnet18", num_classes=3, pretrained="imagenet")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------- ONNX
EXPORTS = {"smp_unet": ["model=smp_unet", "model.encoder=resnet18"], "smp_segformer": ["model=smp_segformer"]}


def export_with_parity(compose_cfg, tmp_path, caplog, name: str, *overrides: str) -> str:
    """export.py's task on a checkpoint of ``model=<name>``; the parity line it logs."""
    from seg_template.export import run_export

    skip_unless_onnx()
    ckpt = save_checkpoint(compose_cfg(overrides=[*TINY, *EXPORTS[name]], output_dir=tmp_path / "t"),
                           tmp_path / "m.ckpt")
    options_ = [f"ckpt_path={ckpt}", "export.check_shapes=[[1,40,56],[2,33,47]]", "export.threads=1", *overrides]
    with caplog.at_level(logging.INFO, logger="seg_template"):
        assert run_export(compose_cfg("export", options_, output_dir=tmp_path / "e"), options_).is_file()
    return next(r.getMessage() for r in caplog.records if "max |logit difference|" in r.getMessage())


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_onnx_export_with_parity_torchscript(name, compose_cfg, tmp_path, caplog) -> None:
    parity = export_with_parity(compose_cfg, tmp_path, caplog, name, "export.dynamo=false")
    assert "2x3x33x47" in parity and "argmax agreement 100.000%" in parity


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_onnx_export_with_parity_dynamo(name, compose_cfg, tmp_path, caplog) -> None:
    """The default exporter; traced from a batch of 1 (the first check shape), exact on a batch of 2."""
    parity = export_with_parity(compose_cfg, tmp_path, caplog, name)
    assert "2x3x33x47" in parity and "argmax agreement 100.000%" in parity


def test_bench_row_with_an_encoder_override() -> None:
    """scripts/bench_models.py <config>:<encoder>: the README's rows for smp_unet:resnet18 come from here."""
    from tests.helpers import load_script

    bench = load_script("bench_models")
    table = bench.main(["--models", "smp_unet:resnet18", "--size", "64", "--reps", "1", "--warmup", "0",
                        "--num-classes", "3"])
    (row,) = [line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| smp_unet:resnet18 ")]
    assert float(row[0]) == pytest.approx(14.3, abs=0.1) and row[1:3] == [" 1 ", " no "]  # full-size logits
    with pytest.raises(SystemExit, match="no encoder to set"):
        bench.main(["--models", "small:resnet18", "--size", "64"])


def test_pan_takes_images_smaller_than_its_pyramid() -> None:
    """PAN pools its stride-16 features three times: under 128 px a side torch failed deep inside max_pool2d
    (a stranger's 64x64 run); the input is padded up to 128 and the logits cropped back."""
    model = smp_model("pan", "resnet18", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 40)).shape == (1, 3, 64, 40)


def test_a_batch_of_one_through_a_pooled_batchnorm_names_the_batch_size(compose_cfg) -> None:
    """DeepLabV3+'s image pooling normalises a [1, C, 1, 1] tensor with BatchNorm: a training batch of one image
    was torch's ValueError from deep inside; now one message naming data.batch_size."""
    from seg_template.train import train
    from tests.bad_input_files import raised_user_error

    cfg = compose_cfg("train", ["model=smp_deeplabv3plus", "model.encoder=resnet18", "data.batch_size=1",
                                "data.train_set.length=2", "data.val_set.length=2", "data.train_set.image_size=[32,32]",
                                "trainer.max_epochs=1", "test=false", "model.pretrained=null"])
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, ConfigError) and "set data.batch_size >= 2" in str(err), err
