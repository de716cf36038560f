"""The tracking loggers with today's releases (seg_template/tracking_loggers.py): one short real training per
logger, read back through each library's own API — metrics, hyperparameters, validation images — plus the
errors a store can give, W&B's offline choice, TensorBoard's HParams summary and the README's `mlflow ui` line.
The mlflow / wandb / tensorboard tests skip, saying so, when the package is missing (`.[loggers]` installs them).
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from seg_template.errors import ConfigError
from seg_template.paths import CONFIG_DIR, PROJECT_ROOT
from seg_template.tracking_loggers import CUT, WandbLogger, mlflow_params
from seg_template.train import train
from tests.helpers import TINY

#: two epochs of the tiny synthetic run, two small grids each validation, no test, no reports
RUN = [*TINY, "trainer.max_epochs=2", "test=false", "callbacks.reports=null", "callbacks.val_images.num_images=2",
       "callbacks.val_images.tile_size=32"]


def grids(run: Path) -> dict[str, np.ndarray]:
    """The validation grids the run wrote to ``<run>/images/``, by file name."""
    return {p.name: np.asarray(Image.open(p)) for p in sorted((run / "images").glob("*.png"))}


# ------------------------------------------------------------------------------------------------ MLflow
def test_mlflow_run_reads_back(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow", reason="needs the optional package mlflow (.[loggers])")
    from mlflow.tracking import MlflowClient

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's default artifact root is ./mlruns of the current folder
    cfg = compose_cfg(overrides=[*RUN, "logger=mlflow"], output_dir=tmp_path / "run")
    _, objects = train(cfg)
    (logger,) = objects["loggers"]
    uri = cfg.logger.mlflow.tracking_uri
    assert uri == f"sqlite:////{tmp_path.relative_to('/')}/run/logs/mlflow/mlflow.db"
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    history = client.get_metric_history(run.info.run_id, "val/mIoU")
    print("MLflow:", run.info.status, {k: run.data.params[k] for k in ("optimizer/lr", "loss/main/_target_")},
          [(m.step, round(m.value, 4)) for m in history], [a.path for a in client.list_artifacts(run.info.run_id,
                                                                                               "images")])
    assert run.info.status == "FINISHED" and len(history) == 2
    assert history[-1].value == pytest.approx(float(objects["trainer"].callback_metrics["val/mIoU"]))
    assert run.data.params["optimizer/lr"] == str(cfg.optimizer.lr)
    assert run.data.params["loss/main/_target_"] == "seg_template.losses.CrossEntropy"
    assert run.data.params["data/class_names"].startswith("['background'")
    assert run.data.tags["output_dir"] == str(tmp_path / "run")
    # the grids arrive as artifacts under logs/mlflow/artifacts/, pixel for pixel; nothing in the current folder
    wrote = grids(tmp_path / "run")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "images")] == [f"images/{n}" for n in wrote]
    folder = Path(client.download_artifacts(run.info.run_id, "images", str(tmp_path / "down")))
    for name, pixels in wrote.items():
        assert np.array_equal(np.asarray(Image.open(folder / name)), pixels)
    assert run.info.artifact_uri.startswith(str(tmp_path / "run" / "logs" / "mlflow" / "artifacts" / "train"))
    assert list(elsewhere.iterdir()) == []


@pytest.fixture(scope="module")
def mlflow_database(tmp_path_factory) -> Path:
    """A database the current MLflow made (its tables cost ~2 s: made once, copied by each test)."""
    pytest.importorskip("mlflow", reason="needs the optional package mlflow (.[loggers])")
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}")
    return path


def mlflow_logger(compose_cfg, tmp_path: Path, log_dir: Path | None = None, *overrides: str):
    """``logger.mlflow`` of train.yaml with ``overrides`` as train.py builds it (through Hydra), its files in
    ``log_dir`` (``tmp_path/logs`` when None)."""
    cfg = compose_cfg(overrides=["logger=mlflow", *overrides], output_dir=tmp_path)
    if log_dir is not None:
        cfg.paths.log_dir = str(log_dir)
    return instantiate(cfg.logger.mlflow), cfg


def config_error(compose_cfg, tmp_path: Path, log_dir: Path | None = None, *overrides: str) -> str:
    """The ``ConfigError`` that building ``logger.mlflow`` gives (Hydra wraps it: the entry points find it)."""
    with pytest.raises(Exception) as info:
        mlflow_logger(compose_cfg, tmp_path, log_dir, *overrides)
    error = info.value if isinstance(info.value, ConfigError) else info.value.__cause__
    assert isinstance(error, ConfigError), repr(info.value)
    return str(error)


def test_mlflow_stores_it_cannot_open_name_the_option(compose_cfg, tmp_path: Path, mlflow_database: Path,
                                                      monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    old = tmp_path / "old" / "mlflow" / "mlflow.db"  # a database an older MLflow wrote
    old.parent.mkdir(parents=True)
    old.write_bytes(mlflow_database.read_bytes())
    with sqlite3.connect(old) as db:
        db.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")  # an MLflow 1.x revision
    message = config_error(compose_cfg, tmp_path, tmp_path / "old")
    assert message.startswith(f"logger.mlflow.tracking_uri=sqlite:///{old}: MlflowException: Detected out-of-date "
                              "database schema (found version 0a8213491aaa")  # MLflow's own words, then ours
    assert f"`mlflow db upgrade sqlite:///{old}`" in message
    # the folder cannot be made: a file stands where logs/ would be
    (tmp_path / "file").write_text("not a folder")
    message = config_error(compose_cfg, tmp_path, tmp_path / "file")
    assert "cannot create the folder of its database (FileExistsError" in message or "NotADirectoryError" in message
    # the folder store of the old config: MLflow 3's refusal, and the way out
    message = config_error(compose_cfg, tmp_path, None, f"logger.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}")
    assert "filesystem tracking backend" in message and "mlflow migrate-filestore" in message


def test_mlflow_takes_long_and_odd_hyperparameters(compose_cfg, tmp_path: Path, mlflow_database: Path) -> None:
    (tmp_path / "logs" / "mlflow").mkdir(parents=True)
    (tmp_path / "logs" / "mlflow" / "mlflow.db").write_bytes(mlflow_database.read_bytes())
    logger, _ = mlflow_logger(compose_cfg, tmp_path)
    weights = [round(0.1 + i / 1000, 6) for i in range(1500)]  # ADE20K-sized class weights: ~12000 characters
    logger.log_hyperparams({"data": {"class_weights": weights}, "odd key:(1)": 1, "a//./b/": 2, "none": None})
    params = logger.experiment.get_run(logger.run_id).data.params
    assert len(params["data/class_weights"]) == 6000 and params["data/class_weights"].endswith(CUT)
    assert params["data/class_weights"].startswith(str(weights[:10])[:-1])
    assert (params["odd key__1_"], params["a/b"], params["none"]) == ("1", "2", "None")
    assert mlflow_params({"x" * 300: "y" * 30}, 20, 250) == {"x" * 250: "y" * 11 + CUT}


# ------------------------------------------------------------------------------------------------ W&B
def wandb_records(path: Path) -> Iterator[object]:
    """The records of a run's ``.wandb`` file as ``wandb.proto.wandb_internal_pb2.Record``s.

    wandb 0.31 ships no reader of its own (``wandb.sdk.internal.datastore`` is gone with the Go core): the file
    is ``:W&B`` + a 2-byte magic + a version byte, then LevelDB-log records (32 KiB blocks; each record a 7-byte
    header: CRC, little-endian length, type full / first / middle / last) holding the protobufs. The calling
    test skips, saying why, when the proto module or that header is gone."""
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as err:
        pytest.skip(f"wandb.proto.wandb_internal_pb2 is gone ({err}): no way to read the offline run")
    data, block = path.read_bytes(), 32768
    if data[:4] != b":W&B" or data[6] != 0:
        pytest.skip(f"{path.name} starts with {data[:7]!r}, not the W&B log header this test reads")
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zeros up to the block's end: padding
            pos += left
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pieces = payload if kind in (1, 2) else pieces + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def items(entries) -> dict[str, object]:
    """W&B's ``{key, nested_key, value_json}`` items as ``{key: value}`` (nested keys joined with ``/``)."""
    return {(e.key or "/".join(e.nested_key)): json.loads(e.value_json) for e in entries}


def test_wandb_offline_run_reads_back(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb", reason="needs the optional package wandb (.[loggers])")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written to the home folder
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    cfg = compose_cfg(overrides=[*RUN, "logger=wandb"], output_dir=tmp_path / "run")
    _, objects = train(cfg)
    run_dir = Path(objects["loggers"][0].experiment.dir).parent
    wandb.finish()
    assert run_dir.parent == tmp_path / "run" / "wandb" and run_dir.name.startswith("offline-run-")
    history, config = [], {}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(items(record.history.item))
        elif kind == "config":
            config.update(items(record.config.update))
    miou = [row["val/mIoU"] for row in history if "val/mIoU" in row]
    images = [row for row in history if row.get("val/predictions/_type") == "images/separated"]
    print("W&B:", len(history), "history rows; val/mIoU", [round(v, 4) for v in miou], "; config lr",
          config["optimizer"]["lr"], "; images", [row["val/predictions/filenames"] for row in images])
    assert len(miou) == 2 and miou[-1] == pytest.approx(float(objects["trainer"].callback_metrics["val/mIoU"]))
    assert config["optimizer"]["lr"] == cfg.optimizer.lr
    assert config["loss"]["main"]["_target_"] == "seg_template.losses.CrossEntropy"
    assert config["model/params/total"] > 0 and config["num_classes"] == 6  # ours, and the module's own
    wrote = list(grids(tmp_path / "run").values())
    assert len(images) == len(wrote) == 2
    for row, pixels in zip(images, wrote, strict=True):
        (name,) = row["val/predictions/filenames"]
        assert np.array_equal(np.asarray(Image.open(run_dir / "files" / name).convert("RGB")), pixels)


@pytest.fixture
def no_wandb_credentials(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="needs the optional package wandb (.[loggers])")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def test_wandb_is_offline_without_credentials(no_wandb_credentials, tmp_path: Path, monkeypatch) -> None:
    assert WandbLogger(save_dir=str(tmp_path))._wandb_init["mode"] == "offline"
    assert "mode" not in WandbLogger(save_dir=str(tmp_path), offline=False)._wandb_init
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert "mode" not in WandbLogger(save_dir=str(tmp_path))._wandb_init  # `wandb login` wrote the key
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert "mode" not in WandbLogger(save_dir=str(tmp_path))._wandb_init
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "online")  # the environment decides: wandb reads it
    assert "mode" not in WandbLogger(save_dir=str(tmp_path))._wandb_init
    with pytest.raises(ConfigError, match="logger.wandb.log_model=True needs an online run"):
        WandbLogger(save_dir=str(tmp_path), offline=True, log_model=True)
    with pytest.raises(ConfigError, match="logger.wandb.offline must be true, false or null"):
        WandbLogger(save_dir=str(tmp_path), offline="yes")


def test_wandb_finishes_an_earlier_jobs_run(no_wandb_credentials, tmp_path: Path, monkeypatch) -> None:
    """A sweep's jobs run one after another in one process: Lightning would go on logging into job 0's run."""
    import wandb

    finished, started = [], object()

    class EarlierRun:
        def finish(self) -> None:
            finished.append(self)
            monkeypatch.setattr(wandb, "run", None)

    monkeypatch.setattr(wandb, "run", EarlierRun())
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started)
    assert WandbLogger(save_dir=str(tmp_path)).experiment is started and len(finished) == 1


# ------------------------------------------------------------------------------------------------ README
def test_the_readme_opens_the_database_the_config_writes(compose_cfg) -> None:
    """`mlflow ui --backend-store-uri ...` in the README and in configs/logger/mlflow.yaml, run from the project
    root, opens the database a default run writes to (no mlflow needed: the config is composed, not built)."""
    cfg = compose_cfg(overrides=["logger=mlflow"])
    default = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml"))
    cfg.paths.log_dir = default["log_dir"]  # ${paths.root_dir}/logs: the fixture moved it to a temporary folder
    root = Path(cfg.paths.root_dir)
    uri = cfg.logger.mlflow.tracking_uri
    assert uri.startswith("sqlite:////")  # an absolute path: four slashes
    expected = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).relative_to(root)}"
    artifacts = Path(cfg.logger.mlflow.artifact_location).parent.relative_to(root)
    readme = (PROJECT_ROOT / "README.md").read_text()
    for text in (readme, (CONFIG_DIR / "logger" / "mlflow.yaml").read_text()):
        assert re.findall(r"mlflow ui --backend-store-uri (\S+)", text) == [expected]
    assert f"{artifacts}/" in readme


def test_an_mlflow_server_that_does_not_answer_is_named_at_once() -> None:
    """An http tracking URI nobody answers: MLflow retried for over four minutes, then advised about databases;
    now a few seconds and one message saying to start a server."""
    pytest.importorskip("mlflow")
    import time

    from seg_template.errors import ConfigError
    from seg_template.tracking_loggers import MLFlowLogger

    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"tracking_uri=http://127\.0\.0\.1:9: no MLflow server answers there"):
        MLFlowLogger(tracking_uri="http://127.0.0.1:9", experiment_name="x")
    assert time.monotonic() - start < 10
