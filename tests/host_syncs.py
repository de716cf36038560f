"""Count device -> host synchronisations on the CPU, where torch has no sync debug mode.

On a GPU every host read of a device tensor (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``...) waits for
the device to finish its queued work. On the CPU nothing waits, so these reads are counted instead: while
:func:`counting` is active, the methods below are wrapped to record where each call came from (the innermost
frame in this project's package, or in Lightning).

Only reads of tensors a GPU run would hold on the device count. A CPU run cannot tell them apart by their
device, so :class:`DeviceTensors` (a dispatch mode) follows them: the model's parameters and buffers and each
batch are marked, and so is every output of an operation with a marked input. Tensors made on the host stay
unmarked (the optimiser's step counters, which torch keeps on the CPU on purpose; index tables built from
Python numbers).

:class:`SyncsPerStep` attributes the reads to training steps, leaving out the data loading between steps.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

#: tensor methods that read a tensor's values on the host (a sync for a tensor on a GPU)
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "__array__")
_state = threading.local()


def _where() -> str:
    """``file:line`` of the innermost frame of seg_template or pytorch_lightning that made the call."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/seg_template/" in frame.filename or "/pytorch_lightning/" in frame.filename:
            path = frame.filename.split("/seg_template/", 1)[-1] if "/seg_template/" in frame.filename else \
                "pytorch_lightning/" + frame.filename.split("/pytorch_lightning/", 1)[-1]
            return f"{path}:{frame.lineno}"
    return "elsewhere"


class DevicePlaced(TorchFunctionMode):
    """Marks what a factory call places on a device taken from a tensor or a module
    (``torch.tensor(0, device=p.device)``, as torch's ``AveragedModel`` counts its updates): on a GPU run that
    is a device tensor. The string ``"cpu"`` is a host tensor by intent (torch's optimisers keep their step
    counts so), and stays unmarked."""

    def __init__(self, marks: DeviceTensors) -> None:
        super().__init__()
        self.marks = marks

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        device = (kwargs or {}).get("device")
        if device is not None and device != "cpu":
            self.marks.mark(out)
        return out


class DeviceTensors(TorchDispatchMode):
    """Marks every output of an operation that has a marked tensor among its inputs (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def mark(self, *trees: Any) -> None:
        for leaf in tree_flatten(trees)[0]:
            if isinstance(leaf, torch.Tensor):
                self.marked[leaf] = True

    def __contains__(self, tensor: torch.Tensor) -> bool:
        return tensor in self.marked

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t in self.marked for t in tree_flatten((args, kwargs))[0]):
            self.mark(out)
        return out


def _record(name: str) -> None:
    calls = getattr(_state, "calls", None)
    if calls is not None and not getattr(_state, "paused", 0):
        calls.append(f"{name} at {_where()}")


def _wrap(name: str, original: Any) -> Any:
    def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        device = getattr(_state, "device", None)
        if not getattr(_state, "inside", False) and device is not None and self in device:
            _state.inside = True  # a read that calls another read (tolist -> item) counts once
            try:
                _record(f"Tensor.{name}")
                return original(self, *args, **kwargs)
            finally:
                _state.inside = False
        return original(self, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def counting() -> Iterator[list[str]]:
    """Within the block, each host read of a tensor (:data:`READS`, ``torch.cuda.synchronize``) appends
    ``"<method> at <file>:<line>"`` to the list it yields."""
    originals = {name: getattr(torch.Tensor, name) for name in READS if hasattr(torch.Tensor, name)}
    synchronize = torch.cuda.synchronize
    _state.calls = calls = []
    _state.device = DeviceTensors()
    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, _wrap(name, original))
        torch.cuda.synchronize = lambda *a, **k: _record("torch.cuda.synchronize")  # type: ignore[assignment]
        with _state.device, DevicePlaced(_state.device):
            yield calls
    finally:
        _state.device = None
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.cuda.synchronize = synchronize
        _state.calls = None


@contextlib.contextmanager
def paused() -> Iterator[None]:
    _state.paused = getattr(_state, "paused", 0) + 1
    try:
        yield
    finally:
        _state.paused -= 1


class SyncsPerStep(pl.Callback):
    """``steps[k]``: the host reads made from the start of training step ``k`` to the start of step ``k + 1``
    (the last step: to the end of the epoch loop), loading the batches excluded. Marks the module's parameters
    and buffers and each batch as device tensors. Use inside :func:`counting`."""

    latest: SyncsPerStep | None = None  # the last one made (instantiated by train.py from the config)

    def __init__(self) -> None:
        SyncsPerStep.latest = self
        self.steps: dict[int, list[str]] = {}
        self._mark = 0
        self._step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _state.device.mark(list(pl_module.parameters()), list(pl_module.buffers()))
        fetcher_cls = type(trainer.fit_loop._data_fetcher)
        if not getattr(fetcher_cls, "_sync_count_paused", False):
            original = fetcher_cls.__next__

            def next_paused(fetcher: Any) -> Any:
                with paused():  # the DataLoader and its sampler run on the CPU in every run
                    return original(fetcher)

            fetcher_cls.__next__ = next_paused
            fetcher_cls._sync_count_paused = True
            self._restore = (fetcher_cls, original)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        restore = getattr(self, "_restore", None)
        if restore is not None:
            restore[0].__next__ = restore[1]
            restore[0]._sync_count_paused = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._close()
        _state.device.mark(batch)
        self._step, self._mark = trainer.global_step, len(_state.calls)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def _close(self) -> None:
        if self._step is not None and getattr(_state, "calls", None) is not None:
            self.steps[self._step] = _state.calls[self._mark:]
        self._step = None
