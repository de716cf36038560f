"""eval.py and predict.py on a checkpoint: the recipe inside it, overrides over it, metrics with each inference
mode, the three outputs per image, sub-folders, batching, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from seg_template.data.palette import dataset_palette, default_palette
from seg_template.errors import CheckpointError, ConfigError, DataError
from seg_template.eval import evaluate
from tests.helpers import TINY, TRAINED, predict, run_script, save_checkpoint

#: the checkpoint's model differs from eval.yaml's default (width 16), so loading proves the recipe was used
QUIET = ["callbacks.rich_progress_bar=null"]


@pytest.fixture
def checkpoint(compose_cfg, tmp_path):
    return save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "train"), tmp_path / "model.ckpt")


def run_eval(compose_cfg, out, *overrides):
    """``python eval.py <overrides>`` without a subprocess: the typed options go to evaluate() as well."""
    cfg = compose_cfg("eval", overrides, output_dir=out)
    return evaluate(cfg, overrides=[o for o in overrides if not o.startswith("trainer=")])


def test_eval_needs_only_the_checkpoint(checkpoint, compose_cfg, tmp_path) -> None:
    metrics, objects = run_eval(compose_cfg, tmp_path / "eval", f"ckpt_path={checkpoint}", *QUIET)
    assert 0.0 <= float(metrics["val/mIoU"]) <= 1.0 and torch.isfinite(metrics["val/loss"])
    # the recipe's data (4 val images of 32x32) and model (width 8), not eval.yaml's defaults
    dataset = objects["datamodule"].val_dataloader().dataset
    assert len(dataset) == 4 and tuple(dataset[0]["image"].shape) == (3, 32, 32)
    assert objects["cfg"].model.width == 8
    assert (tmp_path / "eval" / "metrics.csv").is_file()


@pytest.mark.parametrize("inference", [["inference.mode=slide", "inference.crop_size=[24,24]",
                                        "inference.stride=[16,16]"],
                                       ["inference.scales=[0.75,1.0]", "inference.flip=true"]],
                         ids=["slide", "multiscale_flip"])
def test_eval_inference_modes(checkpoint, compose_cfg, tmp_path, inference) -> None:
    metrics, _ = run_eval(compose_cfg, tmp_path / "eval", f"ckpt_path={checkpoint}", *QUIET, *inference)
    assert 0.0 <= float(metrics["val/mIoU"]) <= 1.0


def test_overrides_win_over_the_recipe(checkpoint, compose_cfg, tmp_path) -> None:
    metrics, objects = run_eval(compose_cfg, tmp_path / "eval", f"ckpt_path={checkpoint}", "split=test",
                                "data.test_set.length=2", "data.batch_size=1", *QUIET)
    assert "test/mIoU" in metrics
    assert len(objects["datamodule"].test_dataloader()) == 2  # 2 images, batches of 1
    with pytest.raises(CheckpointError, match=r"model\.ckpt"):  # model.width=16 is not what was trained
        run_eval(compose_cfg, tmp_path / "e2", f"ckpt_path={checkpoint}", "model.width=16", *QUIET)


def test_eval_without_checkpoint_says_how(compose_cfg, tmp_path) -> None:
    with pytest.raises(ValueError, match="ckpt_path is required: python eval.py ckpt_path="):
        run_eval(compose_cfg, tmp_path, *QUIET)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        run_eval(compose_cfg, tmp_path, "ckpt_path=nowhere.ckpt", *QUIET)


def test_checkpoint_without_recipe_names_the_options(compose_cfg, tmp_path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model=small\n- model.width=8\n- trainer.max_epochs=3\n")
    old = save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t"), run / "checkpoints" / "old.ckpt",
                          recipe=False)
    with pytest.raises(CheckpointError, match="carries no training recipe") as err:
        run_eval(compose_cfg, tmp_path / "eval", f"ckpt_path={old}", *QUIET)
    assert "data=" in str(err.value) and "model=small model.width=8" in str(err.value)
    # given the options, it is evaluated
    metrics, _ = run_eval(compose_cfg, tmp_path / "eval", f"ckpt_path={old}", "model=small", "model.width=8",
                          *TINY)
    assert "val/mIoU" in metrics


def _write_images(folder, files):
    """``files``: ``{relative path: (h, w)}`` of random RGB images."""
    rng = np.random.default_rng(0)
    for name, (h, w) in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)


def test_predict_writes_masks_colours_and_overlays(checkpoint, compose_cfg, tmp_path) -> None:
    sizes = {"a/0001.png": (40, 56), "b/0001.png": (40, 56), "b/deeper/0002.jpg": (33, 47), "0003.png": (40, 56)}
    _write_images(tmp_path / "in", sizes)
    out = tmp_path / "out"
    written = predict(compose_cfg, out, f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}", "inference.flip=true",
                      "batch_size=2")
    # the input's sub-folders are mirrored: the two 0001.png do not overwrite each other
    assert sorted(p.relative_to(out / "masks").as_posix() for p in written) == [
        "0003.png", "a/0001.png", "b/0001.png", "b/deeper/0002.png"]
    cfg = compose_cfg(overrides=TRAINED)
    palette = dataset_palette(cfg.data)
    for name, size in sizes.items():
        name = name.replace(".jpg", ".png")
        labels = np.asarray(Image.open(out / "masks" / name))
        assert labels.shape == size and labels.max() < cfg.data.num_classes
        colour = np.asarray(Image.open(out / "color" / name))
        assert np.array_equal(colour, palette[labels])
        overlay = np.asarray(Image.open(out / "overlay" / name))
        # the blended image, and the legend beside it: its swatches carry the colours of the classes present
        assert overlay.shape[0] >= size[0] and overlay.shape[1] > size[1]
        legend = overlay[:, size[1]:].reshape(-1, 3)
        for class_id in np.unique(labels):
            assert (legend == palette[class_id]).all(1).any(), f"no legend swatch for class {class_id} in {name}"


def test_predict_bounded_sliding_window(checkpoint, compose_cfg, tmp_path) -> None:
    """inference.bounded=true (huge images in bounded memory) writes the same masks as plain stitching."""
    _write_images(tmp_path / "in", {"big.png": (70, 90)})
    slide = ["inference.mode=slide", "inference.crop_size=[32,32]", "inference.stride=[20,20]"]
    plain = predict(compose_cfg, tmp_path / "a", f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}", *slide)
    bounded = predict(compose_cfg, tmp_path / "b", f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}", *slide,
                      "inference.bounded=true")
    assert np.array_equal(np.asarray(Image.open(plain[0])), np.asarray(Image.open(bounded[0])))


def test_predict_skips_unreadable_files_and_names_them(checkpoint, compose_cfg, tmp_path) -> None:
    _write_images(tmp_path / "in", {"good.png": (32, 32)})
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"(?s)1 of 2 input images .*broken\.png"):
        predict(compose_cfg, tmp_path / "out", f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}")
    assert (tmp_path / "out" / "masks" / "good.png").is_file()  # the others are still written


def test_predict_bad_options(checkpoint, compose_cfg, tmp_path) -> None:
    _write_images(tmp_path / "in", {"x.png": (32, 32)})
    with pytest.raises(FileNotFoundError, match="missing"):
        predict(compose_cfg, tmp_path / "o", f"ckpt_path={checkpoint}", f"input={tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="ckpt_path is required"):
        predict(compose_cfg, tmp_path / "o", f"input={tmp_path / 'in'}")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"output_dir=.*a_file/out cannot be written"):
        predict(compose_cfg, tmp_path / "o", f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}",
                f"output_dir={blocker / 'out'}")
    with pytest.raises(ConfigError, match="SyntheticShapes has no official submission ids"):
        predict(compose_cfg, tmp_path / "o", f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}",
                "submission_ids=true")


def test_default_palette_is_distinct() -> None:
    palette = default_palette(21)
    assert len({tuple(c) for c in palette}) == 21 and tuple(palette[1]) == (128, 0, 0)  # VOC's aeroplane


@pytest.mark.slow
def test_train_then_eval_and_predict_scripts(tmp_path) -> None:
    """The user's path: train, then eval and predict with nothing but the checkpoint (and, for eval, one key
    that exists only in the trained data config's recipe, to show overrides reach it)."""
    trained = run_script("train.py", "trainer.max_epochs=1", *TRAINED, f"paths.log_dir={tmp_path}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    best = run / "checkpoints" / "best.ckpt"
    evaluated = run_script("eval.py", f"ckpt_path={best}", "inference.flip=true", "data.val_set.length=2", *QUIET,
                           f"paths.log_dir={tmp_path}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    log = evaluated.stdout + evaluated.stderr
    assert "val mIoU" in log and "background" in log  # the per-class table
    # the recipe's choices, then only what was typed over it (not the choices recipe_argv adds)
    assert re.search(r"Recipe of .*best\.ckpt: .*model=small data=synthetic; from the command line: "
                     r"data\.val_set\.length=2\n", log)
    _write_images(tmp_path / "images", {"img0.png": (32, 32)})
    predicted = run_script("predict.py", f"ckpt_path={best}", f"input={tmp_path / 'images'}",
                           f"output_dir={tmp_path / 'pred'}", f"paths.log_dir={tmp_path}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    for folder in ("masks", "color", "overlay"):
        assert (tmp_path / "pred" / folder / "img0.png").is_file()
    missing = run_script("eval.py", f"paths.log_dir={tmp_path}", timeout=120)
    assert missing.returncode == 1 and "ckpt_path is required" in missing.stdout + missing.stderr


def test_eval_in_bounded_memory_scores_like_the_stitched_slide(checkpoint, compose_cfg, tmp_path) -> None:
    slide = [f"ckpt_path={checkpoint}", *QUIET, "inference=slide", "inference.crop_size=[24,24]",
             "inference.stride=[16,16]"]
    stitched, _ = run_eval(compose_cfg, tmp_path / "a", *slide)
    bounded, _ = run_eval(compose_cfg, tmp_path / "b", *slide, "inference.bounded=true")
    for key in ("val/mIoU", "val/aAcc", "val/IoU/circle"):  # the same class ids, so the same matrix
        assert float(bounded[key]) == float(stitched[key]), key
    assert "val/loss" not in bounded  # class ids only: no loss to report
