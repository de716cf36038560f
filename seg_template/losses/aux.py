"""The wrapper every loss config builds: the main loss plus a weighted term for an auxiliary head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.losses.cross_entropy import CrossEntropy
from seg_template.models.outputs import split_outputs
from seg_template.options import require


class SegmentationLoss(nn.Module):
    """Main loss plus an auxiliary-head term: ``main(out) + aux_weight * CE(aux)``.

    ``outputs`` is what the model returns: logits ``[N, C, h, w]`` or ``{"out": ..., "aux": ...}`` (``aux``
    may be missing or None; any form of the model-output contract, seg_template/models/outputs.py). The aux
    term is a ``CrossEntropy`` averaged over the valid pixels only, with the ignore label ``ignore_index`` and
    the upsampling convention ``align_corners`` - each given here (``loss.ignore_index``, ``loss.align_corners``)
    or else read from ``main``'s attribute of that name (the CE family keeps both) - and ``main``'s class
    ``weight`` when it has one. Typical ``aux_weight``: HRNet-OCR 0.4, torchvision 0.5. ``memory_efficient``
    selects the memory-efficient kernels for the aux term (the main loss has its own flag; the loss configs
    set both from one key).
    """

    def __init__(self, main: nn.Module, aux_weight: float = 0.4, memory_efficient: bool = False,
                 ignore_index: int | None = None, align_corners: bool | None = None) -> None:
        super().__init__()
        require("loss.aux_weight", aux_weight)
        self.main = main
        self.aux_weight = float(aux_weight)
        self.aux = CrossEntropy(ignore_index=_agreed(main, "ignore_index", ignore_index, None),
                                weight=getattr(main, "weight", None),
                                align_corners=_agreed(main, "align_corners", align_corners, False),
                                memory_efficient=memory_efficient)

    def parts(self, outputs: Any, target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "loss_main"}`` plus ``"loss_aux"`` (unweighted) when the outputs carry aux logits."""
        out, aux = split_outputs(outputs)
        loss_main = self.main(out, target)
        if aux is None:
            return {"loss": loss_main, "loss_main": loss_main}
        loss_aux = self.aux(aux, target)
        return {"loss": loss_main + self.aux_weight * loss_aux, "loss_main": loss_main, "loss_aux": loss_aux}

    def forward(self, outputs: Any, target: Tensor) -> Tensor:
        return self.parts(outputs, target)["loss"]


def _agreed(main: nn.Module, name: str, given: Any, default: Any) -> Any:
    """``loss.<name>`` for the aux term: ``given``, else ``main``'s attribute, else ``default`` (None: required).
    A ``ConfigError`` when neither says it, or when both do and disagree (the two heads would then differ)."""
    own = getattr(main, name, None)
    if given is not None and own is not None and given != own:
        raise ConfigError(f"loss.{name}={given} but loss.main.{name}={own}: the main and the auxiliary term must "
                          f"agree; set one of them (the loss configs write {name} once)")
    value = given if given is not None else own if own is not None else default
    if value is None:
        raise ConfigError(f"loss.{name}: the auxiliary term needs it and loss.main ({type(main).__name__}) does not "
                          f"keep it as an attribute: write `{name}: ${{data.{name}}}` in the loss config, beside "
                          f"aux_weight (docs/extending.md: A loss)")
    return value
