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
    ``weight`` when it has one; when neither gives a setting, aux logits raise a ``ConfigError`` naming it
    (a model without an aux head needs neither). Typical ``aux_weight``: HRNet-OCR 0.4, torchvision 0.5.
    ``memory_efficient`` selects the memory-efficient kernels for the aux term (the main loss has its own flag;
    the loss configs set both from one key). ``main`` must return a scalar (a ``TypeError`` names its class).
    """

    def __init__(self, main: nn.Module, aux_weight: float = 0.4, memory_efficient: bool = False,
                 ignore_index: int | None = None, align_corners: bool | None = None) -> None:
        super().__init__()
        require("loss.aux_weight", aux_weight)
        self.main = main
        self.aux_weight = float(aux_weight)
        settings = {name: _agreed(main, name, value) for name, value in
                    (("ignore_index", ignore_index), ("align_corners", align_corners))}
        missing = [name for name, value in settings.items() if value is None]
        #: why there is no aux term (a main term that keeps neither setting): said when aux logits arrive
        self.aux_problem = None if not missing else (
            f"loss.{' and loss.'.join(missing)}: the model has an auxiliary head, whose loss term needs "
            f"{' and '.join(missing)}, and loss.main ({type(main).__name__}) does not keep "
            f"{'it' if len(missing) == 1 else 'them'} as an attribute: write "
            f"{', '.join(f'`{n}: ${{{_SOURCE[n]}}}`' for n in missing)} in the loss config, beside aux_weight "
            f"(docs/extending.md: A loss)")
        self.aux = None if missing else CrossEntropy(
            ignore_index=settings["ignore_index"], weight=getattr(main, "weight", None),
            align_corners=settings["align_corners"], memory_efficient=memory_efficient)

    def parts(self, outputs: Any, target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "loss_main"}`` plus ``"loss_aux"`` (unweighted) when the outputs carry aux logits; each a
        scalar."""
        out, aux = split_outputs(outputs)
        loss_main = _scalar(self.main(out, target), self.main)
        if aux is None:
            return {"loss": loss_main, "loss_main": loss_main}
        if self.aux is None:
            raise ConfigError(self.aux_problem)
        loss_aux = self.aux(aux, target)
        return {"loss": loss_main + self.aux_weight * loss_aux, "loss_main": loss_main, "loss_aux": loss_aux}

    def forward(self, outputs: Any, target: Tensor) -> Tensor:
        return self.parts(outputs, target)["loss"]


#: where a loss config reads each setting the aux term needs
_SOURCE = {"ignore_index": "data.ignore_index", "align_corners": "model.align_corners"}


def _agreed(main: nn.Module, name: str, given: Any) -> Any:
    """``loss.<name>`` for the aux term: ``given``, else ``main``'s attribute, else None. A ``ConfigError`` when
    both say it and disagree (the main and the auxiliary term would then differ)."""
    own = getattr(main, name, None)
    if given is not None and own is not None and given != own:
        raise ConfigError(f"loss.{name}={given} but loss.main.{name}={own}: the main and the auxiliary term must "
                          f"agree; set one of them (the loss configs write {name} once)")
    return given if given is not None else own


def _scalar(loss: Any, main: nn.Module) -> Tensor:
    """``loss`` when it is a 0-d tensor; a ``TypeError`` naming ``main``'s class otherwise (a term that forgot
    to reduce failed much later, inside Lightning's logging, without naming the loss)."""
    if isinstance(loss, Tensor) and loss.ndim == 0:
        return loss
    what = f"a tensor of shape {list(loss.shape)}" if isinstance(loss, Tensor) else f"a {type(loss).__name__}"
    raise TypeError(f"loss.main ({type(main).__module__}.{type(main).__name__}) returned {what}: a loss term "
                    f"returns one scalar (e.g. the mean over the valid pixels; docs/extending.md: A loss)")
