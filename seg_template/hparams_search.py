"""Optuna searches that survive a crash, and a search space with parameters that only one loss has.

``python train.py -m hparams_search=optuna`` (``configs/hparams_search/optuna.yaml``, the ``optuna`` extra)
runs Hydra's Optuna sweeper through ``ResumableOptunaSweeper`` (``hydra_plugins/seg_template_sweepers``:
Hydra takes sweepers only from that namespace), which calls :func:`prepare_sweep` first.

The plugin alone, with an SQLite ``storage`` and a ``study_name``, keeps finished trials in the database,
but started again after a crash it cannot open a database in a sweep folder that does not exist yet, runs
``n_trials`` *more* trials, numbers its jobs from 0 again (into the folders of the first run) and, with a
seeded sampler, proposes the very parameters it already evaluated. With :func:`prepare_sweep` the same
command continues the study instead.

Optuna is imported only inside the functions: the sweeper runs them, nothing else does.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


#: the parameters only one loss has: ``loss -> [(key, range key in the config, log scale)]``
LOSS_PARAMS: dict[str, list[tuple[str, str, bool]]] = {
    "ohem": [("loss.main.thresh", "ohem_thresh_range", False)],
    "focal": [("loss.main.gamma", "focal_gamma_range", False)],
    "ce_dice": [("loss.main.terms.1.weight", "dice_weight_range", True)],  # Dice's factor beside CE's 1
}
#: the ranges when the config gives none
_DEFAULT_RANGES = {"ohem_thresh_range": (0.5, 0.95), "focal_gamma_range": (0.5, 5.0),
                   "dice_weight_range": (0.1, 2.0)}


def loss_params(cfg: DictConfig, trial: optuna.trial.Trial) -> None:
    """``hydra.sweeper.custom_search_space``: search each loss's own parameter only in the trials of that loss.

    ``loss.main.thresh`` exists only in ``configs/loss/ohem.yaml`` (and is null in focal.yaml),
    ``loss.main.gamma`` only in focal.yaml, the Dice factor ``loss.main.terms.1.weight`` only in ce_dice.yaml
    (:data:`LOSS_PARAMS`), so a flat search space cannot hold them (the other losses would fail on an unknown
    key, and a value drawn for them would be noise to TPE). Optuna's define-by-run trials allow conditional
    parameters: each is drawn here, after the flat ones, within the config's range for it
    (``ohem_thresh_range``, ``focal_gamma_range``, ``dice_weight_range``: [low, high]). The loss is the trial's
    drawn ``loss``, a fixed ``loss=`` on the command line, or the config's default; a parameter fixed on the
    command line is not drawn.
    """
    choices = cfg.hydra.runtime.choices if "hydra" in cfg else {}
    loss = trial.params.get("loss", trial.user_attrs.get("loss", choices.get("loss")))
    for key, range_key, log_scale in LOSS_PARAMS.get(loss, []):
        if key in trial.user_attrs:  # fixed on the command line
            continue
        low, high = cfg.get(range_key) or _DEFAULT_RANGES[range_key]
        trial.suggest_float(key, float(low), float(high), log=log_scale)


#: the name ``custom_search_space`` had when OHEM's threshold was the only conditional parameter
ohem_thresh = loss_params


def prepare_sweep(impl: Any) -> None:
    """Before the plugin's ``sweep``: continue the study ``impl`` names, if it has one in a storage.

    ``impl`` is the plugin's ``OptunaSweeperImpl`` (``sampler``, ``storage``, ``study_name``, ``n_trials``,
    ``job_idx``). The folder of an SQLite storage is created (the plugin opens the database before any job
    has created the sweep folder). When the study has trials: finished ones (complete, failed, pruned) count
    towards ``n_trials`` and are not run again; running ones were interrupted (the process was killed, or
    Ctrl-C) and are marked failed, their parameters queued to run again first; job numbers continue from
    the study's trial count (job folder ``<n>`` is trial ``<n>``); the sampler is re-seeded, so that a
    seeded sampler does not propose the parameters of the first run again.
    """
    storage = str(impl.storage)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    study = _load_study(impl)
    if study is None or not study.trials:
        return
    finished = [t for t in study.trials if t.state.is_finished()]
    queued = fail_running_trials(impl, requeue=True, study=study)
    left = max(impl.n_trials - len(finished), 0)
    log.info("Continuing study '%s' (%s): %d finished trial(s) kept, %d to run of n_trials=%d%s",
             impl.study_name, storage, len(finished), left, impl.n_trials,
             "" if left else " (a larger hydra.sweeper.n_trials=... runs more)")
    impl.n_trials = left
    impl.job_idx = len(study.trials) - queued  # the queued trials take the next numbers, in order
    if hasattr(impl.sampler, "reseed_rng"):
        impl.sampler.reseed_rng()


def fail_running_trials(impl: Any, requeue: bool, study: optuna.study.Study | None = None) -> int:
    """Mark the running trials of ``impl``'s study failed; with ``requeue``, queue their parameters to run
    again. Returns how many were queued."""
    from optuna.trial import TrialState

    study = study or _load_study(impl)
    running = [t for t in study.trials if t.state == TrialState.RUNNING] if study is not None else []
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
        if requeue:
            with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.x
                warnings.simplefilter("ignore")
                study.enqueue_trial(trial.params)
            log.warning("Trial %d was still running when the sweep stopped: marked failed; its parameters run "
                        "again first %s", trial.number, trial.params)
    return len(running) if requeue else 0


def _load_study(impl: Any) -> optuna.study.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=impl.study_name, storage=impl.storage, sampler=impl.sampler)
    except KeyError:  # no study of that name yet (Optuna 2.x: "Record does not exist")
        return None


def stop_on_repeated_failures(launch: Callable[..., Sequence[Any]], limit: int = 3) -> Callable[..., Sequence[Any]]:
    """Wrap a Hydra launcher's ``launch(job_overrides, initial_job_idx)``: when the first ``limit`` jobs that
    this command runs all fail, raise the last one's error instead of going on. A failed trial is otherwise
    recorded and the search continues (``max_failure_rate: 1.0``: an extreme learning rate may diverge, a
    large model run out of memory), but a mistake in the config or the data fails every trial alike."""
    from hydra.core.utils import JobStatus

    counts = {"completed": 0, "failed": 0}

    def launch_checked(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        returns = launch(job_overrides, initial_job_idx)
        for ret in returns:
            counts["completed" if ret.status == JobStatus.COMPLETED else "failed"] += 1
        if not counts["completed"] and counts["failed"] >= limit:
            log.error("The first %d trials failed alike: the search stops (the same command continues it)",
                      counts["failed"])
            returns[-1].return_value  # noqa: B018 - raises the job's exception
        return returns

    return launch_checked
