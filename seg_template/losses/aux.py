"""The wrapper every loss config builds: the main loss plus a weighted term for an auxiliary head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from seg_template.losses.cross_entropy import CrossEntropy
from seg_template.models.outputs import split_outputs
from seg_template.options import require


class SegmentationLoss(nn.Module):
    """Main loss plus an auxiliary-head term: ``main(out) + aux_weight * CE(aux)``.

    ``outputs`` is what the model returns: logits ``[N, C, h, w]`` or ``{"out": ..., "aux": ...}``
    (``aux`` may be missing or None; any form of the model-output contract, seg_template/models/outputs.py). The aux term is a ``CrossEntropy`` with the main loss's ignore index,
    class weights and ``align_corners``, averaged over the valid pixels only. Typical ``aux_weight``:
    HRNet-OCR 0.4, torchvision 0.5. ``memory_efficient`` selects the memory-efficient kernels for the aux
    term (the main loss has its own flag; the loss configs set both from one key).
    """

    def __init__(self, main: nn.Module, aux_weight: float = 0.4, memory_efficient: bool = False) -> None:
        super().__init__()
        if not hasattr(main, "ignore_index"):
            raise TypeError(f"main loss {type(main).__name__} needs an ignore_index attribute")
        require("loss.aux_weight", aux_weight)
        self.main = main
        self.aux_weight = float(aux_weight)
        self.aux = CrossEntropy(ignore_index=main.ignore_index, weight=getattr(main, "weight", None),
                                align_corners=getattr(main, "align_corners", False),
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
