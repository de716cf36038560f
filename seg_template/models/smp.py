"""segmentation_models_pytorch (smp): any of its architectures over any of its encoders, as a model of ours.

``smp_model(arch, encoder, num_classes)`` builds ``segmentation_models_pytorch``'s own class for ``arch``
(``unet``, ``fpn``, ``deeplabv3plus``, ``segformer``, ``upernet``, ``linknet``, ``pspnet``, ``pan``, ``manet``,
``unetplusplus``, ``deeplabv3``, ``dpt``) with the ``encoder`` (``resnet34``, ``efficientnet-b0``, ``mit_b0``,
``tu-<any timm model>``, ...). Needs the optional extra: ``pip install -e ".[smp]"`` (imported only here, only
when such a model is built).

The model contract:

- logits as the library gives them: every smp head upsamples to the input size (``[N, C, H, W]``, output
  stride 1), so the loss and inference have nothing left to resize. A plain tensor: smp has no segmentation
  auxiliary head (its ``aux_params`` is an image-level classification head, refused here like ``aux=true``).
- any input size: smp refuses sides that are not multiples of the encoder's output stride (32, or 16 / 8 for
  dilated encoders: ``encoder.output_stride``, what smp's ``check_input_shape`` asks for); the model pads them
  with zeros (= the normalised mean) at the bottom / right and crops the logits back to the image's rows and
  columns (``ceil(H / s)`` for logits at a stride ``s``; ``H`` at full size). U-Net takes any size as it is.
- parameter names are smp's own (``encoder.*``, ``decoder.*``, ``segmentation_head.*``): the built model *is*
  smp's class (``Padded<Arch>``, a subclass whose ``forward`` pads and crops), so smp state dicts and smp's
  methods (``freeze_encoder``...) work as they are, and a backbone-only file (a torchvision / timm ResNet's
  ``conv1.weight``) lands in ``encoder.conv1.weight`` (seg_template/models/weights.py).
- ``align_corners`` (``model.align_corners``) is what the loss, the metrics and inference read; smp's layers
  keep their own convention (its heads upsample with ``align_corners=True``, SegFormer / UPerNet resize their
  features with ``False``). With full-size logits it only matters for multi-scale inference's resizing.

What smp 0.6 refuses (``RESTRICTIONS``, said with its own message as a ``ConfigError`` naming ``model.arch``
and ``model.encoder``): ``dpt`` takes only ``tu-`` timm ViT encoders; ``linknet`` and ``unetplusplus`` no
``mit_b*``; ``deeplabv3``, ``deeplabv3plus`` and ``pan`` dilate their encoder, which ``vgg*`` cannot do
(SegFormer and UPerNet take any encoder). ``pan`` needs
at least 128 px a side (its pyramid pools the stride-16 features three times): smaller inputs are padded up to
it; a ViT encoder of ``dpt`` takes
only its pretraining size unless ``+model.dynamic_img_size=true`` (passed on to timm).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.models.common import finalize_model, weight_name
from seg_template.models.download import fetch_weights, hub_source, timm_source, torchvision_cached

INSTALL = 'pip install -e ".[smp]"'
#: the architecture's arguments this builder sets itself, and the keys users set them with
OWN_ARGUMENTS = {"encoder_name": "model.encoder", "encoder_weights": "model.pretrained", "classes": "model.num_classes"}
#: the multiple an architecture's decoder needs the sides to be beyond smp's own check: DPT resamples its
#: stride-16 ViT features to stride 32 and adds them back (a 33 px side padded to 48, enough for smp, fails)
DECODER_DIVISORS = {"DPT": 32}
#: the smallest side an architecture's decoder takes: PAN pools its stride-16 features three times (a side under
#: 128 px reaches 0 px), so smaller inputs are padded up to it (and the logits cropped back)
MIN_SIDES = {"PAN": 128}
#: which encoders an architecture takes, where smp 0.6 restricts them (said with its refusal)
RESTRICTIONS = {"dpt": "only tu- timm ViT encoders (e.g. tu-vit_base_patch16_224.augreg_in21k)",
                "linknet": "no mit_b* encoders", "unetplusplus": "no mit_b* encoders",
                **{a: "encoders that can be dilated (not vgg*)" for a in ("deeplabv3", "deeplabv3plus", "pan")}}
#: arguments that would break the model contract (the losses take logits of a segmentation head)
REFUSED = {"aux_params": "an image-level classification head (model.aux is refused for the same reason)",
           "activation": "applied to the logits, which the losses, the metrics and inference take raw"}


def import_smp() -> Any:
    """The ``segmentation_models_pytorch`` module, or a ``ConfigError`` saying how to install it."""
    try:
        import segmentation_models_pytorch
    except ImportError as err:
        raise ConfigError(f"the smp models need segmentation_models_pytorch, which is not installed: {INSTALL} "
                          f"({err})") from None
    return segmentation_models_pytorch


class PadToDivisor:
    """Mixed in before an smp architecture class: ``forward(images[N, 3, H, W])`` -> ``logits[N, C, H, W]``
    (or ``[N, C, ceil(H / s), ceil(W / s)]`` for a head that stops at a stride ``s``), for any ``H`` and ``W``."""

    decoder_divisor = 1  # set per architecture by padded_class (DECODER_DIVISORS)
    min_side = 0  # likewise (MIN_SIDES)

    @property
    def size_divisor(self) -> int:
        """The multiple the input sides must be: smp's ``check_input_shape`` asks for ``encoder.output_stride``
        (32; 16 or 8 when dilated), raised where the decoder needs more; 1 for U-Net (any size)."""
        if not getattr(self, "requires_divisible_input_shape", True):  # an attribute of smp 0.5+ models
            return 1
        return max(int(self.encoder.output_stride), self.decoder_divisor)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        d = self.size_divisor
        # non-negative integer arithmetic only: ONNX's division truncates where Python's floors
        pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
        # an architecture whose pyramid needs a minimum size (PAN: 128 px) gets its sides padded up to it
        pad_h, pad_w = max(pad_h, self.min_side - h), max(pad_w, self.min_side - w)
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        logits = super().forward(images)
        sh, sw = images.shape[-2] // logits.shape[-2], images.shape[-1] // logits.shape[-1]
        return logits[..., : (h + sh - 1) // sh, : (w + sw - 1) // sw]


@functools.cache
def padded_class(arch_class: type) -> type:
    """``Padded<Arch>``: smp's ``arch_class`` with :class:`PadToDivisor`'s ``forward`` (one class per arch)."""
    return type(f"Padded{arch_class.__name__}", (PadToDivisor, arch_class),
                {"__module__": __name__, "decoder_divisor": DECODER_DIVISORS.get(arch_class.__name__, 1),
                 "min_side": MIN_SIDES.get(arch_class.__name__, 0)})


def architecture(smp: Any, arch: str, encoder: str) -> type:
    """smp's class for ``arch``, after checking that smp knows ``arch`` and ``encoder`` (``ConfigError``s
    listing the choices)."""
    archs = smp.MODEL_ARCHITECTURES_MAPPING
    if not isinstance(arch, str) or arch.lower() not in archs:
        raise ConfigError(f"model.arch={arch!r} is not an smp architecture; choose from {sorted(archs)}")
    if not isinstance(encoder, str):
        raise ConfigError(f"model.encoder must be an smp encoder name, got {encoder!r}")
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            raise ConfigError(f"model.encoder={encoder}: timm has no model '{encoder[3:]}' (tu-<timm model>[.<tag>], "
                              f"e.g. tu-resnet50, tu-convnext_tiny.fb_in1k; timm.list_models() lists them)")
    elif encoder not in smp.encoders.get_encoder_names():
        raise ConfigError(f"model.encoder={encoder} is not an smp encoder; choose from "
                          f"{smp.encoders.get_encoder_names()}, or tu-<any timm model> (e.g. tu-resnet50)")
    return archs[arch.lower()]


def check_arguments(arch_class: type, arch: str, encoder: str, options: dict[str, Any]) -> None:
    """Refuse ``model.<key>`` options the architecture does not take (smp passes unknown keywords to the
    encoder, where all but timm's ignore them), that this builder sets itself, or that break the contract."""
    for key, value in options.items():
        if key in OWN_ARGUMENTS:
            raise ConfigError(f"model.{key}: set {OWN_ARGUMENTS[key]} instead (the builder passes it to smp)")
        if key in REFUSED and value is not None:
            raise ConfigError(f"model.{key}={value!r}: not supported, it is {REFUSED[key]}")
    parameters = inspect.signature(arch_class.__init__).parameters
    named = [n for n, p in parameters.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    unknown = sorted(set(options) - set(named))
    if unknown and not encoder.startswith("tu-"):  # tu-: the rest goes to timm.create_model, which checks it
        takes = [n for n in named if n not in OWN_ARGUMENTS and n not in REFUSED]
        raise ConfigError(f"model.{unknown[0]}: smp's {arch} takes no argument '{unknown[0]}'; it takes {takes}")


def encoder_weights(smp: Any, encoder: str, name: str) -> tuple[str | bool, str, str, bool]:
    """``(encoder_weights for smp, what they are, url, cached)`` for the weight ``name`` of ``encoder``
    (``default``, a name such as ``imagenet`` / ``ssl``, or ``<encoder>.<name>``). Nothing is downloaded."""
    if encoder.startswith("tu-"):
        model_name = encoder[3:]
        if name != "default":
            raise ConfigError(f"model.pretrained={name!r}: a tu- encoder's weights are named in the encoder itself "
                              f"(model.encoder=tu-<timm model>.<tag>, model.pretrained=true), or give a local file")
        import timm

        if not timm.models.is_model_pretrained(model_name):
            raise ConfigError(f"model.pretrained: timm has no pretrained weights for {model_name}; "
                              f"set model.pretrained=null or give a local file")
        url, cached = timm_source(model_name)
        return True, f"the timm weights of {model_name}", url, cached
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    choice = name.removeprefix(f"{encoder}.")
    if choice == "default":
        choice = "imagenet" if "imagenet" in settings else next(iter(settings), "")
        if not choice:
            raise ConfigError(f"model.pretrained: smp has no pretrained weights for encoder {encoder}; "
                              f"set model.pretrained=null or give a local file")
    if choice not in settings:
        raise ConfigError(f"model.pretrained={name!r} is neither a file nor a weight of smp's encoder {encoder}; "
                          f"choose from {list(settings)} (or true for {next(iter(settings), 'none')}, or "
                          f"{encoder}.<name> to require it), or give a local file path")
    source = settings[choice]
    if "repo_id" in source:  # smp 0.5+: the Hugging Face hub (smp-hub/<encoder>.<weights>)
        url, cached = hub_source(source["repo_id"], source["revision"])
    else:  # older smp: a download URL into torch.hub's cache
        url, cached = source["url"], torchvision_cached(source["url"])
    return choice, f"the {choice} weights of smp's encoder {encoder}", url, cached


def smp_model(arch: str, encoder: str, num_classes: int, pretrained: str | bool | None = None,
              align_corners: bool = False, aux: bool = False, compile: bool = False, **options: Any) -> nn.Module:
    """smp's ``arch`` over ``encoder`` for ``num_classes`` classes: ``forward(images[N, 3, H, W])`` ->
    ``logits[N, num_classes, H, W]`` (full size, see the module docstring), for any ``H`` and ``W``.

    ``pretrained``: null (from scratch), a local file (state dict, ``.ckpt``, an encoder- or backbone-only file:
    see ``seg_template.models.weights``), ``true`` / ``default`` / ``imagenet`` (smp's default encoder weights,
    read from the Hugging Face hub's cache or downloaded once; offline, one warning and training from scratch:
    see ``seg_template.models.download``), or a weight name of the encoder (``ssl``, ``swsl``, ``advprop``...;
    ``<encoder>.<name>``, e.g. ``mit_b0.imagenet``, requires even the default one): failing to obtain a named
    weight is a ``CheckpointError``. ``align_corners`` is read by the loss / metrics / inference, not here.
    ``aux=true`` is refused (smp has no segmentation aux head). ``options``: more of the architecture's own
    arguments (``+model.decoder_attention_type=scse``, ``+model.encoder_depth=4``), checked against it.
    """
    smp = import_smp()
    if aux:
        raise ConfigError("model.aux=true: smp models have no auxiliary segmentation head (smp's aux_params is an "
                          "image-level classification head the losses cannot train); set model.aux=false")
    arch_class = architecture(smp, arch, encoder)
    check_arguments(arch_class, arch, encoder, options)

    # under torch.device("meta") (shape checks without memory) smp's MiT encoders cannot be built (their
    # drop-path rates are read with .item()): build on the CPU, then move to meta
    device = torch.get_default_device()

    def build(weights: str | bool | None) -> nn.Module:
        try:
            with torch.device("cpu" if device.type == "meta" else device):
                model = padded_class(arch_class)(encoder_name=encoder, encoder_weights=weights,
                                                 classes=num_classes, **options)
        except (ValueError, KeyError, TypeError, AssertionError) as err:  # the library's refusals
            takes = f" (smp's {arch} takes {RESTRICTIONS[arch.lower()]})" if arch.lower() in RESTRICTIONS else ""
            raise ConfigError(f"smp cannot build model.arch={arch} with model.encoder={encoder}"
                              f"{''.join(f' model.{k}={v!r}' for k, v in options.items())}: "
                              f"{type(err).__name__}: {err}{takes}") from err
        return model.to(device) if device.type == "meta" else model

    name = weight_name(pretrained)
    model: nn.Module | None = None
    if name is not None:
        weights, what, url, cached = encoder_weights(smp, encoder, name)
        model = fetch_weights(lambda: build(weights), what, url, cached, best_effort=name == "default")
    if model is None:
        model = build(None)
    return finalize_model(model, pretrained, compile)
