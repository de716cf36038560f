"""Constants and plain helpers shared by several test files (fixtures live in ``tests/conftest.py``).

    from tests.helpers import TINY, options, run_script, skip_unless_importable
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seg_template.paths import CONFIG_DIR, PROJECT_ROOT

#: A few 32x32 synthetic images: enough to run every code path of train / eval / predict in seconds.
TINY = ["data.train_set.length=8", "data.val_set.length=4", "data.test_set.length=4",
        "data.train_set.image_size=[32,32]", "data.batch_size=4", "callbacks.rich_progress_bar=null"]


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root with this interpreter, as a user would; output captured
    as text."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def importable(name: str) -> bool:
    """Whether ``import <name>`` would find a module. False, not an error, when a parent package of a dotted
    name is missing: ``importlib.util.find_spec("a.b")`` imports ``a`` first and raises if it is absent (as
    ``hydra_plugins`` is where no Hydra plugin is installed)."""
    parent = name.rpartition(".")[0]
    if parent and not importable(parent):
        return False
    return importlib.util.find_spec(name) is not None


def skip_unless_importable(*names: str) -> None:
    """Skip the calling test unless one of ``names`` (alternatives, e.g. tensorboard or tensorboardX) can be
    imported; no names: nothing is needed."""
    if names and not any(importable(n) for n in names):
        pytest.skip(f"needs the optional package {' or '.join(names)}")


#: the optional packages a model builder needs (the module of a configs/model/*.yaml `_target_` -> alternatives)
MODEL_PACKAGES = {"seg_template.models.smp": ("segmentation_models_pytorch",)}  # the `.[smp]` extra


def skip_unless_builder_importable(target: str) -> None:
    """Skip the calling test unless the model builder ``target`` (a ``_target_``) has its optional package."""
    skip_unless_importable(*MODEL_PACKAGES.get(str(target).rpartition(".")[0], ()))


def skip_unless_model_importable(name: str) -> None:
    """Skip the calling test unless ``model=<name>``'s builder has its optional package (the smp models need
    `pip install -e ".[smp]"`)."""
    from omegaconf import OmegaConf

    skip_unless_builder_importable(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml").get("_target_", ""))


#: what export.py and predict.py model_file= need (the `.[onnx]` extra): all of them
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def skip_unless_onnx() -> None:
    """Skip the calling test unless the `.[onnx]` extra is installed (``make test`` installs `.[dev]` only)."""
    for name in ONNX_PACKAGES:
        skip_unless_importable(name)


def options(group: str) -> list[str]:
    """The options of a config group, read from ``configs/<group>/*.yaml``: tests parametrized over them take
    a new option (a forker's loss, dataset or model file) without any edit."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


#: TINY with a slightly wider small model: what the entry-point tests train and export
TRAINED = [*TINY, "model.width=8"]


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (its ``main`` can then run in-process)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in the script looks its module up while it is being defined
    spec.loader.exec_module(module)
    return module


def save_checkpoint(cfg, path, recipe: bool = True):
    """A checkpoint of the (untrained) module of ``cfg``, written as training writes it: the state dict and,
    through the module's ``on_save_checkpoint``, the recipe."""
    import torch
    from hydra.utils import instantiate

    from seg_template.build import build_module
    from seg_template.recipe import recipe_from

    torch.manual_seed(0)
    module = build_module(cfg, instantiate(cfg.data))
    if recipe:
        module.recipe = recipe_from(cfg)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def predict(compose_cfg, out, *overrides):
    """``python predict.py <overrides>`` in-process, writing to ``out`` (unless ``output_dir=`` is given)."""
    from seg_template.predict import run_predict

    cfg = compose_cfg("predict", [*overrides, "device=cpu"], output_dir=out)
    return run_predict(cfg, overrides=list(overrides))


def data_cfg(name: str, root: Path, *overrides: str):
    """The real configs/data/<name>.yaml, composed on its own (no trainer/model needed)."""
    from seg_template.data.config import compose_data_config

    return compose_data_config([f"+data={name}", f"+paths.data_dir={root}", f"data.root={root}", *overrides],
                               config_name=None)


def job_config(sweep: Path, num: int, override: str):
    """The parts of a multirun job's config that the sweep summary callback reads."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    return OmegaConf.create({"optimized_metric": "val/mIoU", "hydra": {
        "mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}, "job": {"num": num},
        "runtime": {"output_dir": str(sweep / f"{num}_{override}")},
        "overrides": {"task": [override, "trainer.max_epochs=1"]}}})
