"""The bad-input catalogue's runs that must lose nothing (issue 11; its table: ``tests/test_bad_inputs.py``):
resume after ``kill -9`` continues from the latest epoch in the same run folder, a full disk during a save
keeps the previous checkpoint (a small tmpfs, root only), and one seed gives one ``metrics.csv`` (twice in a
row, with DataLoader workers, and under DDP on the CPU). All slow: they train, some in subprocesses.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from seg_template.cli import user_message
from seg_template.errors import CheckpointError
from seg_template.train import train
from tests.bad_input_files import TRAIN, assert_short_named, raised_user_error
from tests.helpers import run_script

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not there yet
        return None


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_after_kill_9_continues_from_the_latest_epoch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "train.py", *TRAIN, "trainer.max_epochs=100", f"paths.log_dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=Path(__file__).parents[1], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        last = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "train" / "runs").glob("*/checkpoints/last.ckpt"))
            if found and (_epoch(found[0]) or 0) >= 1:
                last = found[0]
                break
            time.sleep(0.2)
        assert last is not None and proc.poll() is None, "training ended or stalled before epoch 1"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    run = last.parent.parent
    killed_at = _epoch(last)
    assert killed_at is not None and killed_at >= 1  # an atomic write: never a broken last.ckpt
    result = run_script("train.py", *TRAIN, f"trainer.max_epochs={killed_at + 2}", f"ckpt_path={last}",
                        f"paths.log_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"Resuming {last} (epoch {killed_at}" in result.stdout + result.stderr
    assert list((tmp_path / "train" / "runs").iterdir()) == [run]  # the same run folder
    assert _epoch(last) == killed_at + 1 and not list(last.parent.glob(".*.partial"))
    epochs = [int(r["epoch"]) for r in _metrics(run / "metrics.csv") if r.get("val/mIoU")]
    assert epochs[-1] == killed_at + 1 and killed_at in epochs and epochs == sorted(epochs)


class FillDisk(pl.Callback):
    """Fills the filesystem of ``folder`` when epoch ``epoch`` starts: that epoch's checkpoints cannot be
    written (``+callbacks.fill._target_=...FillDisk``)."""

    def __init__(self, folder: str, epoch: int = 1) -> None:
        self.folder, self.epoch = Path(folder), epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with open(self.folder / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(compose_cfg, tmp_path: Path) -> None:
    mount = tmp_path / "scratch"
    mount.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        # the checkpoints alone on the small filesystem: the logs' own writes are not what this tests
        fill = [f"+callbacks.fill._target_={__name__}.FillDisk", f"+callbacks.fill.folder={mount}"]
        cfg = compose_cfg(overrides=[*TRAIN, "trainer.max_epochs=3",
                                     f"callbacks.model_checkpoint.dirpath={mount}", *fill],
                          output_dir=tmp_path / "run")
        err = raised_user_error(lambda: train(cfg))
        assert isinstance(err, CheckpointError)
        assert_short_named(user_message(err),
                           r"(best|last)\.ckpt could not be written.*No space left on device")
        assert not list(mount.glob(".*.partial"))
        assert _epoch(mount / "last.ckpt") == 0  # the previous checkpoint, whole
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ---------------------------------------------------------------------------------- one seed, one run
TIMING = re.compile(r"time|speed|per_s|_s$")


def _values(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if not TIMING.search(k)} for row in _metrics(path)]


def test_same_seed_same_metrics_with_and_without_workers(compose_cfg, tmp_path: Path) -> None:
    runs = {}
    variants = {"a": [], "b": [], "workers": ["data.num_workers=2"], "other_seed": ["seed=7"]}
    for name, options in variants.items():
        train(compose_cfg(overrides=[*TRAIN, "trainer.max_epochs=2", *options], output_dir=tmp_path / name))
        runs[name] = _values(tmp_path / name / "metrics.csv")
    assert runs["a"] and any(r.get("val/mIoU") for r in runs["a"])
    assert runs["a"] == runs["b"] == runs["workers"]
    assert runs["other_seed"] != runs["a"]  # the comparison can fail: the values depend on the seed


def test_same_seed_same_metrics_under_ddp(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        result = run_script("train.py", *TRAIN, "trainer=ddp_cpu", "trainer.max_epochs=2",
                            f"paths.log_dir={tmp_path / name}", timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        (run,) = (tmp_path / name / "train" / "runs").iterdir()
        runs.append(_values(run / "metrics.csv"))
    assert runs[0] and runs[0] == runs[1]
