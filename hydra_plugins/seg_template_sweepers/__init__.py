"""seg_template's Hydra sweeper: Optuna's, made resumable (``configs/hparams_search/optuna.yaml``).

Hydra takes sweepers only from the ``hydra_plugins`` namespace, and imports every module in it at start-up:
without the ``optuna`` extra this module offers nothing and raises nothing. What the sweeper does before
and after the plugin's own ``sweep`` lives in ``seg_template/hparams_search.py``.
"""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hydra-optuna-sweeper is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """``OptunaSweeper`` that continues its study when the same command runs again (with ``storage``
        and ``study_name`` set): see :func:`seg_template.hparams_search.prepare_sweep`."""

        def sweep(self, arguments: list[str]) -> Any:
            from seg_template.hparams_search import (
                fail_running_trials,
                prepare_sweep,
                stop_on_repeated_failures,
            )

            impl = self.sweeper  # the plugin's OptunaSweeperImpl
            impl.launcher.launch = stop_on_repeated_failures(impl.launcher.launch)
            if not (impl.storage and impl.study_name):
                return super().sweep(arguments)
            prepare_sweep(impl)
            try:
                return super().sweep(arguments)
            except KeyboardInterrupt:
                raise  # an interruption: the running trial runs again next time
            except BaseException:
                # a job's own failure ended the sweep (e.g. its exit on a user error): not an interruption
                fail_running_trials(impl, requeue=False)
                raise
