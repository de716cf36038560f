"""What every model builder does last: load local weights, then optionally compile."""

from __future__ import annotations

from torch import nn

from seg_template.models.weights import load_pretrained, looks_like_path

#: accepted in ``model.pretrained`` to mean "the library's default ImageNet backbone weights"
DEFAULT_WEIGHT_ALIASES = ("default", "imagenet", "true")


def weight_name(pretrained: str | bool | None) -> str | None:
    """The weight *name* in ``pretrained`` (e.g. ``IMAGENET1K_V1``, ``ms_in1k``), or None for a path / nothing.

    ``true`` / ``default`` / ``imagenet`` come back as ``"default"``.
    """
    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        return "default"
    if not isinstance(pretrained, str):
        raise TypeError(f"model.pretrained must be a path, a weight name or null, got {pretrained!r}")
    if looks_like_path(pretrained):
        return None
    return "default" if pretrained.lower() in DEFAULT_WEIGHT_ALIASES else pretrained


def finalize_model(model: nn.Module, pretrained: str | bool | None = None, compile: bool = False) -> nn.Module:
    """Load ``pretrained`` if it is a local path (names are resolved by the builder), then compile.

    ``nn.Module.compile`` compiles in place, so parameter names stay free of ``_orig_mod.`` (checkpoints load
    with or without compile) and ``SyncBatchNorm.convert_sync_batchnorm`` can still swap layers before the
    first (lazily compiled) call.
    """
    if isinstance(pretrained, str) and pretrained and weight_name(pretrained) is None:
        load_pretrained(model, pretrained)
    if compile:
        model.compile()
    return model
