"""A Hydra callback that makes a sweep explain itself: after ``python train.py -m ...`` the sweep folder holds

- ``summary.csv``: one row per job (its varying overrides, status, best val/mIoU and its epoch, test/mIoU, the
  value returned to the sweeper, wall time, the error of a failed job, its folder and its ``best.ckpt``),
  best job first; scores in percent and epochs from 0, as every table and ``metrics.csv`` give them;
- ``summary_val_mIoU.png``: the jobs' val/mIoU curves on one plot;

and the same table is printed at the end. Registered in ``configs/hydra/default.yaml`` (``hydra.callbacks``).

Each job writes ``<job>/job_status.json`` when it starts ("running") and ends ("completed" / "failed", from
Hydra's ``JobReturn``), and ``summary.csv`` is rewritten after every job: Hydra's basic sweeper re-raises a
failed job's error after its batch and never calls ``on_multirun_end``, and a job may end the process
(``SystemExit``); an ``atexit`` hook then writes the final summary with that job marked as failed. Remote
launchers (submitit) run the job hooks on the compute nodes and ``on_multirun_end`` locally; the files on the
shared disk carry the state between them. A SLURM job that is requeued (its time limit, a preemption) starts
again in its folder: the status keeps its first start, so its wall time covers every attempt (``attempts``
counts them), and an attempt that requeued itself leaves it "requeued", not failed. A job that ended without
running its hooks at all (cancelled, crashed, its node lost) is recorded by the launcher that noticed
(:func:`record_lost_job`). Cheap to import: no torch, and matplotlib only for the PNG.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from seg_template import slurm

STATUS_FILE = "job_status.json"
SUMMARY_CSV = "summary.csv"
CURVES_PNG = "summary_val_mIoU.png"


def _atomic_write(path: Path, text: str) -> None:
    """Parallel jobs rewrite the same summary: readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _number(value: Any) -> float | None:
    """``value`` as a float (NaN and inf included), or None when it is no number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    """A finite metric value, or None: a NaN / inf row of ``metrics.csv`` (a validation without labelled
    pixels, a diverged run) is no score to rank or plot."""
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def _is_multirun(config: DictConfig) -> bool:
    """A multirun job, as its rank 0 runs it: the other tasks of a multi-task SLURM job (``trainer.num_nodes``,
    several tasks per node) run the same job hooks, and only rank 0 keeps the job's status."""
    from hydra.types import RunMode

    from seg_template.run_folder import process_rank

    return config.hydra.get("mode") == RunMode.MULTIRUN and process_rank() == 0


def refuse_a_used_sweep_folder(sweep_dir: Path, sweeper: str) -> None:
    """A ``ConfigError`` when ``sweep_dir`` already holds something (an earlier sweep's jobs, ``multirun.yaml``,
    ``summary.csv``): its job folders ``0_...``, ``1_...`` would be written over by this sweep's, before any
    job could refuse them. A resumable Optuna study (``hparams_search=optuna``) continues its own folder
    (seg_template/hparams_search.py numbers its trials on), so it is let through. Called by seg_template/cli.py
    before Hydra starts (Hydra turns a callback's error into a warning and goes on)."""
    if sweeper.endswith("ResumableOptunaSweeper") or not sweep_dir.is_dir():
        return
    held = sorted(e.name for e in sweep_dir.iterdir() if not e.name.startswith("."))
    if held:
        from seg_template.errors import ConfigError

        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} already holds {shown}: a sweep writes its jobs into a "
                          "folder of its own, and this one would write over the earlier jobs' records. Leave "
                          "hydra.sweep.dir out (a new folder per sweep) or name a new one")


class SweepSummary(Callback):
    """Hydra callback (see the module docstring). Does nothing in single runs."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None
        self._main = False  # on_multirun_start ran in this process: it prints the final table
        self._finished = False
        self._exit_hook = False
        self._current: dict[str, Any] | None = None  # the job running in this process
        self._started = 0.0

    # ------------------------------------------------------------------ Hydra hooks
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir, self._main = Path(config.hydra.sweep.dir), True
        self._register_exit_hook()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        self._sweep_dir = Path(config.hydra.sweep.dir)
        self._register_exit_hook()
        job = _relative(Path(config.hydra.runtime.output_dir), self._sweep_dir)
        earlier = _earlier_attempt(self._sweep_dir / job / STATUS_FILE)
        self._started = float(earlier.get("started_at", time.time())) if earlier else time.time()
        self._current = {
            "job": job,
            "num": int(config.hydra.job.get("num", -1)),
            "status": "running",
            "overrides": list(config.hydra.overrides.task),
            "started": earlier.get("started") if earlier else datetime.now().isoformat(timespec="seconds"),
            "started_at": self._started,
            "attempts": int(earlier.get("attempts") or 1) + 1 if earlier else 1,
            "slurm_job": slurm.job_id(),
            "wall_s": None,
            "objective_name": config.get("optimized_metric"),
            "objective": None,
            "error": None,
        }
        self._write_status(self._current)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if not _is_multirun(config) or self._current is None:
            return
        status, wall = dict(self._current), time.time() - self._started
        status["wall_s"] = round(wall, 1)
        if job_return.status == JobStatus.COMPLETED:
            # NaN stays NaN (JSON writes it as NaN): the job is ranked after every job with a number, never
            # by the best epoch it reached before it diverged
            status["status"], status["objective"] = "completed", _number(job_return.return_value)
        else:  # the return value is the exception; reading .return_value would raise it
            error = job_return._return_value
            first_line = (str(error).strip().splitlines() or [""])[0]
            status["status"], status["error"] = "failed", f"{type(error).__name__}: {first_line}"[:300]
        self._current = None
        self._write_status(status)
        write_summary(Path(config.hydra.sweep.dir), final=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finished = True
        print(write_summary(Path(config.hydra.sweep.dir), final=True), flush=True)

    # ------------------------------------------------------------------ helpers
    def _write_status(self, status: dict[str, Any]) -> None:
        assert self._sweep_dir is not None
        job_dir = self._sweep_dir / status["job"]
        job_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(job_dir / STATUS_FILE, json.dumps(status, indent=1))

    def _register_exit_hook(self) -> None:
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(self._at_exit)
            # what the final summary's picture needs, imported now: an import at exit may fail ("can't
            # register atexit after shutdown") in a process that never imported torch (a remote launcher's)
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401

    def _at_exit(self) -> None:
        """The process ends without ``on_multirun_end``: a job raised ``SystemExit``/``KeyboardInterrupt``, or
        the basic sweeper re-raised a failed job's error. Mark the job that was running and write the final
        summary (printing it where the sweep started)."""
        if self._current is not None:
            from seg_template.signals import requeued_job

            wall = round(time.time() - self._started, 1)
            status = {**self._current, "status": "failed", "wall_s": wall,
                      "error": "the process exited during the job (see the job's log)"}
            if requeued_job():
                status.update(status="requeued", error=f"SLURM requeued job {requeued_job()}: it starts again")
            self._current = None
            self._write_status(status)
        if self._finished or self._sweep_dir is None or not self._sweep_dir.is_dir():
            return
        self._finished = True
        text = write_summary(self._sweep_dir, final=True)
        if self._main:
            print(text, flush=True)


def _earlier_attempt(path: Path) -> dict[str, Any] | None:
    """The status an earlier attempt of this same SLURM job left in its folder (a requeued job runs again
    there), else None: the wall time then counts from that attempt's start."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not restarts.isdigit() or int(restarts) == 0 or not path.is_file():
        return None
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict) or earlier.get("slurm_job") != slurm.job_id():
        return None
    return earlier


class LostJobError(CompactHydraException):
    """A job that ended without a result (what the launcher saw, where its log is). Hydra prints it as its
    message alone: there is no traceback of the job to show."""


def record_lost_job(config: DictConfig, sweep_dir: Path, num: int, overrides: list[str], reason: str,
                    ended_at: float | None = None) -> Any:
    """A launcher's record of job ``num`` that ended without a result (no hook of its own ran to the end):
    its status file says "failed" with ``reason`` (in the folder its start hook wrote, or the folder the job
    would have had), its wall time up to ``ended_at`` (``time.time()`` when it was seen ended; now when None),
    and the returned failed ``JobReturn`` carries ``reason`` as its error."""
    from hydra.core.utils import JobReturn, JobStatus

    started = [p for p in sweep_dir.glob(f"*/{STATUS_FILE}") if _status_num(p) == num]
    if started:
        status = json.loads(started[0].read_text())
    else:
        from seg_template.paths import folder_name, swept_keys

        keys = swept_keys()
        name = folder_name([o for o in overrides if o.partition("=")[0].lstrip("+~") in keys])
        status = {"job": f"{num}_{name}" if name else str(num), "num": num, "overrides": overrides,
                  "started": None, "objective_name": config.get("optimized_metric"), "objective": None}
    if status.get("started_at"):
        status["wall_s"] = round((ended_at or time.time()) - float(status["started_at"]), 1)
    status.update(status="failed", error=reason[:300])
    job_dir = sweep_dir / status["job"]
    job_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(job_dir / STATUS_FILE, json.dumps(status, indent=1))
    write_summary(sweep_dir, final=False)
    return JobReturn(overrides=overrides, status=JobStatus.FAILED, task_name=str(config.hydra.job.name),
                     working_dir=str(job_dir), _return_value=LostJobError(reason))


def _status_num(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text()).get("num"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------- reading the jobs
def read_job(job_dir: Path) -> dict[str, Any]:
    """A job's status file plus what its ``metrics.csv`` says: best val/mIoU (and epoch), last test/mIoU
    and the val/mIoU curve ``[(epoch, value)]``."""
    job = json.loads((job_dir / STATUS_FILE).read_text())
    job.update({"best_val": None, "best_epoch": None, "test": None, "curve": [], "metrics_csv": False})
    metrics = job_dir / "metrics.csv"
    if not metrics.is_file():
        metrics = next(iter(sorted(job_dir.rglob("metrics.csv"))), metrics)
    if metrics.is_file():
        job["metrics_csv"] = True
        with open(metrics, newline="") as file:
            for row in csv.DictReader(file):
                val, test = _float(row.get("val/mIoU")), _float(row.get("test/mIoU"))
                epoch = _float(row.get("epoch"))
                if val is not None:
                    job["curve"].append((int(epoch or 0), val))
                    if job["best_val"] is None or val > job["best_val"]:
                        job["best_val"], job["best_epoch"] = val, int(epoch or 0)
                if test is not None:
                    job["test"] = test
    return job


def varying_overrides(jobs: Sequence[dict[str, Any]]) -> list[str]:
    """The override keys whose values differ between jobs (all of them for a single job)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.get("overrides") or []:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    keys = list(values)
    if len(jobs) > 1:
        keys = [k for k in keys if len(values[k]) > 1 or any(
            not any(o.partition("=")[0] == k for o in job.get("overrides") or []) for job in jobs)]
    return keys


def _direction(sweep_dir: Path, name: str | None) -> int:
    """+1 when the sweep maximises its objective (mIoU-like), -1 when it minimises (a loss, or a sweeper
    told ``direction: minimize``)."""
    multirun = sweep_dir / "multirun.yaml"
    if multirun.is_file():
        from seg_template.errors import UserError
        from seg_template.file_config import read_run_yaml

        try:  # the door's reader: plain data, no YAML aliases, a size cap
            sweeper = _at(read_run_yaml(multirun), "hydra", "sweeper")
        except UserError as err:  # the summary still comes, ranked by the objective's name
            print(f"Sweep summary: {err}", flush=True)
            sweeper = None
        direction = str(_at(sweeper, "direction") or "").lower()  # optuna
        if "minimize" in direction:
            return -1
        if "maximize" in direction:
            return 1
        maximize = _at(sweeper, "optim", "maximize")
        if maximize is not None:  # nevergrad
            return 1 if maximize else -1
    return -1 if name and "loss" in name else 1


def _at(found: Any, *keys: str) -> Any:
    """``found[k1][k2]...`` of plain data read from a file, None where a key or a mapping is missing."""
    for key in keys:
        found = found.get(key) if isinstance(found, dict) else None
    return found


_ORDER = {"completed": 0, "running": 1, "requeued": 1, "failed": 2}


def collect_jobs(sweep_dir: Path, final: bool) -> list[dict[str, Any]]:
    """Every job under ``sweep_dir`` with a status file, best first: completed jobs by their objective (their
    best val/mIoU when they returned none), those whose objective is NaN / inf or missing after them, then
    running ones, then failed ones. In the ``final`` summary a job still "running" never ended."""
    jobs = [read_job(p.parent) for p in sorted(sweep_dir.rglob(STATUS_FILE))]
    for job in jobs:  # the path to paste after ckpt_path= (job folders are named to be pasted as they are)
        best = sweep_dir / job["job"] / "checkpoints" / "best.ckpt"
        job["checkpoint"] = str(best) if best.is_file() else ""
    for job in jobs:
        if final and job["status"] in ("running", "requeued"):
            job["status"], job["error"] = "failed", job.get("error") or "never ended (killed?)"
    name = next((j.get("objective_name") for j in jobs if j.get("objective_name")), None)
    sign = _direction(sweep_dir, name)

    def key(job: dict[str, Any]) -> tuple:
        score = job["objective"] if job["objective"] is not None else job["best_val"]
        ranked = score is not None and math.isfinite(score)  # NaN would make the sort order arbitrary
        return (_ORDER.get(job["status"], 3), not ranked, -sign * score if ranked else 0.0, job.get("num", 0))

    return sorted(jobs, key=key)


# ---------------------------------------------------------------------- writing the summary
def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    """A score in [0, 1] as the tables print it: percent, two decimals."""
    return "" if value is None else f"{100 * value:.2f}"


def _is_score(name: str) -> bool:
    """Metrics the module logs as fractions in [0, 1] (mIoU, aAcc, per-class IoU): shown in percent."""
    return any(part in name for part in ("mIoU", "aAcc", "IoU/"))


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def summary_rows(jobs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary (the CSV and the printed table share them)."""
    keys = varying_overrides(jobs)
    name = next((j.get("objective_name") for j in jobs if j.get("objective_name")), None) or "objective"
    returned = _percent if _is_score(name) else _fmt
    header = ["job", "overrides", "status", "best val/mIoU %", "best epoch", "test/mIoU %",
              f"{name}{' %' if _is_score(name) else ''} (returned)",
              "wall time", "error", "folder", "checkpoint"]
    rows = []
    for job in jobs:
        shown = [o for o in job.get("overrides") or [] if o.partition("=")[0] in keys]
        rows.append([str(job.get("num", "")), " ".join(shown), job["status"], _percent(job["best_val"]),
                     "" if job["best_epoch"] is None else str(job["best_epoch"]), _percent(job["test"]),
                     returned(job["objective"]), _fmt_time(job.get("wall_s")), job.get("error") or "",
                     job["job"], job.get("checkpoint") or ""])
    return header, rows


def format_summary(header: Sequence[str], rows: Sequence[Sequence[str]], title: str) -> str:
    """The summary as a text table (the folder and checkpoint columns left to the CSV, and the error column
    when nothing failed)."""
    from rich.console import Console
    from rich.table import Table

    error = header.index("error")
    drop = {"folder", "checkpoint"} | (set() if any(r[error] for r in rows) else {"error"})
    short = [r[error] if len(r[error]) <= 60 else r[error][:59] + "…" for r in rows]  # the CSV has it all
    rows = [[*r[:error], text, *r[error + 1:]] for r, text in zip(rows, short, strict=True)]
    table = Table(title=title)
    columns = [i for i, h in enumerate(header) if h not in drop]
    for i in columns:
        left = header[i] in ("overrides", "status", "error")
        table.add_column(header[i], justify="left" if left else "right")
    for row in rows:
        table.add_row(*(row[i] for i in columns))
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def planned_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the sweep in ``sweep_dir`` was to run, from its ``multirun.yaml`` (read through the
    file-config door): the product of the swept values' counts, for Hydra's basic (grid) sweeper; None for
    other sweepers (Optuna draws its trials) or when the file cannot tell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from seg_template.file_config import read_run_yaml

    try:
        hydra = read_run_yaml(sweep_dir / "multirun.yaml").get("hydra") or {}
        if not str((hydra.get("sweeper") or {}).get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *(hydra.get("overrides") or {})["task"]])
    except Exception:  # noqa: BLE001 - no file, or one the door refuses: the summary just does not say
        return None
    count = 1
    for override in overrides:
        if override.is_sweep_override():
            count *= len(list(override.sweep_string_iterator()))
    return count


def write_summary(sweep_dir: Path, final: bool = True) -> str:
    """Rewrite ``summary.csv`` (and, when ``final``, the curves PNG) in ``sweep_dir``; returns the table."""
    jobs = collect_jobs(sweep_dir, final)
    header, rows = summary_rows(jobs)
    lines = [header, *rows]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    _atomic_write(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    failed = sum(r[2] == "failed" for r in rows)
    title = f"sweep {sweep_dir.name}: {len(rows)} job(s)" + (f", {failed} failed" if failed else "")
    text = format_summary(header, rows, title)
    notes = [f"Summary: {sweep_dir / SUMMARY_CSV}"]
    planned = planned_jobs(sweep_dir) if final else None
    if planned is not None and len(rows) < planned:
        notes.append(f"{planned - len(rows)} of the sweep's {planned} jobs never started (the sweep stopped "
                     f"first): the jobs above are all there is; run the others with their values")
    best = next((job for job in jobs if job["status"] == "completed" and job["checkpoint"]), None)
    if best is not None:
        notes.append(f"Best job {best.get('num', '')}: python eval.py ckpt_path={best['checkpoint']}")
    if final:
        if any(job["curve"] for job in jobs):
            plot_sweep_curves(jobs, varying_overrides(jobs), sweep_dir / CURVES_PNG)
            notes.append(f"val/mIoU curves: {sweep_dir / CURVES_PNG}")
        elif jobs and not any(job.get("metrics_csv") for job in jobs):
            notes.append("no job wrote a metrics.csv (a logger choice without csv, such as logger=tensorboard), so the "
                         "score columns are empty and there is no curves picture: keep the CSV logger beside the "
                         "others (logger=[csv,tensorboard])")
        else:
            notes.append("no job logged val/mIoU to metrics.csv: no curves picture")
    return text + "\n".join(notes)


def plot_sweep_curves(jobs: Sequence[dict[str, Any]], keys: Sequence[str], path: Path) -> None:
    """val/mIoU per epoch of every job on one plot; failed jobs dashed."""
    from matplotlib.figure import Figure  # Agg, without pyplot (as seg_template/callbacks/reports.py draws)

    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for job in sorted(jobs, key=lambda j: j.get("num", 0)):
        if not job["curve"]:
            continue
        epochs, values = zip(*job["curve"], strict=True)
        label = " ".join(o for o in job.get("overrides") or [] if o.partition("=")[0] in keys) or job["job"]
        failed = job["status"] == "failed"
        ax.plot(epochs, values, marker="o", markersize=3, linestyle="--" if failed else "-",
                label=f"{job.get('num', '')}: {label}" + (" (failed)" if failed else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("val/mIoU per job")
    fig.savefig(path, dpi=100)
