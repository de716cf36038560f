"""Shared fixtures: compose the real configs the way ``python train.py ...`` would, without Hydra's runtime
(no output folder, no logging setup), so tests can call ``seg_template.train.train(cfg)``.

    def test_ohem(compose_cfg, tmp_path):
        cfg = compose_cfg(overrides=["loss=ohem", "debug=fdr"], output_dir=tmp_path)

Plain helpers and constants shared by several test files live in ``tests/helpers.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from seg_template.paths import CONFIG_DIR, export_project_root, register_resolvers


def pytest_configure(config: pytest.Config) -> None:
    # What the entry points do before Hydra composes: configs/paths/default.yaml reads ${oc.env:PROJECT_ROOT}
    # (inherited too by the train.py / eval.py subprocesses some tests start), and the hydra run dirs use
    # the ${name_suffix:...} resolver.
    export_project_root()
    register_resolvers()


def _compose(config_name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


ComposeCfg = Callable[..., DictConfig]


@pytest.fixture
def compose_cfg(tmp_path_factory: pytest.TempPathFactory) -> ComposeCfg:
    """``compose_cfg(config_name="train", overrides=(), output_dir=None)``: ``configs/<config_name>.yaml``
    composed with ``overrides``, writing to ``output_dir`` (a fresh temporary folder when None).
    ``trainer=cpu`` unless the overrides pick a trainer (or the config has no trainer group), so tests do not
    depend on a GPU being present."""

    def compose_cfg(config_name: str = "train", overrides: Sequence[str] = (),
                    output_dir: Path | None = None) -> DictConfig:
        overrides = list(overrides)
        has_trainer = "- trainer:" in (CONFIG_DIR / f"{config_name}.yaml").read_text()
        if has_trainer and not any(o.split("=", 1)[0].lstrip("+~") == "trainer" for o in overrides):
            overrides.insert(0, "trainer=cpu")
        cfg = _compose(config_name, overrides)
        out = Path(output_dir) if output_dir is not None else tmp_path_factory.mktemp("run")
        out.mkdir(parents=True, exist_ok=True)
        # ${hydra:runtime.output_dir} only resolves inside a Hydra run: point the paths at the tmp dir instead.
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
        return cfg

    return compose_cfg


@pytest.fixture
def compose_tmp(compose_cfg: ComposeCfg, tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_tmp(*overrides, config_name="train")`` with outputs under this test's ``tmp_path``."""

    def _compose_tmp(*overrides: str, config_name: str = "train") -> DictConfig:
        return compose_cfg(config_name, overrides, output_dir=tmp_path)

    return _compose_tmp


@pytest.fixture
def hydra_node() -> Callable[..., DictConfig]:
    """``hydra_node(*overrides)``: the composed ``hydra`` node (sweeper, launcher, run and sweep dirs) of
    train.yaml with ``overrides``, as Hydra would see it when launching."""

    def _hydra_node(*overrides: str) -> DictConfig:
        return _compose("train", overrides, return_hydra_config=True).hydra

    return _hydra_node


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module: model tests on a busy 2-core machine spend most of their time
    in OpenMP spin-waits with two threads (measured ~100x slower under contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_loads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """``{resolved path: number of torch.load calls}`` from here on (each file is read once per command: the
    one reader, seg_template/models/weights.py); nothing kept from an earlier test."""
    from seg_template.models import weights

    counted: Counter = Counter()
    real = torch.load

    def counting(f, *args, **kwargs):
        counted[str(Path(f).resolve())] += 1
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    monkeypatch.setattr(weights, "_kept", None)
    return counted


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network (every connection fails; no proxy), Hugging Face offline, and empty torch.hub
    (``<tmp_path>/torch``) and Hugging Face (``<tmp_path>/hf``) caches; returns ``tmp_path``."""
    import socket

    import huggingface_hub.constants

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -2] Name or service not known")

    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path
