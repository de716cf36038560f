"""Process handling for multirun sweeps and DDP: what lets several jobs, and Lightning's re-launched ranks,
share one Python process and one command line.

Three problems, all specific to running Lightning's DDP inside Hydra:

- Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv`` (plus ``hydra.run.dir=<dir>``). In a
  multirun ``sys.argv`` holds ``-m`` and the whole sweep: each child would start the sweep again, elsewhere.
  :func:`prepare_ddp_relaunch` rewrites it to this job's own overrides and folder.
- A DDP fit leaves ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT``... in ``os.environ`` and an initialised
  process group. The next multirun job would believe its ranks were started externally and talk to the
  previous job's finished ranks. :func:`isolated_job` undoes that after each job.
- Lightning kills its own process when a rank it started fails: in a multirun, the sweep. :func:`isolated_job`
  has the ranks watched by ``seg_template/launched_ranks.py`` instead, which fails the job and ends its ranks.

And one problem of DDP itself: an error found by one process (rank 1's shard of the data) ends the others
inside a collective operation with an error about a lost connection. :func:`launch_scope`,
:func:`record_failure`, :func:`claim_message` and :func:`failures_of_other_ranks` let the entry point print
the real error once, whichever rank found it, and the others' consequent failures as one short line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def isolated_job() -> Iterator[None]:
    """Run one job, then restore ``os.environ`` and ``sys.argv`` and destroy the process group the job created.

    Variables set before the job (e.g. by torchrun or SLURM) are kept. The ranks Lightning starts during the job
    are watched by ``launched_ranks.RankWatcher``: a failing rank fails the job, not this whole process.
    """
    from seg_template.launched_ranks import watch_launched_ranks

    env_before, argv_before = dict(os.environ), list(sys.argv)
    try:
        with watch_launched_ranks():
            yield
    finally:
        sys.argv[:] = argv_before  # prepare_ddp_relaunch narrowed it to this job
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            global _distributed_world
            _distributed_world = max(_distributed_world, dist.get_world_size())
            dist.destroy_process_group()
        for key in set(os.environ) - set(env_before):
            del os.environ[key]
        os.environ.update(env_before)


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP re-launch of this script land in this multirun job's folder, as a plain single
    run: ``sys.argv`` becomes the script plus this job's overrides, and ``hydra.run.dir`` the job's folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run), open_dict(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def is_global_zero() -> bool:
    """Whether this process is rank 0 of its job (True outside DDP). Lightning's re-launched ranks carry
    their rank in the environment from the start, before any process group exists."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def end_with_launcher() -> None:
    """Make a DDP rank that Lightning (or torchrun) started end when the process that started it ends: on
    Linux the kernel then sends it SIGTERM (``prctl(PR_SET_PDEATHSIG)``), which stops it as any SIGTERM does,
    instead of leaving it waiting for its peers. Rank 0 itself and other platforms: nothing to do."""
    if not sys.platform.startswith("linux") or os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher ended before the call: nothing will send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def global_rank() -> int:
    """This process's rank in its job (0 outside DDP), as Lightning knows it from the environment."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


# ------------------------------------------------------------------------------------------------------------
# An error on any rank, printed once. Under DDP each process runs the entry point; a user error found by rank 1
# (its shard of the data) must be printed, once, while rank 0's consequent failure ("Connection closed by
# peer" inside a collective) is only a consequence. The processes of one job share a folder of small files:
# ``rank<k>`` records how process k failed, ``message-<hash>`` is claimed by the first process to print a
# message (several ranks hitting the same config error print it once).

LAUNCH_ENV = "SEG_TEMPLATE_LAUNCH_ID"
RECORDS_FOLDER = "seg_template_ranks"  # in the system's temporary folder

_distributed_world = 1  # the largest process group a job of this process has used (isolated_job records it)

#: what a collective operation raises when another process of the job is gone (gloo, NCCL, torch.multiprocessing)
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|[Tt]imed? ?out|NCCL|[Gg]loo|"
                        r"process group|ProcessGroup|terminated with (signal|exit code)|exited unexpectedly")
_PEER_GONE_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError", "DistError", "ProcessRaisedException",
                    "ProcessExitedException")


@contextmanager
def launch_scope() -> Iterator[None]:
    """Give this job an id that all its processes share: the ranks Lightning starts inherit it from the
    environment; ranks started by SLURM or torchrun derive it from their job's variables. The failure
    records of jobs that ended more than a day ago are removed (not this job's: its other ranks may still
    be reading them after this process ends)."""
    if os.environ.get(LAUNCH_ENV):
        yield
        return
    os.environ[LAUNCH_ENV] = _external_launch_id() or f"local-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    _remove_old_records()
    try:
        yield
    finally:
        os.environ.pop(LAUNCH_ENV, None)


def _remove_old_records(age_s: float = 86400.0) -> None:
    root = Path(tempfile.gettempdir()) / RECORDS_FOLDER
    with contextlib.suppress(OSError):
        for folder in root.iterdir():
            if time.time() - folder.stat().st_mtime > age_s:
                shutil.rmtree(folder, ignore_errors=True)


def _external_launch_id() -> str | None:
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        keys = ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
        return "slurm-" + "-".join(env.get(k, "") for k in keys)
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"elastic-{env['TORCHELASTIC_RUN_ID']}-{env.get('TORCHELASTIC_RESTART_COUNT', '')}"
    return None


def _records_folder() -> Path | None:
    """``<tmp>/seg_template_ranks/<hash of the launch id and the run folder>``; None outside a launch scope."""
    launch = os.environ.get(LAUNCH_ENV)
    if not launch:
        return None
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else os.getcwd()
    key = hashlib.sha1(f"{launch}|{run_dir}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / RECORDS_FOLDER / key


def was_distributed() -> bool:
    """Whether this job runs (or ran, before :func:`isolated_job` ended it) with several processes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return _distributed_world > 1 or global_rank() > 0


def record_failure(text: str) -> None:
    """Note, for the job's other processes, that this one failed with ``text`` (one line)."""
    folder = _records_folder()
    if folder is None:
        return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".rank{global_rank()}.{os.getpid()}"
        partial.write_text(text)
        os.replace(partial, folder / f"rank{global_rank()}")


def claim_message(text: str) -> bool:
    """True for the first process of the job to claim ``text`` (it prints it), False for the others; True
    when the processes share no folder to tell."""
    folder = _records_folder()
    if folder is None:
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"message-{hashlib.sha1(text.encode()).hexdigest()[:16]}",
                     os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    except OSError:
        return True
    os.close(fd)
    return True


def failures_of_other_ranks(wait_s: float = 10.0) -> dict[int, str]:
    """``{rank: text}`` of the job's other processes that recorded a failure, waiting up to ``wait_s``
    seconds for the first one (a process records its failure while it shuts down)."""
    folder = _records_folder()
    deadline = time.monotonic() + wait_s
    me = global_rank()
    while folder is not None:
        found = {}
        for path in folder.glob("rank*"):
            rank = int(path.name[4:]) if path.name[4:].isdigit() else -1
            if rank not in (me, -1):
                with contextlib.suppress(OSError):
                    found[rank] = path.read_text().strip()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)
    return {}


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an error in its chain) is what a collective raises when another process of the
    job has ended: gloo's "Connection closed by peer", a timeout, torch.multiprocessing's
    ``ProcessRaisedException``..."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if type(current).__name__ in _PEER_GONE_TYPES:
            return True
        if isinstance(current, RuntimeError) and _PEER_GONE.search(str(current)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
