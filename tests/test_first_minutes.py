"""What a user sees when running the entry points as scripts: a quiet, watchable log, one short block for a
mistake, no debris, named folders, and resuming in place. Slow: each test starts ``python train.py``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import TINY, run_script

pytestmark = pytest.mark.slow

#: lines a default run must not print (third-party advertising, known-harmless notices, a second test table)
NOISE = ("Tip:", "litlogger", "litmodels", "Trainer already configured with model summary", "is deprecated",
         "Test metric", "DataLoader 0", "sync_dist=True", "exists and is not empty")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_default_run_is_quiet_and_its_log_tells_the_story(tmp_path: Path) -> None:
    result = run_script("train.py", "trainer.max_epochs=2", *TINY[:-1], f"paths.log_dir={tmp_path}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert not [n for n in NOISE if n in out], out
    (run,) = (tmp_path / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()
    # not a terminal: plain progress; one line per epoch, the fit summary and the test table in train.log
    assert "Epoch 0/" not in out  # no live bar
    assert "epoch 0/1 | train/loss" in log and "epoch 1/1 | train/loss" in log and "val/mIoU" in log
    assert "validation IoU %" in log and "test mIoU" in log and "background" in log
    assert out.count("test mIoU") == 1


def test_named_run_then_resume_in_place(tmp_path: Path) -> None:
    first = run_script("train.py", "name=first", "trainer.max_epochs=1", "test=false", *TINY,
                       f"paths.log_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    assert run.name.endswith("_first")

    resumed = run_script("train.py", f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_epochs=2", "test=false",
                         *TINY, f"paths.log_dir={tmp_path}")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [run.name]  # no new folder
    assert "dirpath" not in out  # Lightning's "checkpoint directory has changed" warning
    epochs = sorted({int(r["epoch"]) for r in _rows(run / "metrics.csv") if r.get("val/mIoU")})
    assert epochs == [0, 1]  # one metrics.csv holds both runs
    assert (run / ".hydra" / "config.yaml").is_file()  # the original recipe is kept
    assert len(list((run / ".hydra").glob("resumed_*/config.yaml"))) == 1
