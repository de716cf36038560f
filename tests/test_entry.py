"""eval.py and predict.py on a checkpoint: metrics with each inference mode, written masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from seg_template.data.palette import dataset_palette, default_palette
from seg_template.errors import CheckpointError
from seg_template.eval import evaluate
from seg_template.predict import run_predict
from seg_template.train import build_module
from tests.helpers import TINY, run_script


@pytest.fixture
def checkpoint(compose_cfg, tmp_path):
    """A checkpoint of the default (untrained) module, saved the way Lightning stores its weights."""
    cfg = compose_cfg(overrides=TINY, output_dir=tmp_path / "train")
    torch.manual_seed(0)
    module = build_module(cfg, instantiate(cfg.data))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    return path


@pytest.mark.parametrize("inference", [[], ["inference.mode=slide", "inference.crop_size=[24,24]",
                                            "inference.stride=[16,16]"],
                                       ["inference.scales=[0.75,1.0]", "inference.flip=true"]],
                         ids=["whole", "slide", "multiscale_flip"])
def test_eval_scores_a_checkpoint(checkpoint, compose_cfg, tmp_path, inference) -> None:
    cfg = compose_cfg("eval", [f"ckpt_path={checkpoint}", *TINY, *inference], output_dir=tmp_path / "eval")
    metrics, _ = evaluate(cfg)
    assert 0.0 <= float(metrics["val/mIoU"]) <= 1.0 and torch.isfinite(metrics["val/loss"])
    assert (tmp_path / "eval" / "metrics.csv").is_file()


def test_eval_test_split(checkpoint, compose_cfg, tmp_path) -> None:
    metrics, _ = evaluate(compose_cfg("eval", [f"ckpt_path={checkpoint}", "split=test", *TINY],
                                      output_dir=tmp_path / "eval"))
    assert "test/mIoU" in metrics


def test_eval_without_checkpoint_says_how(compose_cfg, tmp_path) -> None:
    with pytest.raises(ValueError, match="ckpt_path is required: python eval.py ckpt_path="):
        evaluate(compose_cfg("eval", TINY, output_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        evaluate(compose_cfg("eval", ["ckpt_path=nowhere.ckpt", *TINY], output_dir=tmp_path))


def test_eval_with_the_wrong_model_names_the_checkpoint(checkpoint, compose_cfg, tmp_path) -> None:
    cfg = compose_cfg("eval", [f"ckpt_path={checkpoint}", "model.width=8", *TINY], output_dir=tmp_path / "e")
    with pytest.raises(CheckpointError, match=r"model\.ckpt"):
        evaluate(cfg)


def _write_images(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_predict_writes_index_and_colour_masks(checkpoint, compose_cfg, tmp_path) -> None:
    _write_images(tmp_path / "in", [(40, 56), (33, 47)])
    cfg = compose_cfg("predict", [f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}", "device=cpu",
                                  "inference.flip=true"], output_dir=tmp_path / "out")
    written = run_predict(cfg)
    assert [p.name for p in written] == ["img0.png", "img1.png"]
    palette = dataset_palette(cfg.data)
    for path, size in zip(written, [(40, 56), (33, 47)], strict=True):
        labels = np.asarray(Image.open(path))
        assert labels.shape == size and labels.max() < cfg.data.num_classes
        colour = np.asarray(Image.open(tmp_path / "out" / "color" / path.name))
        assert colour.shape == (*size, 3) and np.array_equal(colour, palette[labels])


def test_predict_bad_input(checkpoint, compose_cfg, tmp_path) -> None:
    cfg = compose_cfg("predict", [f"ckpt_path={checkpoint}", f"input={tmp_path / 'missing'}"], output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        run_predict(cfg)
    with pytest.raises(ValueError, match="input is required"):
        run_predict(compose_cfg("predict", [f"ckpt_path={checkpoint}"], output_dir=tmp_path))


def test_default_palette_is_distinct() -> None:
    palette = default_palette(21)
    assert len({tuple(c) for c in palette}) == 21 and tuple(palette[1]) == (128, 0, 0)  # VOC's aeroplane


@pytest.mark.slow
def test_train_then_eval_and_predict_scripts(tmp_path) -> None:
    trained = run_script("train.py", "trainer.max_epochs=1", *TINY, f"paths.log_dir={tmp_path}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    best = run / "checkpoints" / "best.ckpt"
    evaluated = run_script("eval.py", f"ckpt_path={best}", *TINY, "inference.flip=true", f"paths.log_dir={tmp_path}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "val mIoU" in evaluated.stdout and "background" in evaluated.stdout  # the per-class table
    _write_images(tmp_path / "images", [(32, 32)])
    predicted = run_script("predict.py", f"ckpt_path={best}", f"input={tmp_path / 'images'}",
                           f"output_dir={tmp_path / 'pred'}", f"paths.log_dir={tmp_path}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (tmp_path / "pred" / "masks" / "img0.png").is_file()
    assert (tmp_path / "pred" / "color" / "img0.png").is_file()
    missing = run_script("eval.py", f"paths.log_dir={tmp_path}", timeout=120)
    assert missing.returncode == 1 and "ckpt_path is required" in missing.stdout + missing.stderr
