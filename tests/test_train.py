"""The training entry point on tiny synthetic data: every loss, bad input, resume, multirun, DDP on CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from seg_template.build import metric_value
from seg_template.errors import ConfigError
from seg_template.train import train
from tests.helpers import TINY, options, run_script


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("loss", options("loss"))
def test_fast_dev_run_each_loss(loss: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=[f"loss={loss}", "debug=fdr", *TINY], output_dir=tmp_path)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    for name in ("train/loss", "val/loss", "val/mIoU", "test/mIoU"):
        assert torch.isfinite(torch.as_tensor(metrics[name])), name
    assert 0.0 <= metric_value(metrics, "val/mIoU") <= 1.0


def test_optimized_metric_missing_warns_unless_a_sweeper_needs_it() -> None:
    assert metric_value({"val/mIoU": torch.tensor(0.5)}, "val/mIoU") == 0.5
    assert metric_value({}, None) is None
    assert metric_value({"val/mIoU": 0.5}, "val/nope") is None  # a run without validation still ends well
    with pytest.raises(ConfigError, match="val/nope"):
        metric_value({"val/mIoU": 0.5}, "val/nope", required=True)


def test_resume_continues_the_step_count_reading_its_checkpoint_once(compose_cfg, tmp_path: Path, torch_loads,
                                                                     caplog) -> None:
    from seg_template.models import weights

    short = ["test=false", "model.width=4", "callbacks.rich_model_summary=null", *TINY]
    first = compose_cfg(overrides=["trainer.max_epochs=1", *short], output_dir=tmp_path / "a")
    _, objects = train(first)
    steps = objects["trainer"].global_step
    assert steps == 2  # 8 images / batch 4
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert last.is_file()

    torch_loads.clear()
    resumed = compose_cfg(overrides=["trainer.max_epochs=2", f"ckpt_path={last}", "loss.aux_weight=0.5", *short],
                          output_dir=tmp_path / "b")
    with caplog.at_level("INFO", logger="seg_template"):
        _, objects = train(resumed)
    # a loss or data switch on resume is allowed, and said
    assert "Resuming with other data / model / loss options than the run that wrote it" in caplog.text
    assert "loss.aux_weight: 0.4 -> 0.5" in caplog.text and "data.batch_size" not in caplog.text
    assert objects["trainer"].global_step == 2 * steps
    assert objects["trainer"].current_epoch == 2
    rows = [r for r in read_metrics(tmp_path / "b" / "metrics.csv") if r.get("val/mIoU")]
    assert [int(r["epoch"]) for r in rows] == [1]  # only the new epoch ran
    # the check before fit and Lightning's restore share one read, which is then let go
    assert torch_loads[str(last.resolve())] == 1, dict(torch_loads)
    assert weights._kept is None


@pytest.mark.slow
def test_multirun_over_the_three_losses(tmp_path: Path) -> None:
    result = run_script("train.py", "-m", "loss=ce,wce,ohem", "trainer.max_epochs=1", *TINY,
                        f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_loss-ce", "1_loss-wce", "2_loss-ohem"]  # the swept value, not TINY
    for job, loss in zip(jobs, ["ce", "wce", "ohem"], strict=True):
        assert f"loss={loss}" in (job / ".hydra" / "overrides.yaml").read_text()
        rows = read_metrics(job / "metrics.csv")
        assert any(r.get("val/mIoU") for r in rows) and any(r.get("test/mIoU") for r in rows)
        assert (job / "checkpoints" / "best.ckpt").is_file()
    # the sweep -> best job -> eval path by copy and paste: the summary's checkpoint column and printed command
    with open(sweep / "summary.csv", newline="") as file:
        best = next(csv.DictReader(file))
    assert best["checkpoint"] == str(sweep / best["folder"] / "checkpoints" / "best.ckpt")
    assert f"python eval.py ckpt_path={best['checkpoint']}" in result.stdout
    evaluated = run_script("eval.py", f"ckpt_path={best['checkpoint']}", *TINY, f"paths.log_dir={tmp_path}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"Recipe of {best['checkpoint']}" in evaluated.stdout and "mIoU" in evaluated.stdout


@pytest.mark.slow
def test_ddp_cpu_one_folder_one_set_of_checkpoints(tmp_path: Path) -> None:
    result = run_script("train.py", "trainer=ddp_cpu", "trainer.max_epochs=1", *TINY, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote into rank 0's folder, not a new one
    (run,) = runs
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1's Hydra log sits beside rank 0's
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    rows = read_metrics(run / "metrics.csv")
    assert any(r.get("val/mIoU") for r in rows)
    # 8 images / (2 processes x batch 4) = 1 step per epoch: the sampler split the data between ranks
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


@pytest.mark.slow
def test_unknown_option_lists_valid_choices() -> None:
    result = run_script("train.py", "loss=foo", timeout=120)
    assert result.returncode != 0
    assert "Could not find 'loss/foo'" in result.stderr
    assert all(f"\t{name}\n" in result.stderr for name in options("loss")), result.stderr
