"""Scaling out, proven on CPU: evaluation under DDP (``trainer=ddp_cpu``) equals one process exactly, and
``scripts/gpu_check.py`` without CUDA. Optuna: test_scale_out_optuna.py; SLURM/submitit:
test_scale_out_slurm.py. The slow tests start the real entry points in subprocesses on tiny synthetic data.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from seg_template.eval import evaluate as evaluate_task
from seg_template.paths import PROJECT_ROOT
from tests.helpers import TINY, run_script

#: TINY with validation and test splits of odd length: 5 samples over 2 processes is 3 + 2, which a
#: padding sampler (Lightning's DistributedSampler) would make 3 + 3, counting one image twice.
ODD = [*TINY, "data.val_set.length=5", "data.test_set.length=5"]
#: adds SaveConfusionMatrices below to a run's callbacks (the subprocess imports this module: the
#: entry points run from the repository root, where ``tests`` is importable)
SAVE_CONFMAT = "+callbacks.save_confmat._target_=tests.test_scale_out.SaveConfusionMatrices"


class SaveConfusionMatrices(Callback):
    """Writes each evaluation's confusion matrix, summed over the processes, to
    ``<run>/confmat_<stage>.pt`` (``int64[C, C]``), so that runs can be compared bit for bit.

    Callbacks' epoch-end hooks run before the module's, which computes, logs and resets the same metric:
    ``compute()`` here performs the cross-process sum (on every rank, as it must) and caches the result.
    """

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module, "test")

    @staticmethod
    def _save(trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        confmat = pl_module.confmats[stage].compute()
        if trainer.is_global_zero:
            torch.save(confmat.cpu(), Path(trainer.default_root_dir) / f"confmat_{stage}.pt")


def only_run(log_dir: Path, task: str) -> Path:
    """The one run folder ``<log_dir>/<task>/runs/<stamp>``."""
    (run,) = (log_dir / task / "runs").iterdir()
    return run


def scores(run: Path, stage: str) -> dict[str, float]:
    """The confusion-matrix scores of ``stage`` in ``<run>/metrics.csv``: mIoU, aAcc and every per-class IoU
    (NaN for a class absent from both ground truth and prediction), from the row that has them."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(f"{stage}/mIoU")]
    assert len(rows) == 1, rows
    names = [k for k in rows[0] if k in (f"{stage}/mIoU", f"{stage}/aAcc") or k.startswith(f"{stage}/IoU/")]
    assert len(names) > 3, names
    return {k: float(rows[0][k] or "nan") for k in names}


def assert_same_scores(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for key in a:  # exact: the same matrix gives the same float32 values; NaN only where both are NaN
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), (key, a[key], b[key])


def labelled_pixels(compose_cfg: Any, split: str) -> int:
    """How many pixels of ``split`` carry a label other than the ignore index: what a confusion matrix
    counting every sample exactly once must sum to."""
    from hydra.utils import instantiate

    datamodule = instantiate(compose_cfg(overrides=ODD).data)
    datamodule.setup("validate" if split == "val" else "test")
    dataset = datamodule.datasets[split]
    return sum(int((dataset[i]["mask"] != datamodule.ignore_index).sum()) for i in range(len(dataset)))


@pytest.mark.slow
def test_ddp_evaluation_equals_one_process(compose_cfg, tmp_path: Path) -> None:
    """Two processes score exactly what one does, on splits of odd length: ``train.py trainer=ddp_cpu`` (its
    validation and its test of the best checkpoint) and ``eval.py trainer=ddp_cpu`` against eval's task in
    one process (this one) on the same checkpoint. Compared bit for bit on the confusion matrix and exactly on every
    score of metrics.csv; the matrix also sums to the split's labelled pixels (no image repeated or lost).
    The loss (each batch's mean, weighted by its images, summed over the processes) equals one process's up to
    how the images are grouped into batches (per-pixel means of other groups: 0.06 % here); Lightning's own
    sync_dist mean was 25 % off (3 + 2 images: it rounds 5 / 2 down)."""
    trained = run_script("train.py", "trainer=ddp_cpu", "trainer.max_epochs=1", *ODD, SAVE_CONFMAT,
                         f"paths.log_dir={tmp_path / 'ddp_train'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = only_run(tmp_path / "ddp_train", "train")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in trained.stdout + trained.stderr

    def evaluate(trainer: str, split: str) -> Path:
        ckpt = run / "checkpoints" / ("last.ckpt" if split == "val" else "best.ckpt")  # the weights fit scored
        overrides = [f"ckpt_path={ckpt}", f"split={split}", *ODD, SAVE_CONFMAT]
        out = tmp_path / f"{trainer}_{split}"
        if trainer == "cpu":  # one process: in this one (the entry point's task, without its start-up cost)
            evaluate_task(compose_cfg("eval", ["trainer=cpu", *overrides], output_dir=out))
            return out
        result = run_script("eval.py", f"trainer={trainer}", *overrides, f"paths.log_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        return only_run(out, "eval")

    one_val, ddp_val, one_test = evaluate("cpu", "val"), evaluate("ddp_cpu", "val"), evaluate("cpu", "test")

    for stage, reference, others in (("val", one_val, [run, ddp_val]), ("test", one_test, [run])):
        expected = torch.load(reference / f"confmat_{stage}.pt", weights_only=True)
        assert int(expected.sum()) == labelled_pixels(compose_cfg, stage)
        for other in others:
            assert torch.equal(torch.load(other / f"confmat_{stage}.pt", weights_only=True), expected), other
            assert_same_scores(scores(other, stage), scores(reference, stage))
            assert loss(other, stage) == pytest.approx(loss(reference, stage), rel=1e-2), other


def loss(run: Path, stage: str) -> float:
    """``<stage>/loss`` of the run's metrics.csv (one row has it)."""
    with open(run / "metrics.csv") as f:
        (value,) = [float(r[f"{stage}/loss"]) for r in csv.DictReader(f) if r.get(f"{stage}/loss")]
    return value


# ------------------------------------------------------------------------------------------ scripts/gpu_check.py


@pytest.fixture(scope="module")
def gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", PROJECT_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_checks_imports_and_exits_0(gpu_check, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU-only path, also on a GPU machine
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "No CUDA device" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[:1] in
            [[name] for name in gpu_check.CHECKS]}
    assert rows == {"imports": "ok", **{name: "skip" for name in gpu_check.CHECKS[1:]}}


def test_gpu_check_exits_1_on_a_failed_check(gpu_check, monkeypatch, capsys) -> None:
    def broken() -> str:
        raise ImportError("no module named 'something'")

    monkeypatch.setattr(gpu_check, "check_imports", broken)
    assert gpu_check.main([]) == 1
    assert "imports          FAIL   ImportError: no module named 'something'" in capsys.readouterr().out


def test_gpu_check_loss_row_on_a_small_shape(gpu_check) -> None:
    """The loss check's own arithmetic (parity, ratios), on the CPU and a small shape."""
    figure = gpu_check.check_loss("2x4x8x8:32x32", device="cpu")
    assert figure.startswith("2x4x8x8:32x32: rel diff loss") and "time x" in figure and "peak mem x" in figure


@pytest.mark.slow
def test_gpu_check_entry_point_checks_on_cpu(gpu_check, tmp_path: Path) -> None:
    """The subprocess checks' plumbing (overrides, run folders, metrics, logs) with the CPU in place of CUDA:
    a fit, then slide + flip evaluation of its checkpoint."""
    figure, run = gpu_check.fit(tmp_path, "fit-cpu", 300, trainer="cpu")
    assert figure.startswith("val/mIoU ") and (tmp_path / "fit-cpu.log").is_file()
    figure = gpu_check.evaluate_slide_flip(tmp_path, run / "checkpoints" / "best.ckpt", 300, trainer="cpu")
    assert figure.startswith("val/mIoU ") and "48x48 windows" in figure
    with pytest.raises(RuntimeError, match="log: "):  # a failing entry point names its log
        gpu_check.fit(tmp_path, "fit-bad", 300, "loss=nope", trainer="cpu")


def test_gpu_check_sync_row_reads_its_probe_line(gpu_check) -> None:
    """The syncs row's verdict from SyncProbe's line: 0 synchronising calls passes, any other count fails
    naming where the first came from."""
    from gpu_probes import sync_figure

    assert sync_figure("x\nGPU_CHECK_SYNCS steps=20 syncs=0 first=-\n") == \
        "0 synchronising CUDA calls in 20 non-logging training steps"
    with pytest.raises(RuntimeError, match=r"2 synchronising CUDA call\(s\) in 20 .*first at nan_guard.py:9"):
        sync_figure("GPU_CHECK_SYNCS steps=20 syncs=2 first=nan_guard.py:9")
    with pytest.raises(RuntimeError, match="no GPU_CHECK_SYNCS line"):
        sync_figure("nothing")
