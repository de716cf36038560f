"""Model zoo: every configs/model/*.yaml builds and honours the model contract (native-stride logits, aux where
its config says ``aux``); the shipped models also at their known strides.

The model configs are discovered: a new ``configs/model/<name>.yaml`` is tested here as soon as it exists,
without an entry in any table. Shapes are checked on the meta device (no memory, no compute) where the model
builds there, on CPU otherwise; the light models run for real on CPU, forward and backward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from seg_template.build import build_net
from seg_template.models.outputs import main_logits, split_outputs
from tests.helpers import skip_unless_model_importable

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
MODELS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
#: the shipped models' known strides: config name -> (stride of "out", stride of "aux" or None when the model
#: returns a plain tensor). A model without an entry has its stride read from its output.
KNOWN_STRIDES = {
    "fcn_resnet50": (8, 8),
    "fcn_resnet101": (8, 8),
    "deeplabv3_resnet50": (8, 8),
    "deeplabv3_resnet101": (8, 8),
    "deeplabv3_mobilenet_v3": (16, 8),
    "lraspp_mobilenet_v3": (8, None),
    "hrnet_w18_small": (4, None),
    "hrnet_w18": (4, None),
    "hrnet_w48": (4, None),
    "small": (4, None),
}
LIGHT = ["lraspp_mobilenet_v3", "deeplabv3_mobilenet_v3", "hrnet_w18_small"]
NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def model_cfg(name: str, **overrides):
    """The model node of configs/model/<name>.yaml, with a stand-in data node for the interpolations (the
    calling test skips when the model's optional package is missing: the smp models)."""
    skip_unless_model_importable(name)
    cfg = OmegaConf.merge({"data": {"num_classes": NUM_CLASSES}},
                          {"model": OmegaConf.load(CONFIG_DIR / f"{name}.yaml")}, {"model": overrides})
    return cfg.model


def build(name: str, **overrides) -> nn.Module:
    return build_net(model_cfg(name, **overrides))[0]


def raw_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"), resolve=False)


def forward_shapes(name: str, size: tuple[int, int], train: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, aux)`` of ``model=<name>`` on two ``size`` images: on the meta device when the model builds and
    runs there, else for real on CPU without gradients."""
    try:
        with torch.device("meta"):
            return split_outputs(build(name).train(train)(torch.empty(2, 3, *size)))
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel in a library model
        with torch.no_grad():
            return split_outputs(build(name).train(train)(torch.zeros(2, 3, *size)))


def stride_of(logits: torch.Tensor, size: tuple[int, int]) -> int:
    """The output stride of ``logits[N, C, h, w]`` for input ``size``: one power of two for both sides."""
    stride = size[0] // logits.shape[-2]
    assert stride in (1, 2, 4, 8, 16, 32), f"stride {stride}: logits {tuple(logits.shape)} for input {size}"
    assert logits.shape[-2:] == (size[0] // stride, size[1] // stride), "the same stride on both sides"
    return stride


@pytest.mark.parametrize("name", MODELS)
def test_config_keys(name):
    raw = raw_config(name)
    assert raw["_target_"], "a model config builds an nn.Module"
    assert raw["num_classes"] == "${data.num_classes}"  # the class count comes from the data config
    assert raw.get("compile", False) is False and raw.get("align_corners", False) in (True, False)
    if name in KNOWN_STRIDES:
        # ImageNet weights when the data config asks for them (real datasets); see configs/model/README.md
        pretrained = None if name == "small" else "${oc.select:data.imagenet_pretrained,null}"
        assert raw["pretrained"] == pretrained and raw["align_corners"] is False
        assert ("aux" in raw) == name.startswith(("fcn", "deeplab", "lraspp"))


@pytest.mark.parametrize("name", MODELS)
def test_output_stride_and_aux(name):
    """The model contract: ``out`` at a native stride (the same on both sides), ``aux`` only where the config
    asks for one, with the data config's class count."""
    size = (64, 96)
    out, aux = forward_shapes(name, size)
    assert out.shape[:2] == (2, NUM_CLASSES)
    out_stride = stride_of(out, size)
    aux_stride = None if aux is None else stride_of(aux, size)
    if aux is not None:
        assert aux.shape[:2] == (2, NUM_CLASSES) and raw_config(name).get("aux") is True
    if name in KNOWN_STRIDES:
        assert (out_stride, aux_stride) == KNOWN_STRIDES[name]


@pytest.mark.parametrize("name", [n for n in MODELS if raw_config(n).get("aux") is True])
def test_aux_toggle(name):
    """``model.aux=false`` gives no aux logits, in whatever form of the output contract the model returns."""
    with torch.device("meta"):
        model = build(name, aux=False)
        outputs = model(torch.empty(2, 3, 64, 64))  # >1 image: ASPP's image-pool BN needs 2 values in train
    out, aux = split_outputs(outputs)
    assert aux is None and out.shape[:2] == (2, NUM_CLASSES)


def test_lraspp_rejects_aux():
    from seg_template.models.torchvision_zoo import torchvision_model

    with pytest.raises(ValueError, match="no auxiliary head"):
        torchvision_model("lraspp_mobilenet_v3", 3, aux=True)


def test_unknown_arch_and_variant_are_named():
    from seg_template.models.hrnet import hrnet
    from seg_template.models.torchvision_zoo import torchvision_model

    with pytest.raises(ValueError, match="deeplabv4"):
        torchvision_model("deeplabv4", 3)
    with pytest.raises(ValueError, match="hrnet_w17"):
        hrnet("hrnet_w17", 3)


@pytest.mark.parametrize("name", LIGHT)
def test_light_models_train_step_on_cpu(name):
    """Real forward + backward: every parameter gets a gradient (no unused parameters to upset DDP)."""
    torch.manual_seed(0)
    model = build(name).train()
    out, aux = split_outputs(model(torch.randn(2, 3, 64, 64)))
    assert out.shape[:2] == (2, NUM_CLASSES)
    stride_of(out, (64, 64))
    loss = out.float().mean() + (aux.float().mean() if aux is not None else 0)
    loss.backward()
    assert torch.isfinite(loss)
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("name", LIGHT)
def test_sides_not_multiple_of_32(name):
    """ADE20K validation images have arbitrary sizes; HRNet pads internally, the others round up."""
    stride = stride_of(forward_shapes(name, (64, 96), train=False)[0], (64, 96))
    out, _ = forward_shapes(name, (61, 99), train=False)
    assert out.shape[-2:] == (-(-61 // stride), -(-99 // stride))


@pytest.mark.parametrize("name", LIGHT)
def test_sync_batchnorm_conversion(name):
    """trainer=ddp converts BN layers; our models use plain nn.BatchNorm2d, so all of them convert."""
    model = build(name)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert n_bn > 0
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    with torch.no_grad():  # eval-mode SyncBN needs no process group
        out, _ = split_outputs(converted(torch.randn(1, 3, 64, 64)))
    assert out.shape[1] == NUM_CLASSES


def test_compile_flag_compiles_in_place_and_keeps_parameter_names():
    plain = build("hrnet_w18_small")
    compiled = build("hrnet_w18_small", compile=True)
    assert compiled._compiled_call_impl is not None and plain._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_on_cpu(name):
    torch.manual_seed(0)
    model = build(name).train()
    out, aux = split_outputs(model(torch.randn(2, 3, 64, 64)))
    (out.mean() + (aux.mean() if aux is not None else 0)).backward()
    assert out.shape[:2] == (2, NUM_CLASSES) and stride_of(out, (64, 64))
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = build("lraspp_mobilenet_v3").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        eager = model._call_impl(x)  # bypasses the compiled wrapper
        model.compile()
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_model_composes_with_the_real_configs(name, compose_cfg, tmp_path):
    """`python train.py model=<name> data=cityscapes`: num_classes comes from the data config (ImageNet
    weights, which Cityscapes asks for, are left out: tests stay offline)."""
    skip_unless_model_importable(name)
    cfg = compose_cfg(overrides=[f"model={name}", "data=cityscapes", "model.pretrained=null"], output_dir=tmp_path)
    try:
        with torch.device("meta"):
            out = main_logits(build_net(cfg.model)[0].eval()(torch.empty(1, 3, 64, 64)))
    except (NotImplementedError, RuntimeError):  # see forward_shapes
        with torch.no_grad():
            out = main_logits(build_net(cfg.model)[0].eval()(torch.zeros(1, 3, 64, 64)))
    assert out.shape[1] == 19


def test_channels_last_stores_nhwc_weights_and_computes_the_same(compose_cfg) -> None:
    """model.channels_last=true: 4-D weights NHWC, the module feeds NHWC images; the same logits, loss and
    parameter names (a checkpoint of one loads into the other)."""
    from seg_template.build import build_module

    torch.manual_seed(0)
    images = torch.randn(2, 3, 40, 56)
    modules = {}
    for flag in (False, True):
        torch.manual_seed(1)
        modules[flag] = build_module(compose_cfg("train", [f"model.channels_last={str(flag).lower()}"]))
    nhwc = modules[True]
    conv = next(m for m in nhwc.net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert nhwc.state_dict().keys() == modules[False].state_dict().keys()
    nhwc.load_state_dict(modules[False].state_dict())
    torch.testing.assert_close(main_logits(nhwc(images)), main_logits(modules[False](images)), rtol=1e-4, atol=1e-5)
    from seg_template.errors import ConfigError

    with pytest.raises(ConfigError, match="model.channels_last='yes'"):
        build_net(model_cfg("small", channels_last="yes"))
