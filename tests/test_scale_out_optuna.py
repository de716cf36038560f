"""``python train.py -m hparams_search=optuna`` (the ``optuna`` extra) on tiny runs: a 3-trial TPE search, and
the same command continuing its study after the sweep was killed (seg_template/hparams_search.py)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from seg_template.paths import PROJECT_ROOT
from tests.helpers import TINY, run_script, skip_unless_importable

#: a tiny Optuna search of 3 trials; seed 1 makes TPE's first (random) proposals wce, ohem, ce
OPTUNA = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "seed=1", "trainer=cpu",
          "trainer.max_epochs=1", *TINY]


def import_optuna() -> Any:
    """``optuna``, or skip without the extra. SQLAlchemy 1.4 warns at import that Optuna 2.x's models would
    not work on SQLAlchemy 2.0: known, and why the extra pins sqlalchemy<2."""
    skip_unless_importable("optuna")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def skip_without_optuna() -> None:
    import_optuna()
    skip_unless_importable("hydra_plugins.hydra_optuna_sweeper")


def study_trials(sweep: Path) -> list[Any]:
    """The trials of the study ``optuna`` in ``<sweep>/optuna.db``, by number."""
    optuna = import_optuna()
    study = optuna.load_study(study_name="optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    return sorted(study.trials, key=lambda t: t.number)


def check_completed_trial(sweep: Path, trial: Any) -> None:
    """A complete trial's job ran in folder ``<number>`` with the trial's values, trained once, and returned
    its val/mIoU; ``loss.main.thresh`` was searched only if the trial's loss is OHEM."""
    job = sweep / str(trial.number)
    overrides = (job / ".hydra" / "overrides.yaml").read_text()
    for key, value in trial.params.items():
        assert f"{key}={value}" in overrides, (key, value, overrides)
    assert ("loss.main.thresh" in trial.params) == (trial.params["loss"] == "ohem"), trial.params
    with open(job / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("val/mIoU")]  # one epoch, trained once
    assert trial.value == pytest.approx(float(row["val/mIoU"]))


@pytest.mark.slow
def test_optuna_sweep_of_three_trials(tmp_path: Path) -> None:
    skip_without_optuna()
    from optuna.trial import TrialState

    result = run_script("train.py", *OPTUNA, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "train" / "optuna" / "optuna"  # <log_dir>/<task>/optuna/<name>: no time stamp
    trials = study_trials(sweep)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert {t.params["loss"] for t in trials} <= {"ce", "wce", "ohem", "dice", "ce_dice", "focal", "lovasz"}
    from seg_template.hparams_search import LOSS_PARAMS

    for t in trials:  # each loss's own parameter, drawn in its trials only
        own = set(t.params) - {"loss", "optimizer.lr", "optimizer.weight_decay"}
        assert own == {key for key, _, _ in LOSS_PARAMS.get(t.params["loss"], [])}, t.params
    for trial in trials:
        check_completed_trial(sweep, trial)
    best = max(trials, key=lambda t: t.value)
    assert f"best_value: {best.value}" in (sweep / "optimization_results.yaml").read_text()

    again = run_script("train.py", *OPTUNA, f"paths.log_dir={tmp_path}")  # the study is done: nothing to run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 finished trial(s) kept, 0 to run of n_trials=3" in again.stdout + again.stderr
    assert len(study_trials(sweep)) == 3


@pytest.mark.slow
def test_optuna_sweep_killed_and_started_again_continues(tmp_path: Path) -> None:
    """Killed (SIGKILL, no clean-up) while its second trial trains, the same command continues the study:
    the finished trial is kept and not run again, the interrupted one is marked failed and its parameters
    run again first, and the sweep ends with n_trials=3 complete trials."""
    skip_without_optuna()
    from optuna.trial import TrialState

    sweep = tmp_path / "train" / "optuna" / "optuna"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "train.py", *OPTUNA, f"paths.log_dir={tmp_path}"],
                                cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (sweep / "1").is_dir():  # trial 0 has been told; trial 1 has started
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the sweep and any loader workers
            proc.wait()
    first = study_trials(sweep)
    assert [t.state for t in first] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = run_script("train.py", *OPTUNA, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 finished trial(s) kept, 2 to run of n_trials=3" in result.stdout + result.stderr
    trials = study_trials(sweep)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert trials[0].datetime_complete == first[0].datetime_complete  # kept, not run again
    assert trials[2].params == first[1].params  # the interrupted trial, run again first
    for trial in (trials[0], trials[2], trials[3]):
        check_completed_trial(sweep, trial)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]

def test_ohem_thresh_is_searched_in_ohem_trials_only() -> None:
    optuna = import_optuna()
    from omegaconf import OmegaConf

    from seg_template.hparams_search import ohem_thresh

    cfg = OmegaConf.create({"ohem_thresh_range": [0.6, 0.8]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for loss in ("ce", "wce", "ohem"):
        with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.x
            warnings.simplefilter("ignore")
            study.enqueue_trial({"loss": loss})
        trial = study.ask()
        assert trial.suggest_categorical("loss", ["ce", "wce", "ohem"]) == loss
        ohem_thresh(cfg, trial)
        assert ("loss.main.thresh" in trial.params) == (loss == "ohem")
        assert 0.6 <= trial.params.get("loss.main.thresh", 0.7) <= 0.8
    trial = study.ask()  # loss=ohem fixed on the command line: the sweeper makes it a user attribute
    trial.set_user_attr("loss", "ohem")
    ohem_thresh(cfg, trial)
    assert "loss.main.thresh" in trial.params




def test_each_loss_parameter_is_searched_in_its_loss_trials_only(compose_tmp) -> None:  # noqa: ANN001
    """Every conditional parameter is drawn in the trials of its loss only, within its range, and is a key
    that loss's config has (an override of it works)."""
    optuna = import_optuna()
    from omegaconf import OmegaConf

    from seg_template.hparams_search import LOSS_PARAMS, loss_params

    cfg = OmegaConf.create({"focal_gamma_range": [1.0, 3.0], "dice_weight_range": [0.2, 0.4]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    losses = ["ce", "wce", "ohem", "dice", "ce_dice", "focal", "lovasz"]
    for loss in losses:
        with warnings.catch_warnings():  # enqueue_trial is "experimental" in Optuna 2.x
            warnings.simplefilter("ignore")
            study.enqueue_trial({"loss": loss})
        trial = study.ask()
        assert trial.suggest_categorical("loss", losses) == loss
        loss_params(cfg, trial)
        drawn = {k: v for k, v in trial.params.items() if k != "loss"}
        assert set(drawn) == {key for key, _, _ in LOSS_PARAMS.get(loss, [])}
        for key, value in drawn.items():
            low, high = {"loss.main.thresh": (0.5, 0.95), "loss.main.gamma": (1.0, 3.0),
                         "loss.main.terms.1.weight": (0.2, 0.4)}[key]
            assert low <= value <= high
            composed = compose_tmp(f"loss={loss}", f"{key}={value}")
            assert OmegaConf.select(composed, key) == value
