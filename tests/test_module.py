"""SegmentationModule: logged keys, all-ignored batches, class-count checks, per-step poly schedule, tables."""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from seg_template.data.base import SegmentationDataset
from seg_template.data.datamodule import SegDataModule
from seg_template.data.synthetic import CLASS_NAMES, SyntheticShapes
from seg_template.data.transforms import eval_transform, train_transform
from seg_template.losses import CrossEntropy, SegmentationLoss
from seg_template.models.small import small_segnet
from seg_template.module import SegmentationModule
from seg_template.optim import poly_warmup


class AllIgnored(SegmentationDataset):
    """Random images whose masks are entirely the ignore index."""

    class_names = CLASS_NAMES

    def __init__(self, length: int = 4, transform=None, ignore_index: int = 255) -> None:
        super().__init__(transform=transform, ignore_index=ignore_index)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng(index)
        return rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.full((32, 32), 255, np.uint8), str(index)


class WithAux(nn.Module):
    """The small net plus an auxiliary head on the same features: ``{"out", "aux"}``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = small_segnet(num_classes, width=4)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.net(x)
        return {"out": out, "aux": out * 0.5}


def _module(net: nn.Module | None = None, num_classes: int = 6, scheduler=None) -> SegmentationModule:
    return SegmentationModule(
        net=net if net is not None else small_segnet(num_classes, width=4),
        loss=SegmentationLoss(CrossEntropy(ignore_index=255)),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
        scheduler=scheduler, num_classes=num_classes, ignore_index=255, class_names=list(CLASS_NAMES)[:num_classes],
    )


def _dm(train_factory=None, length: int = 8, val_length: int = 8) -> SegDataModule:
    synth = functools.partial(SyntheticShapes, length=length, image_size=32)
    return SegDataModule(train_set=train_factory or functools.partial(synth, split="train"),
                         val_set=functools.partial(synth, split="val", length=val_length),
                         test_set=functools.partial(synth, split="test"),
                         train_transform=train_transform([32, 32], scale_range=(1, 1)), val_transform=eval_transform(),
                         num_classes=6, class_names=list(CLASS_NAMES), batch_size=4)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    args = dict(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0)
    args.update(kwargs)
    return pl.Trainer(**args)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_on_all_ignored_batch_is_finite() -> None:
    module = _module()
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.full((2, 32, 32), 255, dtype=torch.long)}
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_fit_on_all_ignored_data_keeps_weights_finite(tmp_path) -> None:
    module = _module()
    dm = _dm(train_factory=AllIgnored)
    _trainer(tmp_path, max_steps=2, limit_val_batches=1).fit(module, datamodule=dm)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_fit_and_test_log_the_contract_keys_and_print_tables(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="seg_template.module")
    module = _module(net=WithAux(6), scheduler=functools.partial(poly_warmup, warmup_steps=1))
    dm = _dm()
    trainer = _trainer(tmp_path, max_epochs=2, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    for key in ["train/loss", "train/loss/ce", "train/loss/aux", "val/loss", "val/mIoU", "val/aAcc",
                *(f"val/IoU/{c}" for c in CLASS_NAMES)]:
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"
    assert 0.0 <= metrics["val/mIoU"] <= 1.0 and 0.0 <= metrics["val/aAcc"] <= 1.0
    # poly decay stepped per iteration over trainer.estimated_stepping_batches (2 epochs x 2 steps): ends at 0
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert module.best_val is not None and module.last_val["epoch"] == 1
    printed = caplog.text  # the tables go to the log, so the run's train.log keeps them
    assert "validation mIoU: last" in printed and "circle" in printed
    caplog.clear()
    trainer.test(module, datamodule=dm)
    assert {"test/mIoU", "test/aAcc", "test/IoU/cross", "test/loss"} <= set(trainer.callback_metrics)
    assert "test mIoU" in caplog.text


def test_mean_iou_excludes_classes_absent_from_gt_and_prediction(tmp_path) -> None:
    class Constant(nn.Module):
        """Predicts class 0 everywhere (a learnable bias keeps the optimiser happy)."""

        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([5.0, 0, 0, 0, 0, 0]))

        def forward(self, x: Tensor) -> Tensor:
            return self.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[2] // 4, x.shape[3] // 4)

    module = _module(net=Constant())
    trainer = _trainer(tmp_path)
    trainer.validate(module, datamodule=_dm(val_length=1))
    metrics = trainer.callback_metrics
    ious = {c: float(metrics[f"val/IoU/{c}"]) for c in CLASS_NAMES}
    in_gt = set(np.unique(SyntheticShapes("val", 1, image_size=32).load(0)[1]).tolist())
    absent = [c for i, c in enumerate(CLASS_NAMES) if i not in in_gt]
    assert absent, "the single val image should miss some classes"
    assert all(math.isnan(ious[c]) for c in absent)
    assert all(ious[CLASS_NAMES[i]] == 0.0 for i in in_gt if 0 < i < len(CLASS_NAMES))
    present = [v for v in ious.values() if not math.isnan(v)]
    assert float(metrics["val/mIoU"]) == pytest.approx(sum(present) / len(present), rel=1e-5)
    assert ious["background"] > 0.5


def test_data_with_other_class_count_names_both_numbers(tmp_path) -> None:
    module = _module(num_classes=5)
    with pytest.raises(ValueError, match=r"5 classes.*data has 6"):
        _trainer(tmp_path, max_steps=1).fit(module, datamodule=_dm())


def test_model_output_channels_must_match_num_classes() -> None:
    module = _module(net=small_segnet(4, width=4))
    batch = {"image": torch.randn(1, 3, 32, 32), "mask": torch.zeros(1, 32, 32, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"4 classes, but data.num_classes is 6"):
        module.training_step(batch, 0)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        _module(num_classes=0)
    with pytest.raises(ValueError, match="class names"):
        SegmentationModule(net=small_segnet(3), loss=SegmentationLoss(CrossEntropy()),
                           optimizer=functools.partial(torch.optim.SGD, lr=0.1), num_classes=3, class_names=["a"])


def test_small_model_loads_local_weights_and_skips_other_heads(tmp_path) -> None:
    source = small_segnet(5, width=4)
    path = tmp_path / "small.pth"
    torch.save(source.state_dict(), path)
    same = small_segnet(5, width=4, pretrained=str(path))
    assert torch.equal(same.stem[0][0].weight, source.stem[0][0].weight)
    other = small_segnet(6, width=4, pretrained=str(path))  # classifier shape differs: skipped, rest loaded
    assert torch.equal(other.fuse[0].weight, source.fuse[0].weight)
    assert other.classifier.weight.shape[0] == 6
    with pytest.raises(ValueError, match="no named weights"):
        small_segnet(6, pretrained="imagenet")


def test_a_nan_first_epoch_is_never_the_best(monkeypatch) -> None:
    """The fit summary's "best" epoch: an epoch whose val/mIoU is NaN (nothing labelled, a diverged net) is
    replaced by the first epoch with a number (``nan > x`` is False, so a plain comparison kept NaN forever)."""
    from types import SimpleNamespace

    module = _module()
    scores = iter([{"mIoU": float("nan")}, {"mIoU": 0.4}, {"mIoU": 0.3}])
    monkeypatch.setattr(module, "_log_scores", lambda stage: next(scores))
    fake = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"))
    monkeypatch.setattr(SegmentationModule, "trainer", property(lambda self: fake))
    monkeypatch.setattr(SegmentationModule, "current_epoch", property(lambda self: self._epoch))
    for module._epoch in range(3):
        module.on_validation_epoch_end()
    assert module.best_val["epoch"] == 1 and module.best_val["mIoU"] == 0.4
