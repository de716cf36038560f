"""One short real training through the entry point: val mIoU must rise well above chance."""

from __future__ import annotations

import pytest
import torch

from seg_template.train import train


@pytest.mark.slow
def test_short_training_beats_chance_by_far(compose_cfg, tmp_path) -> None:
    # chance level: all-background scores ~0.7 / 6 classes ~ 0.12 mIoU; this is 40% of the default recipe
    # (15 epochs of 2000; its figures are in the README's Quick start)
    cfg = compose_cfg(overrides=[
        "data.train_set.length=2000", "data.val_set.length=100", "data.test_set.length=50", "trainer.max_epochs=6",
    ], output_dir=tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread avoids OpenMP contention with other test processes
    try:
        metrics, objects = train(cfg)
    finally:
        torch.set_num_threads(threads)
    miou = float(metrics["val/mIoU"])
    assert miou > 0.3, f"val/mIoU {miou:.3f} after a short training"
    assert float(metrics["test/mIoU"]) > 0.25
    assert objects["module"].best_val["mIoU"] >= miou - 1e-6
