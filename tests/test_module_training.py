"""One short real training through the entry point: val mIoU must rise well above chance."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from seg_template.train import train


@pytest.mark.slow
def test_short_training_beats_chance_by_far(tmp_path) -> None:
    # chance level: all-background scores ~0.8 / 6 classes ~ 0.13 mIoU
    cfg = compose_cfg(overrides=[
        "data.train_set.length=800", "data.val_set.length=100", "data.test_set.length=50",
        "data.train_set.image_size=[48,48]", "trainer.max_epochs=5",
    ], output_dir=tmp_path)
    metrics, objects = train(cfg)
    miou = float(metrics["val/mIoU"])
    assert miou > 0.35, f"val/mIoU {miou:.3f} after a short training"
    assert float(metrics["test/mIoU"]) > 0.3
    assert objects["module"].best_val["mIoU"] >= miou - 1e-6
