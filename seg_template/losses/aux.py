"""The wrapper every loss config builds: the main term(s) plus a weighted term for an auxiliary head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from seg_template.errors import ConfigError
from seg_template.losses.terms import build_term, scalar_loss, term_name
from seg_template.models.outputs import split_outputs
from seg_template.options import require


class SegmentationLoss(nn.Module):
    """The loss a loss config builds: the main term(s) plus a weighted term for an auxiliary head,
    ``main(out) + aux_weight * aux(aux_logits)``.

    ``outputs`` is what the model returns: logits ``[N, C, h, w]`` or ``{"out": ..., "aux": ...}`` (``aux``
    may be missing or None; any form of the model-output contract, seg_template/models/outputs.py); ``target``
    ``[N, H, W]``. ``main`` is one term (``CrossEntropy``, ``DiceLoss``...) or a ``TermSum`` of several
    (``loss=ce_dice``). ``aux`` is the auxiliary head's term as ``terms.build_term`` reads it: a name (``ce``,
    the default, as HRNet-OCR and torchvision train it), ``{term: <name>, <option>: ...}`` or a module. A named
    aux term takes ``main``'s class ``weight``, ``memory_efficient``, OHEM's ``min_kept`` (given here, else
    ``main``'s), and the ignore label ``ignore_index``
    and upsampling convention ``align_corners`` - each given here (``loss.ignore_index``,
    ``loss.align_corners``) or else read from ``main``'s attribute of that name (the built-in terms keep both);
    when neither gives a setting, aux logits raise a ``ConfigError`` naming it (a model without an aux head
    needs neither). Typical ``aux_weight``: HRNet-OCR 0.4, torchvision 0.5. Every term must return a scalar (a
    ``TypeError`` names its class).
    """

    def __init__(self, main: nn.Module, aux_weight: float = 0.4, memory_efficient: bool = False,
                 ignore_index: int | None = None, align_corners: bool | None = None, aux: Any = "ce",
                 min_kept: int | None = None) -> None:
        super().__init__()
        require("loss.aux_weight", aux_weight)
        require("loss.memory_efficient", memory_efficient)
        self.main = main
        self.aux_weight = float(aux_weight)
        settings = {name: _agreed(main, name, value) for name, value in
                    (("ignore_index", ignore_index), ("align_corners", align_corners))}
        missing = [name for name, value in settings.items() if value is None and not isinstance(aux, nn.Module)]
        #: why there is no aux term (a main term that keeps neither setting): said when aux logits arrive
        self.aux_problem = None if not missing else (
            f"loss.{' and loss.'.join(missing)}: the model has an auxiliary head, whose loss term needs "
            f"{' and '.join(missing)}, and loss.main ({type(main).__name__}) does not keep "
            f"{'it' if len(missing) == 1 else 'them'} as an attribute: write "
            f"{', '.join(f'`{n}: ${{{_SOURCE[n]}}}`' for n in missing)} in the loss config, beside aux_weight "
            f"(docs/extending.md: A loss)")
        shared = {**settings, "weight": getattr(main, "weight", None), "memory_efficient": memory_efficient,
                  "min_kept": min_kept if min_kept is not None else getattr(main, "min_kept", None)}
        self.aux = None if missing else build_term(aux, shared, "loss.aux")

    def parts(self, outputs: Any, target: Tensor) -> dict[str, Tensor]:
        """``{"loss": total, "loss/<term>": ...}``: the total, each main term's unweighted value by its name
        (``loss/ce``; a ``TermSum`` gives one per term) and, when the outputs carry aux logits, the aux term's
        unweighted value as ``loss/aux``; each a scalar."""
        out, aux = split_outputs(outputs)
        if hasattr(self.main, "parts") and hasattr(self.main, "combine"):  # a TermSum
            values = self.main.parts(out, target)
            loss_main = self.main.combine(values)
        else:
            loss_main = scalar_loss(self.main(out, target), self.main)
            values = {term_name(self.main): loss_main}
        parts = {f"loss/{name}": value for name, value in values.items()}
        if aux is None:
            return {"loss": loss_main, **parts}
        if self.aux is None:
            raise ConfigError(self.aux_problem)
        loss_aux = scalar_loss(self.aux(aux, target), self.aux)
        return {"loss": loss_main + self.aux_weight * loss_aux, **parts, "loss/aux": loss_aux}

    def forward(self, outputs: Any, target: Tensor) -> Tensor:
        return self.parts(outputs, target)["loss"]

    def terms(self) -> list[tuple[str, nn.Module]]:
        """Every term with the config key it comes from: ``loss.main`` (or ``loss.main.terms[i]`` of a sum) and
        ``loss.aux`` when there is one."""
        found = ([(f"loss.main.terms[{i}]", term) for i, term in enumerate(self.main.terms)]
                 if isinstance(getattr(self.main, "terms", None), nn.ModuleList) else [("loss.main", self.main)])
        return found + ([("loss.aux", self.aux)] if self.aux is not None else [])


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
