"""The files and options the bad-input catalogue (``tests/test_bad_inputs.py``, ``test_bad_inputs_runs.py``)
feeds to train / eval / predict: broken checkpoints, a crafted pickle, faulty folder datasets, predict inputs.

    workspace = Workspace(tmp_path / "files", compose_cfg)
    "ckpt_path={empty}".format_map(workspace)   # writes <tmp>/files/empty (0 bytes) on first use
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from seg_template.build import build_module
from seg_template.cli import find_user_error
from seg_template.errors import CheckpointError, ConfigError, UserError
from seg_template.recipe import recipe_from
from tests.fixtures import folder_class_names, make_folder
from tests.helpers import TINY

#: the tiny synthetic data and a narrow model: every case builds what it needs in well under a second
SMALL = [*TINY, "model.width=4"]
TRAIN = [*SMALL, "test=false", "callbacks.rich_model_summary=null"]
PREDICT = [o for o in SMALL if not o.startswith("callbacks.")]  # predict.yaml has no callbacks
#: data=folder on a root the workspace writes (``data.root={folder__<fault>}``)
FOLDER = ["data=folder", "data.num_classes=3", f"data.class_names=[{','.join(folder_class_names(3))}]",
          "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false", "data.batch_size=2",
          "data.train_transform.crop_size=[32,32]", "model.width=4", "test=false",
          "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
#: a user error prints as this many lines at most (a pre-flight lists up to 10 problems)
MAX_LINES = 16
MARKER = "pickle_ran_a_command"  # what the crafted checkpoints would create, were they unpickled


class RunsACommand:
    """Pickles into "call os.system(...)": loading it with ``weights_only=False`` would create the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Workspace(dict):
    """The files the cases name, each written on first use: ``"{empty}".format_map(workspace)``."""

    def __init__(self, root: Path, compose: Callable) -> None:
        super().__init__()
        self.root, self.compose = root, compose

    def __missing__(self, name: str) -> str:
        path = self.root / name
        written = getattr(self, f"_make_{name.partition('__')[0]}")(path, name)
        self[name] = str(written or path)
        return self[name]

    def checkpoint(self, num_classes: int = 6, width: int = 4, recipe: bool = True) -> dict:
        """What training writes for an (untrained) module: its state dict and, unless ``recipe=False`` (an
        older or foreign checkpoint), the training recipe eval / predict rebuild the model from."""
        names = [f"c{k}" for k in range(num_classes)]
        cfg = self.compose("train", [*TRAIN, f"data.num_classes={num_classes}",
                                     f"data.class_names=[{','.join(names)}]",
                                     f"model.width={width}"], output_dir=self.root / "compose")
        torch.manual_seed(0)
        module = build_module(cfg)
        checkpoint = {"state_dict": module.state_dict()}
        if recipe:
            module.recipe = recipe_from(cfg)
            module.on_save_checkpoint(checkpoint)
        return checkpoint

    def module_state(self, **kwargs) -> dict:
        return self.checkpoint(**kwargs)["state_dict"]

    # checkpoints and weights files
    def _make_empty(self, path: Path, _: str) -> None:
        path.write_bytes(b"")

    def _make_text(self, path: Path, _: str) -> None:
        path.write_text("epoch: 3\nthis is not a checkpoint\n")

    def _make_garbage(self, path: Path, _: str) -> None:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    def _make_truncated(self, path: Path, _: str) -> None:
        torch.save({"state_dict": self.module_state()}, path)
        path.write_bytes(path.read_bytes()[:2000])

    def _make_crafted(self, path: Path, _: str) -> None:
        torch.save({"state_dict": self.module_state(), "epoch": RunsACommand(self.root / MARKER),
                    "global_step": 0, "loops": {}, "optimizer_states": []}, path)

    def _make_weights(self, path: Path, _: str) -> None:  # a plain state dict: not a training checkpoint
        torch.save(self.module_state(), path)

    def _make_good(self, path: Path, _: str) -> None:  # what eval / predict need
        torch.save(self.checkpoint(), path)

    def _make_good3(self, path: Path,
                    _: str) -> None:  # eval on the 3-class folder data (no recipe: data= wins)
        torch.save(self.checkpoint(num_classes=3, recipe=False), path)

    def _make_classes5(self, path: Path, _: str) -> None:  # a training checkpoint of another class count
        torch.save({"state_dict": self.module_state(num_classes=5), "epoch": 0, "global_step": 2, "loops": {},
                    "optimizer_states": [], "hyper_parameters": {"num_classes": 5}}, path)

    def _make_widetrain(self, path: Path, _: str) -> None:  # a training checkpoint of another model size
        torch.save({"state_dict": self.module_state(width=8), "epoch": 0, "global_step": 2, "loops": {},
                    "optimizer_states": []}, path)

    def _make_wide(self, path: Path, _: str) -> None:  # another model size, of an older version (no recipe)
        torch.save(self.checkpoint(width=8, recipe=False), path)

    def _make_linear(self, path: Path, _: str) -> None:  # weights of another architecture
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)

    def _make_missing(self, path: Path, _: str) -> None:
        pass

    # class-weight files
    def _make_badjson(self, path: Path, _: str) -> Path:
        path = path.with_suffix(".json")
        path.write_text("[1.0, 2.0,")
        return path

    # datasets and predict inputs
    def _make_folder(self, path: Path, name: str) -> None:
        make_folder(path, splits={"train": 4, "val": 2}, size=(32, 32))
        train_mask = path / "masks" / "train" / "train_001.png"
        fault = name.partition("__")[2]
        if fault == "out_of_range":
            _edit_mask(train_mask, lambda m: m.__setitem__((0, 0), 7))
        elif fault == "val_out_of_range":
            _edit_mask(path / "masks" / "val" / "val_001.png", lambda m: m.__setitem__((5, 5), 9))
        elif fault == "all_ignore":
            for mask in (path / "masks").rglob("*.png"):
                _edit_mask(mask, lambda m: m.fill(255))
        elif fault == "size_mismatch":
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(train_mask)
        elif fault == "truncated_image":
            image = path / "images" / "train" / "train_002.jpg"
            image.write_bytes(image.read_bytes()[:300])
        elif fault == "unpaired":
            train_mask.unlink()
        elif fault == "rgb_mask":
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(train_mask)
        elif fault == "no_images":
            for image in (path / "images" / "train").iterdir():
                image.unlink()

    def _make_images(self, path: Path, name: str) -> None:
        path.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(path / f"img{i}.png")
        fault = name.partition("__")[2]
        if fault == "truncated":
            (path / "img1.png").write_bytes((path / "img1.png").read_bytes()[:100])
        elif fault == "text":
            (path / "img1.png").write_text("not an image")
        elif fault == "empty_folder":
            for image in path.iterdir():
                image.unlink()
        elif fault == "same_names":
            (path / "sub").mkdir()
            (path / "img0.png").rename(path / "sub" / "img0.png")
            (path / "img2.png").rename(path / "sub" / "img2.png")
            (path / "copy").mkdir()
            (path / "img1.png").rename(path / "copy" / "img0.png")


def _edit_mask(path: Path, change: Callable[[np.ndarray], object]) -> None:
    mask = np.asarray(Image.open(path)).copy()
    change(mask)
    Image.fromarray(mask).save(path)


def raised_user_error(call: Callable[[], object]) -> UserError:
    """The :class:`UserError` that ``call()`` raises (also behind Hydra's or Lightning's wrappers), as the
    entry points find it; fails the test on another exception (it would print a traceback) or none."""
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - SystemExit / KeyboardInterrupt would be wrong as well
        found = find_user_error(err)
        if found is None:
            pytest.fail("a traceback, not a user error:\n" + "".join(traceback.format_exception(err))[-3000:])
        return found
    pytest.fail("no error: the bad input was accepted")


def assert_short_named(message: str, culprit: str) -> None:
    assert re.search(culprit, message, re.S), f"the message does not name {culprit!r}:\n{message}"
    assert "Traceback" not in message and len(message.splitlines()) <= MAX_LINES, message


# ---------------------------------------------------------------- the catalogues' cases
@dataclass(frozen=True)
class Case:
    """``task`` (train / eval / predict) with ``overrides`` (``{name}`` = a workspace file) must raise
    ``error`` whose message matches ``culprit``; ``check(workspace,
                                                         output_dir)`` then looks for side effects."""

    id: str
    task: str
    overrides: tuple[str, ...]
    error: type[UserError]
    culprit: str
    check: Callable[[Workspace, Path], None] | None = None


def nothing_ran(ws: Workspace, _: Path) -> None:
    assert not (ws.root / MARKER).exists(), "loading the crafted checkpoint ran its command"


def others_written(_: Workspace, out: Path) -> None:
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img0.png", "img2.png"]


def train_case(id: str, *overrides: str, error: type[UserError] = ConfigError, culprit: str,
               data: str | None = None, **kw) -> Case:
    """A train case on the tiny synthetic data, or on a folder dataset (``data``: a fault of
    ``Workspace._make_folder``, ``"missing"`` for a root that does not exist)."""
    root = "{missing}" if data == "missing" else f"{{folder__{data}}}"
    base = TRAIN if data is None else [*FOLDER, f"data.root={root}"]
    return Case(id, "train", (*base, *overrides), error, culprit, **kw)


def eval_case(id: str, *overrides: str, error: type[UserError] = CheckpointError, culprit: str,
              base: tuple[str, ...] = tuple(SMALL), **kw) -> Case:
    return Case(id, "eval", (*base, *overrides), error, culprit, **kw)


def predict_case(id: str, *overrides: str, error: type[UserError] = CheckpointError, culprit: str,
                 **kw) -> Case:
    return Case(id, "predict", (*PREDICT, "device=cpu", *overrides), error, culprit, **kw)


#: how a case runs its task in-process; eval / predict take the typed options as well (over the recipe)
TASKS: dict[str, Callable[[Any, list[str]], object]] = {
    "train": lambda cfg, _: _task("train")(cfg), "eval": lambda cfg, o: _task("eval")(cfg, o),
    "predict": lambda cfg, o: _task("predict")(cfg, o)}


def _task(name: str) -> Callable[..., object]:
    """The task's function, imported when a case runs (the tasks import Lightning)."""
    if name == "train":
        from seg_template.train import train

        return train
    if name == "eval":
        from seg_template.eval import evaluate

        return evaluate
    from seg_template.predict import run_predict

    return run_predict
