"""The one weights loader: model.pretrained=<local file> (round trips, containers, other class counts, backbone-only
files, bad input), the strict loader of eval/predict, and ImageNet weights offline."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from seg_template.errors import CheckpointError
from seg_template.models.hrnet import hrnet, timm_pretrained_tag
from seg_template.models.small import small_segnet
from seg_template.models.torchvision_zoo import resolve_weights, torchvision_model
from seg_template.models.weights import load_net_weights, load_pretrained, read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def source():
    """A small HRNet with non-default weights (and BN statistics) to save and reload."""
    torch.manual_seed(0)
    model = hrnet("hrnet_w18_small", num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
    return model


def assert_same(a: dict, b: dict, keys=None) -> None:
    for k in keys if keys is not None else a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_full_round_trip(tmp_path, source):
    path = tmp_path / "full.pth"
    torch.save(source.state_dict(), path)
    model = hrnet("hrnet_w18_small", num_classes=5, pretrained=str(path))
    assert_same(source.state_dict(), model.state_dict())


@pytest.mark.parametrize("container", ["lightning", "references", "ddp_compiled", "safetensors"])
def test_checkpoint_containers(tmp_path, source, container):
    state = source.state_dict()
    if container == "lightning":  # SegmentationModule keeps the model as .net
        path = tmp_path / "last.ckpt"
        torch.save({"epoch": 3, "global_step": 10, "state_dict": {f"net.{k}": v for k, v in state.items()}}, path)
    elif container == "references":  # torchvision references/segmentation
        path = tmp_path / "model_29.pth"
        torch.save({"model": state, "epoch": 29}, path)
    elif container == "ddp_compiled":
        path = tmp_path / "wrapped.pt"
        torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = hrnet("hrnet_w18_small", num_classes=5)
    report = load_pretrained(model, path)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert_same(state, model.state_dict())


def test_other_number_of_classes_loads_backbone_and_skips_head(tmp_path, source, caplog):
    path = tmp_path / "five_classes.pth"
    torch.save(source.state_dict(), path)
    model = hrnet("hrnet_w18_small", num_classes=3)
    fresh_head = model.head.classifier.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="seg_template.models.weights"):
        report = load_pretrained(model, path)
    assert {k for k, _, _ in report.mismatched} == {"head.classifier.weight", "head.classifier.bias"}
    assert ("head.classifier.weight", (5, 240, 1, 1), (3, 240, 1, 1)) in report.mismatched
    backbone = [k for k in source.state_dict() if k.startswith("backbone.")]
    assert_same(source.state_dict(), model.state_dict(), backbone)
    assert torch.equal(model.head.classifier.weight, fresh_head)  # kept at its initialisation
    assert "head.classifier.weight" in caplog.text and "shape-mismatched" in caplog.text


def test_backbone_only_file(tmp_path, source):
    path = tmp_path / "backbone.pth"
    torch.save(source.backbone.state_dict(), path)  # keys without the "backbone." prefix
    model = hrnet("hrnet_w18_small", num_classes=5)
    report = load_pretrained(model, path)
    assert report.missing and all(k.startswith("head.") for k in report.missing)
    assert not report.unexpected
    assert_same(source.state_dict(), model.state_dict(), [k for k in report.loaded])
    assert len(report.loaded) == len(source.backbone.state_dict())


def test_imagenet_resnet_file_loads_into_torchvision_backbone(tmp_path):
    """A plain torchvision ResNet checkpoint (fc included) fills FCN's backbone; fc is reported unexpected."""
    from torchvision.models import resnet50

    resnet = resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    model = torchvision_model("fcn_resnet50", num_classes=4, aux=True)
    report = load_pretrained(model, path)
    assert report.unexpected == ["fc.bias", "fc.weight"]
    assert all(k.startswith(("classifier.", "aux_classifier.")) for k in report.missing)
    torch.testing.assert_close(model.backbone.conv1.weight, resnet.conv1.weight)


def test_mobilenet_features_file_maps_onto_backbone(tmp_path):
    from torchvision.models import mobilenet_v3_large

    net = mobilenet_v3_large(dilated=True)
    path = tmp_path / "mnv3.pth"
    torch.save(net.state_dict(), path)  # keys "features.N...." and "classifier...."
    model = torchvision_model("lraspp_mobilenet_v3", num_classes=4)
    report = load_pretrained(model, path)
    assert len(report.loaded) == len([k for k in model.state_dict() if k.startswith("backbone.")])
    torch.testing.assert_close(model.backbone["0"][0].weight, net.features[0][0].weight)


def test_wrong_architecture_raises_listing_keys(tmp_path):
    path = tmp_path / "lraspp.pth"
    torch.save(torchvision_model("lraspp_mobilenet_v3", num_classes=5).state_dict(), path)
    with pytest.raises(ValueError, match="another architecture") as err:
        hrnet("hrnet_w18_small", num_classes=5, pretrained=str(path))
    message = str(err.value)
    assert str(path) in message and "backbone.0.0.weight" in message and "Unmatched file keys" in message


def test_wider_hrnet_is_a_wrong_architecture(tmp_path, source):
    """Same key names, other shapes everywhere (w18-small file into w18): shape mismatches, not a silent load."""
    path = tmp_path / "small.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(ValueError, match="Shape mismatches"):
        hrnet("hrnet_w18", num_classes=5, pretrained=str(path))


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/weights.pth"):
        hrnet("hrnet_w18_small", num_classes=5, pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        torchvision_model("lraspp_mobilenet_v3", num_classes=5, pretrained="weights/lraspp.pth")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(path)


def test_file_without_tensors(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, path)
    with pytest.raises(ValueError, match="no tensors"):
        read_state_dict(path)


def test_library_weight_names_resolve_without_download():
    from torchvision.models import ResNet101_Weights
    from torchvision.models.segmentation import DeepLabV3_ResNet101_Weights

    arch = "deeplabv3_resnet101"
    assert resolve_weights(arch, "COCO_WITH_VOC_LABELS_V1") is DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1
    assert resolve_weights(arch, "IMAGENET1K_V2") is ResNet101_Weights.IMAGENET1K_V2
    assert resolve_weights(arch, "ResNet101_Weights.IMAGENET1K_V1") is ResNet101_Weights.IMAGENET1K_V1
    assert resolve_weights(arch, "default") is ResNet101_Weights.DEFAULT
    with pytest.raises(ValueError, match="another model"):
        resolve_weights(arch, "ResNet50_Weights.IMAGENET1K_V1")
    assert timm_pretrained_tag("hrnet_w48", "ms_in1k") == "hrnet_w48.ms_in1k"
    assert timm_pretrained_tag("hrnet_w18", "hrnet_w18.ms_aug_in1k") == "hrnet_w18.ms_aug_in1k"


def test_unknown_weight_names_list_the_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        torchvision_model("fcn_resnet50", num_classes=3, pretrained="IMAGENET_V9")
    with pytest.raises(ValueError, match="ms_in1k"):
        hrnet("hrnet_w48", num_classes=3, pretrained="in22k")


@pytest.mark.slow
def test_checkpoint_of_our_own_training_run_is_a_pretrained_file(compose_cfg, tmp_path):
    """A .ckpt written by train() (LightningModule with .net, hyper-parameters) loads with weights_only=True,
    here into a model for another number of classes: backbone in, head skipped."""
    from seg_template.train import train

    tiny = ["model=hrnet_w18_small", "data.train_set.length=4", "data.val_set.length=2", "data.batch_size=2",
            "data.train_set.image_size=[64,64]", "trainer.max_epochs=1", "test=false"]
    cfg = compose_cfg(overrides=tiny, output_dir=tmp_path / "run")
    _, objects = train(cfg)
    ckpt = objects["trainer"].checkpoint_callback.best_model_path
    assert ckpt.endswith(".ckpt")
    trained = objects["module"].net.state_dict()
    model = hrnet("hrnet_w18_small", num_classes=3, pretrained=ckpt)
    backbone = [k for k in trained if k.startswith("backbone.")]
    assert_same(trained, model.state_dict(), backbone)
    assert model.head.classifier.weight.shape[0] == 3


# ----------------------------------------------------------------- the strict loader (eval, predict)
def small_checkpoint(path, num_classes: int, prefix: str = "net.") -> dict:
    """A Lightning-style checkpoint of a width-4 SmallSegNet (as SegmentationModule saves it) at ``path``."""
    torch.manual_seed(num_classes)
    state = small_segnet(num_classes, width=4).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 2, "state_dict": {**{prefix + k: v for k, v in state.items()}, "loss.weight": torch.ones(3)},
                "hyper_parameters": {"num_classes": num_classes}}, path)
    return state


@pytest.mark.parametrize("prefix", ["net.", "net._orig_mod."])
def test_strict_loader_takes_the_net_of_a_lightning_checkpoint(tmp_path, prefix):
    state = small_checkpoint(tmp_path / "best.ckpt", 5, prefix)
    net = small_segnet(5, width=4)
    report = load_net_weights(net, tmp_path / "best.ckpt")
    assert len(report.loaded) == len(state)
    assert_same(state, net.state_dict())


def test_strict_loader_takes_a_plain_state_dict(tmp_path):
    source = small_segnet(5, width=4)
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "weights.pth")
    net = small_segnet(5, width=4)
    load_net_weights(net, tmp_path / "weights.pth")
    assert_same(source.state_dict(), net.state_dict())


def test_strict_loader_names_file_shapes_and_the_options_to_pass(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    small_checkpoint(ckpt, 6)
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- model=small\n- data=folder\n- loss=ohem\n")
    with pytest.raises(CheckpointError) as err:
        load_net_weights(small_segnet(5, width=4), ckpt)
    message = str(err.value)
    assert str(ckpt) in message and "classifier.weight (checkpoint [6, 8, 1, 1], model [5, 8, 1, 1])" in message
    assert "num_classes=6" in message and "used: model=small data=folder)" in message


def test_strict_loader_refuses_another_architecture(tmp_path):
    small_checkpoint(tmp_path / "best.ckpt", 5)
    with pytest.raises(CheckpointError, match="not in the checkpoint.*not in the model"):
        load_net_weights(hrnet("hrnet_w18_small", num_classes=5), tmp_path / "best.ckpt")


# ----------------------------------------------------------------- ImageNet weights, offline
@pytest.mark.parametrize("build", [lambda: torchvision_model("lraspp_mobilenet_v3", num_classes=3, pretrained=True),
                                   lambda: hrnet("hrnet_w18_small", num_classes=3, pretrained=True)],
                         ids=["torchvision", "timm"])
def test_imagenet_true_offline_trains_from_scratch_with_one_line(offline, caplog, build):
    with caplog.at_level(logging.WARNING):
        model = build()
    assert isinstance(model, nn.Module)
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "cannot be reached" in record.message and "training from scratch" in record.message
    assert "pass model.pretrained=<that file>" in record.message and "https://" in record.message


def test_a_named_weight_offline_is_an_error(offline):
    with pytest.raises(CheckpointError, match=r"IMAGENET1K_V1.*cannot be reached.*model.pretrained=<that file>"):
        torchvision_model("lraspp_mobilenet_v3", num_classes=3, pretrained="IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match="hrnet_w18_small.ms_in1k"):
        hrnet("hrnet_w18_small", num_classes=3, pretrained="ms_in1k")


def test_imagenet_weights_come_from_the_download_cache_offline(offline, caplog):
    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

    cached = offline / "torch" / "hub" / "checkpoints" / Path(MobileNet_V3_Large_Weights.DEFAULT.url).name
    cached.parent.mkdir(parents=True)
    reference = mobilenet_v3_large()
    torch.save(reference.state_dict(), cached)
    with caplog.at_level(logging.WARNING):
        model = torchvision_model("lraspp_mobilenet_v3", num_classes=3, pretrained=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    torch.testing.assert_close(model.backbone["0"][0].weight, reference.features[0][0].weight)


def test_data_config_decides_imagenet_weights(compose_tmp):
    """Real datasets set data.imagenet_pretrained=true, which the torchvision / HRNet configs read; the
    synthetic default does not, so the default run and the tests never touch the network."""
    assert compose_tmp("model=lraspp_mobilenet_v3").model.pretrained is False  # data=synthetic: from scratch
    for data in ("cityscapes", "voc", "ade20k", "folder"):
        assert compose_tmp(f"data={data}", "model=hrnet_w18").model.pretrained is True, data
    assert compose_tmp("data=cityscapes", "model=small").model.pretrained is None  # nothing to download
    cfg = compose_tmp("data=cityscapes", "model=fcn_resnet50", "model.pretrained=w.pth")
    assert cfg.model.pretrained == "w.pth"
