"""The model-output contract (seg_template/models/outputs.py): every form a model may return is read by the one
adapter, so training, the losses, inference, the validation pictures' logits and the ONNX wrapper take a model
that returns an object with ``.logits`` exactly like one that returns a tensor or ``{"out", "aux"}``."""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from seg_template.data.datamodule import SegDataModule
from seg_template.data.synthetic import SyntheticShapes
from seg_template.data.transforms import eval_transform
from seg_template.inference.model import predict
from seg_template.losses import CrossEntropy, SegmentationLoss
from seg_template.models.outputs import canonical_outputs, logits_at, main_logits, split_outputs
from seg_template.models.small import small_segnet
from seg_template.module import SegmentationModule
from seg_template.onnx_model import ImageSizeLogits

OUT = torch.randn(2, 3, 4, 4)
AUX = torch.randn(2, 3, 2, 2)


@dataclass
class LibraryOutput:
    """What many model libraries return: an object with ``logits`` (and here an auxiliary head's)."""

    logits: Tensor
    aux_logits: Tensor | None = None
    hidden_states: tuple | None = None


class HFStyleOutput(OrderedDict):
    """Hugging Face's ``ModelOutput``: a mapping whose entries are also attributes."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as missing:
            raise AttributeError(name) from missing


@pytest.mark.parametrize(("outputs", "aux"), [
    (OUT, None),
    ({"out": OUT}, None),
    ({"out": OUT, "aux": None}, None),
    ({"out": OUT, "aux": AUX}, AUX),
    ({"out": OUT, "aux": AUX, "features": [1, 2]}, AUX),  # other entries are the model's business
    (LibraryOutput(OUT), None),
    (LibraryOutput(OUT, AUX), AUX),
    (HFStyleOutput(logits=OUT), None),
])
def test_every_form_gives_the_same_logits(outputs, aux) -> None:
    out, found = split_outputs(outputs)
    assert out is OUT and found is aux
    assert main_logits(outputs) is OUT
    canonical = canonical_outputs(outputs)
    assert canonical is OUT if aux is None else canonical == {"out": OUT, "aux": AUX}


@pytest.mark.parametrize(("outputs", "named"), [
    ((OUT, AUX), "a tuple"),
    ({"aux": AUX}, r"keys \['aux'\]"),
    ({"logits": None}, r"keys \['logits'\]"),
    (LibraryOutput(OUT[0]), r"main output must be logits \[N, C, h, w\], got \(3, 4, 4\)"),
    ({"out": OUT, "aux": "x"}, "auxiliary output must be logits .* got str"),
    ([OUT], "a list"),
])
def test_other_forms_are_refused_naming_what_came_back(outputs, named: str) -> None:
    with pytest.raises(TypeError, match=named) as err:
        split_outputs(outputs)
    assert "seg_template/models/outputs.py" in str(err.value)


def test_logits_at_resizes_once_and_leaves_the_right_size_alone() -> None:
    assert logits_at(OUT, (4, 4)) is OUT
    up = logits_at(OUT, torch.Size([8, 12]), align_corners=True)
    assert up.shape == (2, 3, 8, 12)
    assert torch.equal(up[..., 0, 0], OUT[..., 0, 0])  # align_corners: the corners are the logits'


class LibraryNet(nn.Module):
    """The small net behind a library's output convention: ``LibraryOutput(logits, aux_logits)``."""

    def __init__(self, num_classes: int = 6, form: str = "object") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net, self.form = small_segnet(num_classes, width=4), form

    def forward(self, images: Tensor):
        out = self.net(images)
        aux = out * 0.5 if self.training else None
        if self.form == "dict":
            return {"out": out, "aux": aux}
        return LibraryOutput(out, aux)


def _module(net: nn.Module) -> SegmentationModule:
    return SegmentationModule(net=net, loss=SegmentationLoss(CrossEntropy(ignore_index=255)),
                              optimizer=functools.partial(torch.optim.SGD, lr=0.1), num_classes=6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_and_inference_take_a_library_model_as_they_take_a_dict_model() -> None:
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 6, (2, 32, 32))}
    batch["mask"][:, :4] = 255
    losses = {}
    for form in ("dict", "object"):
        module = _module(LibraryNet(form=form))
        logged = {}
        module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)  # noqa: B023
        losses[form] = module.training_step(batch, 0)
        assert set(logged) == {"train/loss", "train/loss/ce", "train/loss/aux"}  # the aux head was found
    assert torch.equal(losses["dict"], losses["object"])

    net = LibraryNet().eval()
    images = torch.randn(1, 3, 20, 28)
    expected = logits_at(net.net(images), (20, 28))
    assert torch.equal(predict(net, images), expected)
    assert predict(net, images, mode="slide", crop_size=[16, 16], stride=[8, 8]).shape == (1, 6, 20, 28)
    assert torch.equal(ImageSizeLogits(net)(images), expected)  # what export traces


def test_a_fit_with_a_library_model_logs_and_scores(tmp_path) -> None:
    synthetic = functools.partial(SyntheticShapes, length=4, image_size=32)
    datamodule = SegDataModule(train_set=functools.partial(synthetic, split="train"),
                               val_set=functools.partial(synthetic, split="val"), train_transform=eval_transform(),
                               val_transform=eval_transform(), num_classes=6, batch_size=2)
    module = _module(LibraryNet())
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    assert {"train/loss/aux", "val/mIoU", "val/loss"} <= set(trainer.callback_metrics)
