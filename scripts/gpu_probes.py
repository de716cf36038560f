"""The callbacks ``scripts/gpu_check.py`` adds to the runs it starts (``+callbacks.probe._target_=gpu_probes.X``),
and the parsers of the lines they print. Each prints one ``GPU_CHECK_*`` line that the check reads back.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer


class SyncBNProbe(Callback):
    """``+callbacks.probe._target_=gpu_probes.SyncBNProbe``: prints how many SyncBatchNorm layers the network
    has once Lightning has set up the strategy (trainer=ddp converts BatchNorm layers then)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layers = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules())
        print(f"GPU_CHECK_SYNCBN_LAYERS={layers}", flush=True)


class EMAProbe(Callback):
    """``+callbacks.probe._target_=gpu_probes.EMAProbe`` with ``callbacks=[default,ema]``: times each training
    step (the EMA update included), and when fit ends prints one line ``GPU_CHECK_EMA device=.. finite=..
    mib=.. update_ms=.. step_ms=..``: where the average lives, whether it is finite, its size, the median time of
    one update (on a copy, so the run's average is untouched) and of a training step."""

    def __init__(self) -> None:
        self._start = 0.0
        self.step_s: list[float] = []

    @staticmethod
    def _sync(module: LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        self._sync(pl_module)  # the EMA callback, earlier in the list, has updated the average by now
        self.step_s.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import copy

        from pytorch_lightning.callbacks import WeightAveraging

        from seg_template.callbacks.ema import update_average

        (average,) = [c._average_model for c in trainer.callbacks if isinstance(c, WeightAveraging)]
        state = average.module.state_dict()
        floats = [t for t in state.values() if t.is_floating_point()]
        devices = sorted({str(t.device) for t in state.values()})
        finite = bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())
        mib = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
        probe, times = copy.deepcopy(average), []
        for _ in range(12):
            self._sync(pl_module)
            start = time.perf_counter()
            update_average(probe, pl_module, True)
            self._sync(pl_module)
            times.append(time.perf_counter() - start)
        steps = self.step_s[2:] or self.step_s  # the first steps warm up
        print(f"GPU_CHECK_EMA device={','.join(devices)} finite={finite} mib={mib:.2f} "
              f"update_ms={1e3 * statistics.median(times[2:]):.3f} step_ms={1e3 * statistics.median(steps):.3f}",
              flush=True)


def ema_figure(text: str) -> str:
    """The key figure of fit-ema from its output's ``GPU_CHECK_EMA`` line (:class:`EMAProbe`); RuntimeError
    when there is none, or the average is not on the GPU alone or not finite."""
    lines = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("GPU_CHECK_EMA ")]
    if not lines:
        raise RuntimeError("no GPU_CHECK_EMA line: the EMA callback or the probe did not run")
    found = dict(item.split("=", 1) for item in lines[-1].split())
    if not all(d.startswith("cuda") for d in found["device"].split(",")) or found["finite"] != "True":
        raise RuntimeError(f"the average must be on the GPU and finite: {lines[-1]}")
    update, step = float(found["update_ms"]), float(found["step_ms"])
    return (f"average on {found['device']}, finite, {float(found['mib']):.2f} MiB; update {update:.2f} ms = "
            f"{100 * update / max(step, 1e-9):.1f}% of a {step:.1f} ms step")


class SyncProbe(Callback):
    """``+callbacks.probe._target_=gpu_probes.SyncProbe``: counts the synchronising CUDA calls
    (``torch.cuda.set_sync_debug_mode("warn")``) from the start to the end of each training step that is not a
    logging step, from the third step on; prints ``GPU_CHECK_SYNCS steps=.. syncs=.. first=..`` when fit ends."""

    def __init__(self) -> None:
        self.steps, self.syncs, self.first = 0, 0, ""
        self._watching = False
        self._show = warnings.showwarning

    def _seen(self, message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if self._watching and "synchroniz" in str(message):
            self.syncs += 1
            self.first = self.first or f"{filename}:{lineno}"
            return
        self._show(message, category, filename, lineno, *rest)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        warnings.showwarning = self._seen
        warnings.simplefilter("always", UserWarning)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        logging_step = trainer._logger_connector.should_update_logs
        if trainer.global_step >= 2 and not logging_step:
            self.steps += 1
            self._watching = True
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._watching = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        warnings.showwarning = self._show
        print(f"GPU_CHECK_SYNCS steps={self.steps} syncs={self.syncs} first={self.first or '-'}", flush=True)


def sync_figure(text: str) -> str:
    """The key figure of the syncs check from ``GPU_CHECK_SYNCS`` (:class:`SyncProbe`); RuntimeError when there
    is none, no step was watched, or a watched step synchronised."""
    lines = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("GPU_CHECK_SYNCS ")]
    if not lines:
        raise RuntimeError("no GPU_CHECK_SYNCS line: the probe did not run")
    found = dict(item.split("=", 1) for item in lines[-1].split())
    steps, syncs = int(found["steps"]), int(found["syncs"])
    if steps == 0 or syncs:
        raise RuntimeError(f"{syncs} synchronising CUDA call(s) in {steps} non-logging training steps "
                           f"(first at {found['first']})")
    return f"0 synchronising CUDA calls in {steps} non-logging training steps"
