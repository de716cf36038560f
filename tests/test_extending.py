"""docs/extending.md's worked examples, as written: each ``# file: <path>`` block is copied into a temporary
copy of the project, which then trains with them (``fast_dev_run``) and passes the tests that discover options
from ``configs/``. A forker following the guide touches only new files, and ``make test`` stays green."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seg_template.paths import PROJECT_ROOT
from tests.helpers import TINY

GUIDE = PROJECT_ROOT / "docs" / "extending.md"
#: a file block: an optional ``# @package`` line (Hydra reads it only as the very first line), ``# file: <path>``
BLOCK = re.compile(r"```(?:python|yaml)\n((?:# @package \S+\n)?)# file: (\S+)\n(.*?)```", re.S)
#: what a copy of the project needs to run train.py and the tests
COPIED = ("seg_template", "configs", "tests", "scripts", "hydra_plugins", "train.py", "eval.py", "predict.py",
          "export.py", "pyproject.toml")


def guide_files() -> dict[str, str]:
    """``{path: text}`` of every file block of the guide, as a reader copies it (the ``# file:`` line is a
    comment in both languages, so it stays in the file)."""
    return {path: f"{package}# file: {path}\n{text}" for package, path, text in BLOCK.findall(GUIDE.read_text())}


def test_the_guide_writes_only_new_files() -> None:
    files = guide_files()
    assert {"seg_template/losses/tversky.py", "configs/loss/tversky.yaml", "configs/loss/ce_tversky.yaml",
            "seg_template/data/csv_pairs.py", "configs/data/csv_pairs.yaml",
            "seg_template/models/timm_fpn.py", "configs/model/timm_fpn.yaml",
            "seg_template/callbacks/lr_line.py", "configs/callbacks/lr_line.yaml",
            "configs/experiment/tversky_fpn.yaml", "seg_template/data/npz_arrays.py",
            "configs/data/npz_arrays.yaml"} == set(files)
    assert not [p for p in files if (PROJECT_ROOT / p).exists()], "an example would change a template file"


@pytest.fixture(scope="module")
def forked(tmp_path_factory) -> Path:
    """A copy of the project with the guide's files added."""
    root = tmp_path_factory.mktemp("fork")
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, root / name)
    for path, text in guide_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def run(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "PROJECT_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def csv_dataset(root: Path) -> tuple[Path, Path]:
    """The synthetic shapes on disk, listed in ``lists/{train,val}.csv`` (the guide's shell lines)."""
    data = root / "shapes"
    for split, length in (("train", 8), ("val", 4)):
        result = run(root, "scripts/write_synthetic.py", "--out", str(data), "--split", split, "--length",
                     str(length), "--image-size", "32")
        assert result.returncode == 0, result.stderr
    (data / "lists").mkdir()
    for split in ("train", "val"):
        lines = [f"images/{split}/{p.name},masks/{split}/{p.name}" for p in sorted((data / "images" / split).iterdir())]
        (data / "lists" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return data, data / "lists"


def npz_dataset(root: Path) -> Path:
    """The synthetic shapes as the arrays of ``<root>/{train,val}.npz``."""
    import numpy as np

    from seg_template.data.synthetic import SyntheticShapes

    folder = root / "arrays"
    folder.mkdir()
    for split, length in (("train", 8), ("val", 4)):
        samples = [SyntheticShapes(split=split, length=length, image_size=[32, 32]).load(i) for i in range(length)]
        np.savez(folder / f"{split}.npz", images=np.stack([s[0] for s in samples]),
                 masks=np.stack([s[1] for s in samples]).astype(np.uint8))
    return folder


@pytest.mark.slow
def test_the_guides_examples_train_and_pass_the_discovering_tests(forked: Path, tmp_path: Path) -> None:
    logs = f"paths.log_dir={tmp_path / 'logs'}"
    # the loss, the model and the callback together, then the experiment that names them
    result = run(forked, "train.py", "loss=tversky", "model=timm_fpn", "callbacks=[default,lr_line]", "debug=fdr",
                 *TINY, logs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 0: lr" in result.stdout + result.stderr  # the callback's line
    result = run(forked, "train.py", "experiment=tversky_fpn", "debug=fdr", *TINY, logs)
    assert result.returncode == 0, result.stderr[-3000:]
    # the CSV dataset, and its required option left out: one block naming it
    data, lists = csv_dataset(forked)
    args = ["data=csv_pairs", f"data.root={data}", "debug=fdr", "data.batch_size=4", "callbacks.rich_progress_bar=null"]
    result = run(forked, "train.py", *args, f"data.csv_dir={lists}", logs)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(forked, "train.py", *args, logs)
    assert result.returncode == 1
    printed = result.stdout + result.stderr  # the entry point logs the block
    assert "data.csv_dir: a required value ('???' in its config) that is not set" in printed
    assert "Traceback" not in printed
    result = run(forked, "scripts/check_dataset.py", "data=csv_pairs", f"data.root={data}", f"data.csv_dir={lists}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the in-memory dataset; a file without its arrays is named in one block
    arrays = npz_dataset(tmp_path)
    args = ["data=npz_arrays", "debug=fdr", "data.batch_size=4", "callbacks.rich_progress_bar=null", logs]
    result = run(forked, "train.py", *args, f"data.root={arrays}")
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.npz").write_bytes(b"not a zip")
    result = run(forked, "train.py", *args, f"data.root={tmp_path / 'bad'}")
    printed = result.stdout + result.stderr
    assert result.returncode == 1 and "train.npz: not an .npz file with arrays" in printed, printed[-3000:]
    assert "Traceback" not in printed
    # the tests that discover options from configs/ take the new ones without an edit
    result = run(forked, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_configs.py",
                 "tests/test_models.py", "tests/test_cli.py", "tests/test_train.py", "-m", "not slow",
                 "-k", "tversky or csv_pairs or npz_arrays or timm_fpn or lr_line or help", timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    for case in ("test_configs.py::test_loss[tversky]", "test_configs.py::test_loss[ce_tversky]",
                 "test_configs.py::test_data[csv_pairs]", "test_configs.py::test_data[npz_arrays]",
                 "test_configs.py::test_model[timm_fpn]", "test_configs.py::test_callbacks[lr_line]",
                 "test_configs.py::test_experiment[tversky_fpn]", "test_models.py::test_output_stride_and_aux[timm_fpn]",
                 "test_models.py::test_config_keys[timm_fpn]", "test_train.py::test_fast_dev_run_each_loss[tversky]",
                 "test_train.py::test_fast_dev_run_each_loss[ce_tversky]",
                 "test_cli.py::test_help_describes_the_template_without_importing_torch"):
        assert f"{case} PASSED" in result.stdout, case
