"""TensorBoard's HParams tab compares the jobs of a sweep: each run writes its options, swept values and lr as
hyperparameters, and val/mIoU, test/mIoU as the metrics (seg_template.tracking_loggers.TensorBoardLogger, called
by seg_template.build.log_hyperparameters). Read back with TensorBoard's own event reader and hparams protos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from seg_template.build import COMPARED_KEYS
from seg_template.train import train
from tests.helpers import TINY, importable, run_script


def hparams_view(folder: Path) -> tuple[dict[str, Any], list[str], dict[str, list[float]]]:
    """``(hyperparameters, metric tags, scalars by tag)`` of the TensorBoard run in ``folder``, as the HParams
    plugin reads them (its session start info and experiment summaries, the metrics' scalars)."""
    pytest.importorskip("tensorboard", reason="needs the optional package tensorboard")
    from google.protobuf.json_format import MessageToDict
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    session = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    params = {key: MessageToDict(value) for key, value in session.hparams.items()}
    tags = [info.name.tag for info in experiment.metric_infos]
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert sorted(params) == sorted(info.name for info in experiment.hparam_infos)
    return params, tags, scalars


def test_a_run_writes_its_hparams_view(compose_cfg, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="needs the optional package tensorboard")
    cfg = compose_cfg(overrides=[*TINY, "trainer.max_epochs=2", "logger=tensorboard", "callbacks.reports=null",
                                 "callbacks.val_images=null"], output_dir=tmp_path)
    train(cfg)
    params, tags, scalars = hparams_view(tmp_path / "tensorboard")
    print("TensorBoard HParams:", params, tags, {t: scalars[t] for t in tags})
    # the keys every run shows (no Hydra run here, so no choices: the sweep test below has them)
    assert {key: params[key] for key in COMPARED_KEYS} == {"optimizer.lr": 0.003, "optimizer.weight_decay": 0.01,
                                                            "data.batch_size": 4, "trainer.max_epochs": 2, "seed": 42}
    assert tags == ["val/mIoU", "test/mIoU"]
    assert len(scalars["val/mIoU"]) == 2 and len(scalars["test/mIoU"]) == 1


@pytest.mark.slow
def test_a_sweeps_jobs_line_up_in_the_hparams_tab(tmp_path: Path) -> None:
    """`python train.py -m loss=ce,ohem optimizer.lr=...`: one HParams row per job, with its loss, its lr and
    its final val/mIoU. With mlflow installed the jobs also log to one MLflow database, one after another."""
    pytest.importorskip("tensorboard", reason="needs the optional package tensorboard")
    loggers = "[csv,tensorboard,mlflow]" if importable("mlflow") else "[csv,tensorboard]"
    result = run_script("train.py", "-m", "loss=ce,ohem", "optimizer.lr=0.002", f"logger={loggers}", "trainer=cpu",
                        *TINY, "trainer.max_epochs=1", "test=false", "callbacks.reports=null",
                        "callbacks.val_images.num_images=1", "callbacks.val_images.tile_size=32",
                        f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [job.name for job in jobs] == ["0_loss-ce", "1_loss-ohem"]
    for job, loss in zip(jobs, ["ce", "ohem"], strict=True):
        params, tags, scalars = hparams_view(job / "tensorboard")
        assert params["loss"] == loss and params["optimizer.lr"] == 0.002 and params["model"] == "small"
        assert tags == ["val/mIoU", "test/mIoU"] and len(scalars["val/mIoU"]) == 1
    if importable("mlflow"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
        print("MLflow runs:", [(r.data.params["choices/loss"], r.info.status, r.data.metrics) for r in runs])
        assert sorted(r.data.params["choices/loss"] for r in runs) == ["ce", "ohem"]
        assert all(r.info.status == "FINISHED" and "val/mIoU" in r.data.metrics for r in runs)
        assert sorted(r.data.tags["output_dir"] for r in runs) == [str(job) for job in jobs]
