"""Lightning's TensorBoard, MLflow and W&B loggers, with what a run of this template needs from each:

- :class:`TensorBoardLogger` also writes TensorBoard's HParams summary (:meth:`~TensorBoardLogger.log_hparams_view`):
  a few flat scalars per run (the options chosen, the swept values, lr...) and the metrics to compare them by
  (``val/mIoU``: its last value, the final epoch's; ``test/mIoU``), so the jobs of a sweep line up in the
  HParams tab.
- :class:`MLFlowLogger` opens a database store (``sqlite:///<folder>/mlflow.db``: MLflow 3 refuses its old
  ``./mlruns`` folder store), creates its folder first and makes local paths absolute (Hydra may run a job
  elsewhere); a store MLflow cannot open (a database of another MLflow version, a folder it cannot write, a file
  store) is a ``ConfigError`` naming ``logger.mlflow.tracking_uri``, with MLflow's own message. Parameters keep
  MLflow's length limit (6000 characters, Lightning cuts at 250) and only the characters it allows in keys.
- :class:`WandbLogger` logs offline when no W&B credentials are found (``offline: null``; ``WANDB_MODE`` wins),
  finishes a run an earlier job of the same process left open (a sweep's jobs run one after another), and turns
  a failed start into a ``ConfigError`` naming ``logger.wandb.offline``.

mlflow and wandb are imported only when their logger is built.
"""

from __future__ import annotations

import logging
import netrc
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger
from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from seg_template.errors import ConfigError

log = logging.getLogger(__name__)

#: what `pip install` brings the optional loggers
INSTALL = 'pip install -e ".[loggers]"'


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger; ``hparams_metrics`` name the scalars the HParams tab compares runs by."""

    def __init__(self, *args: Any, hparams_metrics: Sequence[str] = ("val/mIoU", "test/mIoU"),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hparams_metrics = [str(name) for name in hparams_metrics]

    @rank_zero_only
    def log_hparams_view(self, params: Mapping[str, Any]) -> None:
        """Write the HParams summary of this run: ``params`` (flat: name -> int, float, str or bool; others are
        left out) and :attr:`hparams_metrics`, whose values TensorBoard reads from their scalars (the last one
        logged). Written once, before fit: the metrics' scalars come as they are logged."""
        from lightning_fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE

        if _TENSORBOARD_AVAILABLE:
            from torch.utils.tensorboard.summary import hparams
        else:
            from tensorboardX.summary import hparams  # type: ignore[no-redef]
        scalars = {key: value for key, value in params.items() if isinstance(value, int | float | str | bool)}
        writer = self.experiment._get_file_writer()  # as Lightning's own log_hyperparams writes them
        for summary in hparams(scalars, dict.fromkeys(self.hparams_metrics, 0.0)):
            writer.add_summary(summary)
        writer.flush()


#: MLflow's limits on a parameter (mlflow.utils.validation), in case that module moves
PARAM_VALUE_LIMIT, PARAM_KEY_LIMIT = 6000, 250
CUT = " ...(cut)"


def _mlflow_limits() -> tuple[int, int]:
    try:
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH
    except ImportError:
        return PARAM_VALUE_LIMIT, PARAM_KEY_LIMIT
    return int(MAX_PARAM_VAL_LENGTH), int(MAX_ENTITY_KEY_LENGTH)


def mlflow_params(params: Mapping[str, Any], value_limit: int = PARAM_VALUE_LIMIT,
                  key_limit: int = PARAM_KEY_LIMIT) -> dict[str, str]:
    """``params`` (flat) as MLflow takes them: keys of letters, digits, ``_ - . / space`` only (others become
    ``_``; no empty, ``.`` or ``..`` path parts), at most ``key_limit`` long; values as text, a longer one cut to
    ``value_limit`` characters ending in ``...(cut)``."""
    taken: dict[str, str] = {}
    for key, value in params.items():
        name = re.sub(r"[^\w.\- /]", "_", str(key))
        name = "/".join(part for part in name.split("/") if part.strip() not in ("", ".", "..")) or "_"
        name = posixpath.normpath(name)[:key_limit].rstrip("/")
        text = str(value)
        if len(text) > value_limit:
            text = text[:value_limit - len(CUT)] + CUT
        taken[name] = text
    return taken


def _local_path(uri: str) -> Path | None:
    """The file or folder a ``sqlite:///`` URI or a local path names; None for a server (``http://``...)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if "://" not in uri and not uri.startswith(("file:", "sqlite:")):
        return Path(uri)
    return None


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger on a database store (see the module docstring). ``tracking_uri`` and
    ``artifact_location`` as in Lightning; a relative path in either is made absolute here (from the current
    folder, where the run was started)."""

    def __init__(self, *args: Any, tracking_uri: str | None = None, artifact_location: str | None = None,
                 **kwargs: Any) -> None:
        try:
            import mlflow  # noqa: F401 - only asked whether it is there
        except ImportError as err:
            raise ConfigError(f"logger=mlflow needs the mlflow package: {INSTALL}") from err
        uri = str(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "")
        if not uri:
            raise ConfigError("logger.mlflow.tracking_uri is empty: give a database, e.g. "
                              "sqlite:////abs/path/mlflow.db (configs/logger/mlflow.yaml writes one under logs/)")
        database = _local_path(uri)
        if database is not None and uri.startswith("sqlite:///"):
            database = database.absolute()
            uri = f"sqlite:///{database}"
            try:
                database.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"logger.mlflow.tracking_uri={uri}: cannot create the folder of its database "
                                  f"({type(err).__name__}: {err}); pick a writable place") from err
        if uri.startswith(("http://", "https://")):
            from seg_template.models.download import host_reachable

            if not host_reachable(uri, timeout=5.0):  # MLflow itself retries for minutes before failing
                raise ConfigError(f"logger.mlflow.tracking_uri={uri}: no MLflow server answers there; start one "
                                  "(`mlflow server --host <host> --port <port>`) or leave the option out to log to "
                                  "the SQLite database under logs/mlflow/")
        if artifact_location and (local := _local_path(str(artifact_location))) is not None:
            artifact_location = str(local.absolute())
        self._uri_option = uri
        try:
            super().__init__(*args, tracking_uri=uri, artifact_location=artifact_location, **kwargs)
        except Exception as err:  # noqa: BLE001 - any store failure becomes one message naming the option
            raise self._store_error(err) from err

    def _store_error(self, err: BaseException) -> ConfigError:
        """A ``ConfigError`` naming ``logger.mlflow.tracking_uri``, with MLflow's message and what to do."""
        message = str(getattr(err, "message", "") or err).strip()
        uri = self._uri_option
        if "out-of-date database schema" in message or "mlflow db upgrade" in message:
            fix = (f"a database of an older MLflow: back it up, then `mlflow db upgrade {uri}`; or start a new "
                   "one with logger.mlflow.tracking_uri=sqlite:////<path>/mlflow.db")
        elif uri.startswith("file:") or "filesystem tracking backend" in message:
            fix = ("MLflow 3 refuses folder stores: use a database (the default, configs/logger/mlflow.yaml); "
                   "old runs move over with `mlflow migrate-filestore --source <folder> --target <sqlite uri>`")
        else:
            fix = ("MLflow cannot open or write it: check that it is an MLflow database in a writable folder, "
                   "or point logger.mlflow.tracking_uri at a new sqlite:////<path>/mlflow.db")
        return ConfigError(f"logger.mlflow.tracking_uri={uri}: {type(err).__name__}: {message}\n  {fix}")

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``MlflowClient``; the first call creates the experiment and the run (a failing store: a
        ``ConfigError``, as in ``__init__``)."""
        if self._initialized:
            return self._mlflow_client
        try:
            return super().experiment
        except Exception as err:  # noqa: BLE001 - e.g. a read-only database on its first write
            raise self._store_error(err) from err

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """The flattened ``params`` as MLflow parameters (:func:`mlflow_params`), 100 to a request."""
        from mlflow.entities import Param

        value_limit, key_limit = _mlflow_limits()
        flat = mlflow_params(_flatten_dict(_convert_params(params)), value_limit, key_limit)
        entries = [Param(key=key, value=value) for key, value in flat.items()]
        for start in range(0, len(entries), 100):
            self.experiment.log_batch(run_id=self.run_id, params=entries[start:start + 100],
                                      **self._log_batch_kwargs)


def wandb_credentials() -> str | None:
    """Where a W&B API key would come from (``WANDB_API_KEY``, an identity token file, or the netrc entry of
    ``WANDB_BASE_URL``'s host, as ``wandb login`` writes it), or None when there is none."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "WANDB_IDENTITY_TOKEN_FILE"
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    files = [os.environ["NETRC"]] if os.environ.get("NETRC") else [os.path.expanduser(f"~/{n}")
                                                                   for n in (".netrc", "_netrc")]
    for file in files:
        try:
            if os.path.isfile(file) and netrc.netrc(file).authenticators(host):
                return file
        except (OSError, netrc.NetrcParseError):
            continue
    return None


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger; ``offline``: true, false, or null = offline unless W&B credentials are found
    (:func:`wandb_credentials`). A ``WANDB_MODE`` in the environment decides instead of null."""

    def __init__(self, *args: Any, offline: bool | None = None, log_model: bool | str = False,
                 **kwargs: Any) -> None:
        if offline is not None and not isinstance(offline, bool):
            raise ConfigError(f"logger.wandb.offline must be true, false or null (offline without credentials), "
                              f"got {offline!r}")
        try:
            import wandb  # noqa: F401 - only asked whether it is there
        except ImportError as err:
            raise ConfigError(f"logger=wandb needs the wandb package: {INSTALL}") from err
        if offline is None and not os.environ.get("WANDB_MODE"):
            offline = wandb_credentials() is None
            if offline:
                log.info("W&B: no API key (WANDB_API_KEY, `wandb login`), so this run is logged offline under "
                         "its folder; upload it later with `wandb sync <run>/wandb/offline-run-*`")
        if offline and log_model:
            raise ConfigError(f"logger.wandb.log_model={log_model} needs an online run (offline: checkpoints stay "
                              "in <run>/checkpoints): set logger.wandb.offline=false and log in, or log_model=false")
        if offline:  # passed to wandb.init: Lightning's offline=true sets WANDB_MODE for the whole process
            kwargs["mode"] = "offline"
        super().__init__(*args, offline=False, log_model=log_model, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # wandb 0.31 warns about the setting, even unset
            self._wandb_init.pop("anonymous", None)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, started at the first call. A run still open in this process is an earlier job's (a
        sweep runs its jobs one after another): it is finished first, so that this job gets its own."""
        if self._experiment is not None:
            return self._experiment
        import wandb

        if wandb.run is not None and getattr(self, "_attach_id", None) is None:
            wandb.run.finish()
        try:
            return super().experiment
        except wandb.errors.Error as err:
            raise ConfigError(f"logger=wandb could not start a run ({type(err).__name__}: {err}); log in "
                              "(`wandb login`, WANDB_API_KEY) or log offline: logger.wandb.offline=true or "
                              "WANDB_MODE=offline") from err
