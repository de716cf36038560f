"""Shared test helpers: compose the real configs the way ``python train.py ...`` would, without Hydra's
runtime (no output folder, no logging setup), so tests can call ``seg_template.train.train(cfg)``.

    from conftest import compose_cfg
    cfg = compose_cfg(overrides=["loss=ohem", "debug=fdr"], output_dir=tmp_path)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from seg_template.utils import CONFIG_DIR, PROJECT_ROOT

ROOT = PROJECT_ROOT


def compose_cfg(config_name: str = "train", overrides: Sequence[str] = (),
                output_dir: Path | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with ``overrides``; outputs go to ``output_dir`` (a fresh tmp
    dir when None). ``trainer=cpu`` unless the overrides pick a trainer (or the config has none)."""
    overrides = list(overrides)
    has_trainer = "- trainer:" in (CONFIG_DIR / f"{config_name}.yaml").read_text()
    if has_trainer and not any(o.split("=", 1)[0].lstrip("+~") == "trainer" for o in overrides):
        overrides.insert(0, "trainer=cpu")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    GlobalHydra.instance().clear()
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="seg_template_"))
    out.mkdir(parents=True, exist_ok=True)
    # ${hydra:runtime.output_dir} only resolves inside a Hydra run: point the paths at the tmp dir instead.
    cfg.paths.output_dir = str(out)
    cfg.paths.log_dir = str(out / "logs")
    return cfg


@pytest.fixture
def compose_tmp(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose(*overrides, config_name="train")`` with outputs under this test's ``tmp_path``."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        return compose_cfg(config_name, overrides, output_dir=tmp_path)

    return _compose


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: model tests on a busy 2-core machine spend most of their time
    in OpenMP spin-waits with two threads (measured ~100x slower under contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
