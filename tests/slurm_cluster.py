"""A real SLURM cluster on this machine for the slow tests: ``scripts/slurm_local.sh`` (munged, slurmctld and
slurmd of Debian's SLURM 22.05, one partition ``debug``), started once per test session and stopped at its end
when this session started it.

    # tests/conftest.py
    from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

    # a test module
    pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

The client commands (sbatch, srun, squeue, scontrol, scancel) find the cluster from any process: the script
writes its config to /etc/slurm/slurm.conf too. There is no accounting (no sacct): a finished job stays visible
to ``scontrol show job`` for MinJobAge (300 s) only. Starting needs Linux and root (slurmd runs the jobs as
their users); elsewhere the fixture skips, with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: the script that installs, starts and stops the cluster
SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"

#: seconds ``scripts/slurm_local.sh start`` may take: apt-get install on a fresh machine, then the daemons
START_TIMEOUT = 900


@dataclass(frozen=True)
class SlurmCluster:
    """The running cluster, as the ``slurm_cluster`` fixture hands it to tests."""

    state_dir: Path           #: config, controller state, spool, logs and PID files of the daemons
    partition: str = "debug"  #: its only partition, the default one

    @property
    def conf(self) -> Path:
        """Its ``slurm.conf`` (the client commands read the same file from /etc/slurm/slurm.conf)."""
        return self.state_dir / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        """The daemons' logs: slurmctld.log, slurmd-<node>.log (worth printing when a job misbehaves)."""
        return self.state_dir / "log"

    def env(self) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` set, for subprocesses that run SLURM commands."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}


def state_dir() -> Path:
    """The script's state folder: ``$SLURM_LOCAL_DIR``, by default /tmp/seg_template_slurm."""
    return Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/seg_template_slurm"))


def _run_script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SLURM_SCRIPT), command], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + "\n" + result.stderr).strip().splitlines()
    return lines[-1].strip() if lines else f"exit status {result.returncode}, no output"


class _Session:
    """What this test session did: whether it checked / started the cluster, and why it cannot use one."""

    checked = False
    reason: str | None = None
    started_here = False


def slurm_running() -> bool:
    """Whether the local cluster is up now (``scripts/slurm_local.sh status``); starts nothing."""
    if not sys.platform.startswith("linux") or not SLURM_SCRIPT.is_file():
        return False
    try:
        return _run_script("status", timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def skip_where_a_cluster_runs(covered_by: str) -> None:
    """Skip a test of the SLURM path without SLURM (stand-in commands, SLURM's variables) where the real
    cluster runs: ``covered_by`` (a test of tests/test_slurm_cluster.py) proves the same there."""
    if slurm_running():
        pytest.skip(f"a local SLURM cluster runs here: tests/test_slurm_cluster.py::{covered_by} covers this")


def slurm_available() -> str | None:
    """None when the local cluster is up, starting it (``scripts/slurm_local.sh start``) if it is not; else
    why it cannot be used: not Linux, not root, or the script's failure (its last output line).

    The first call decides (later calls return the same answer). A cluster this call started is stopped by the
    ``slurm_cluster`` fixture at the end of the session, or by ``stop_if_started_here()``."""
    if _Session.checked:
        return _Session.reason
    _Session.checked = True
    _Session.reason = _start()
    return _Session.reason


def _start() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform}): scripts/slurm_local.sh runs SLURM's daemons on Linux only"
    if os.geteuid() != 0:
        return f"not root (uid {os.geteuid()}): scripts/slurm_local.sh needs root to install and run slurmd"
    if _run_script("status", timeout=30).returncode == 0:
        return None   # up already: someone else's, left running at the end
    try:
        result = _run_script("start", timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"scripts/slurm_local.sh start took over {START_TIMEOUT} s"
    if result.returncode != 0:
        return f"scripts/slurm_local.sh start failed: {_last_line(result)}"
    _Session.started_here = True
    return None


def stop_if_started_here() -> None:
    """Stop the cluster (``scripts/slurm_local.sh stop``: its jobs cancelled, its daemons stopped) if
    ``slurm_available()`` started it in this session; one already up before is left running."""
    if _Session.started_here:
        _Session.started_here = False
        _Session.checked = False
        _run_script("stop", timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The local SLURM cluster, started once per test session (skips the test, with the reason, where it
    cannot start); stopped at the end of the session only if this session started it."""
    reason = slurm_available()
    if reason is not None:
        pytest.skip(f"no local SLURM cluster: {reason}")
    try:
        yield SlurmCluster(state_dir=state_dir())
    finally:
        stop_if_started_here()


# "Key=value" fields of `scontrol show job -o`; a value runs to the next " Key=" (values may hold spaces)
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=(.*?)(?=\s[A-Za-z][\w/:]*=|$)")


def job_info(job_id: str | int) -> dict[str, str] | None:
    """The fields of ``scontrol show job -o <job_id>`` (JobState, Restarts, ExitCode, NodeList, StdOut, ...);
    None when slurmctld does not know the job (never submitted, or purged MinJobAge seconds after it ended).
    For a job array's id, its first task's."""
    result = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0 or not result.stdout.strip():
        if "Invalid job id" in result.stderr:
            return None
        raise RuntimeError(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
    line = result.stdout.strip().splitlines()[0]
    return {key: value for key, value in _FIELD.findall(line)}
