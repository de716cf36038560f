"""The entry wrapper: fast --help, resuming in place, user errors as one block, signals as an exit status, no
debris, run names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seg_template.cli import find_user_error, resume_in_place_argv, user_message
from seg_template.errors import ConfigError, DataError, UserError
from seg_template.paths import PROJECT_ROOT, folder_name, is_sweep_value, register_resolvers

HELP_PROBE = """
import runpy, sys
sys.argv = ["train.py", "--help"]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit:
    pass
print("HEAVY:", sorted(m for m in ("torch", "pytorch_lightning", "albumentations") if m in sys.modules))
"""


def test_help_describes_the_template_without_importing_torch() -> None:
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("seg_template: semantic segmentation"), out[:300]
    # every config group and its options, read from configs/ (a new option file shows up here by itself)
    groups: dict[str, list[str]] = {}
    for path in sorted((PROJECT_ROOT / "configs").rglob("*.yaml")):
        group = path.parent.relative_to(PROJECT_ROOT / "configs").as_posix()
        if group != "." and group.split("/")[0] != "hydra":  # the primary configs and Hydra's own group
            groups.setdefault(group, []).append(path.stem)
    assert {"loss", "model", "data", "trainer", "inference"} <= set(groups)
    for group, names in groups.items():
        assert f"\n{group}: {', '.join(sorted(names))}\n" in out, group
    assert "HEAVY: []" in out  # Hydra answered before torch / Lightning were loaded


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    return run


def test_resume_in_place_adds_the_run_folder(tmp_path: Path) -> None:
    run = _run(tmp_path)
    argv = ["train.py", f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_epochs=20"]
    new = resume_in_place_argv(argv, now=datetime(2026, 2, 3, 4, 5, 6))
    assert new == [*argv, f"hydra.run.dir={run}", "hydra.output_subdir=.hydra/resumed_2026-02-03_04-05-06"]


def test_resume_in_place_takes_a_hydra_quoted_path(tmp_path: Path) -> None:
    """The stop line quotes a path Hydra's grammar does not take as it is (``=``, spaces): resuming it still
    continues in its run folder, itself quoted for Hydra."""
    run = tmp_path / "multiruns" / "s" / "1_loss=ohem x"
    (run / ".hydra").mkdir(parents=True)
    argv = ["train.py", f"ckpt_path='{run}/checkpoints/last.ckpt'"]
    new = resume_in_place_argv(argv, now=datetime(2026, 2, 3, 4, 5, 6))
    assert new[2] == f"hydra.run.dir='{run}'"


@pytest.mark.parametrize("extra", [["resume_in_place=false"], ["-m"], ["hydra.run.dir=/elsewhere"]])
def test_resume_in_place_can_be_declined(tmp_path: Path, extra: list[str]) -> None:
    argv = ["train.py", f"ckpt_path={_run(tmp_path)}/checkpoints/last.ckpt", *extra]
    assert resume_in_place_argv(argv) == argv


def test_resume_from_a_file_outside_a_run_folder_starts_a_new_run(tmp_path: Path) -> None:
    argv = ["train.py", f"ckpt_path={tmp_path}/model.ckpt"]
    assert resume_in_place_argv(argv) == argv
    assert resume_in_place_argv(["train.py", "loss=ohem"]) == ["train.py", "loss=ohem"]


def test_user_errors_are_found_behind_wrappers() -> None:
    cause = ConfigError("data.batch_size must be >= 1, got 0")
    try:
        try:
            raise cause
        except ConfigError as err:
            raise RuntimeError("Error in call to target 'SegDataModule'") from err
    except RuntimeError as wrapped:
        assert find_user_error(wrapped) is cause
    assert find_user_error(ValueError("a bug")) is None


def test_worker_traceback_is_stripped_from_the_message() -> None:
    err = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                    "last):\n  File \"x.py\", line 1\nseg_template.errors.DataError: mask a.png has label 40")
    assert user_message(err) == "DataError: mask a.png has label 40"
    assert isinstance(err, UserError) and isinstance(err, ValueError)


def test_run_names() -> None:
    register_resolvers()
    node = OmegaConf.create({"name": None, "dir": "runs/t${name_suffix:${name}}"})
    assert node.dir == "runs/t"
    node.name = "ohem_try"
    assert node.dir == "runs/t_ohem_try"


@pytest.mark.parametrize(("value", "sweep"), [("ce,wce,ohem", True), ("range(1,4)", True), ("[32,32]", False),
                                              ("ohem", False), ("'a,b'", False), ("[1,2],[3,4]", True)])
def test_sweep_values_are_told_from_list_values(value: str, sweep: bool) -> None:
    assert is_sweep_value(value) is sweep


@pytest.mark.parametrize(("overrides", "name"), [
    (["loss=ohem"], "loss-ohem"),
    (["loss=ohem", "optimizer.lr=0.01"], "loss-ohem_optimizer.lr-0.01"),
    (["data.crop_size=[32,32]"], "data.crop_size-32-32"),
    (["optimizer.lr=-0.1"], "optimizer.lr--0.1"),
    (["+loss.main.thresh=0.7", "data/aug=strong"], "loss.main.thresh-0.7_data.aug-strong"),
    (["name='a b, c'", "x={a: 1}", 'y="q"'], "name-a-b-c_x-a-1_y-q"),
])
def test_a_sweep_job_folder_pastes_into_a_command_line(overrides: list[str], name: str) -> None:
    """Job folders are named so that ``ckpt_path=<sweep>/<n>_<name>/checkpoints/best.ckpt`` is one Hydra value
    as it is (issue 18: ``1_loss=ohem`` made Hydra's parser stop at the second ``=``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert folder_name(overrides) == name
    path = f"logs/train/multiruns/2026-12-03_06-00-00_try/3_{name}/checkpoints/best.ckpt"
    (parsed,) = OverridesParser.create().parse_overrides([f"ckpt_path={path}"])
    assert parsed.value() == path
    assert len(folder_name([f"data.class_names=[{','.join(['a_long_class_name'] * 40)}]"])) <= 120


def test_a_stopped_run_exits_143_and_an_error_while_stopping_is_part_of_the_stop(caplog) -> None:
    from seg_template.cli import _signal_exits
    from seg_template.signals import exit_on_signals, install, restore

    chld = signal.getsignal(signal.SIGCHLD)
    try:
        with exit_on_signals(), pytest.raises(SystemExit) as ended, _signal_exits():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once
        assert ended.value.code == 143 and "Stopped by SIGTERM (exit status 143)" in caplog.text
        with exit_on_signals(), pytest.raises(SystemExit) as ended, _signal_exits():
            previous = install(lambda signum, frame: None)  # a flag, as StopOnSignal's during fit
            os.kill(os.getpid(), signal.SIGINT)
            restore(previous)
            raise RuntimeError("DataLoader worker (pid 7) is killed by signal: Interrupt.")
        assert ended.value.code == 130
        assert "before a safe point (RuntimeError: DataLoader worker (pid 7)" in caplog.text
    finally:
        signal.signal(signal.SIGCHLD, chld)


def test_a_user_error_prints_once_and_exits_1(caplog) -> None:
    from seg_template.cli import _user_errors

    with pytest.raises(SystemExit) as ended, _user_errors():
        raise RuntimeError("Error in call to target 'SegDataModule'") from DataError("mask a.png has label 9")
    assert ended.value.code == 1
    assert caplog.text.count("DataError: mask a.png has label 9") == 1 and "found by DDP rank" not in caplog.text


@pytest.mark.parametrize("arg", ["paths.log_dir=~/x", "paths.log_dir='~/x'", "+data.root=~", "ckpt_path=~user/a"])
def test_a_tilde_path_is_refused_before_hydra_makes_a_folder_named_tilde(arg: str) -> None:
    """Unquoted, Hydra's lexer failed with no hint; quoted, Hydra made a folder named '~' in the current folder
    before any check ran. Nothing expands '~': one block asks for $HOME or an absolute path."""
    from seg_template.cli import _check_home_values

    with pytest.raises(ConfigError, match=r"starts with '~', which is not expanded here: write (\$HOME|an abs)"):
        _check_home_values(["train.py", arg])
    _check_home_values(["train.py", "~loss", "~loss=ce", "--help", "name=a~b"])  # a delete, a flag, a ~ inside
