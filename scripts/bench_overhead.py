"""The template's own per-step cost: the same training steps as a plain PyTorch loop, a bare Lightning
Trainer and the trainer ``train.py`` builds (its callbacks and logger), side by side in one run.

    python scripts/bench_overhead.py                    # the default run (configs/train.yaml), CPU, 5 reps
    python scripts/bench_overhead.py --steps 60 --reps 7 model=small data.batch_size=8
    python scripts/bench_overhead.py --device cuda      # on a GPU (Lightning's accelerator=gpu)

Any further argument is a Hydra override of ``configs/train.yaml``. Validation, the sanity check and the test
are off in all three, so only training steps are timed.

Each of the three builds the model, the loss, the optimiser and the scheduler from the same config and seed,
and reads its batches from the same DataModule (the same loader settings), then runs ``--warmup`` untimed
steps and ``--steps`` timed ones, from the start of the first timed step to the start of the step after the
last (the batches' loading included, as in a real run; the work of the fit's start and end, such as the
reports, excluded). The three take turns rep by rep (``--reps``), so a change of load
on a shared machine touches all three alike; a ratio is the median over reps of (time / the plain loop's time
in the same rep).

- **plain**: ``for batch in loader: loss = loss_fn(net(x), y); loss.backward(); opt.step(); opt.zero_grad();
  sched.step()``, with the batch moved to the device as Lightning does.
- **bare Lightning**: ``pl.Trainer`` with no logger, checkpointing, progress bar or model summary, around our
  ``SegmentationModule``.
- **template**: the trainer of ``train.py`` (``callbacks=default``, ``logger=csv``): checkpoints, NaN guard,
  progress bar, per-epoch line, LR monitor, CSV logger...; epoch-level work (saving) counts only when an epoch
  ends inside the timed steps (the default run has 125 steps per epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from seg_template.build import build_module, instantiate_callbacks, instantiate_loggers, instantiate_trainer  # noqa: E402
from seg_template.models.outputs import canonical_outputs  # noqa: E402
from seg_template.optim import param_groups  # noqa: E402
from seg_template.options import positive_int  # noqa: E402

QUIET = ["test=false", "++trainer.num_sanity_val_steps=0", "++trainer.limit_val_batches=0",
         "++trainer.check_val_every_n_epoch=null"]


class StepClock(pl.Callback):
    """Start times of the training steps (``on_train_batch_start``, the device synchronised first)."""

    def __init__(self, device: str) -> None:
        self.device, self.starts = device, []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        _sync(self.device)
        self.starts.append(time.perf_counter())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compose_cfg(overrides: list[str], device: str, steps: int, out: str) -> Any:
    trainer = "gpu" if device == "cuda" else "cpu"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"trainer={trainer}", *QUIET, f"++trainer.max_steps={steps}",
                                          f"paths.output_dir={out}", f"paths.log_dir={out}/logs", *overrides])
    return cfg


def _fresh(cfg: Any) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    pl.seed_everything(int(cfg.get("seed") or 0), verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    return datamodule, module


def time_plain(cfg: Any, device: str, warmup: int, steps: int) -> float:
    """Seconds per step of the plain loop."""
    datamodule, module = _fresh(cfg)
    datamodule.setup("fit")
    net, loss_fn = module.net.to(device).train(), module.loss.to(device)
    optimizer = module.optimizer_factory(params=param_groups(net))
    scheduler = module.scheduler_factory(optimizer=optimizer, total_steps=warmup + steps) \
        if module.scheduler_factory is not None else None
    starts: list[float] = []
    done = 0
    while done < warmup + steps + 1:
        for batch in datamodule.train_dataloader():
            if done == warmup + steps + 1:
                break
            _sync(device)
            starts.append(time.perf_counter())
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            loss = loss_fn(canonical_outputs(net(images)), masks)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
            done += 1
    return (starts[warmup + steps] - starts[warmup]) / steps


def _time_fit(trainer: pl.Trainer, clock: StepClock, cfg: Any, device: str, warmup: int, steps: int) -> float:
    datamodule, module = _fresh(cfg)
    trainer.fit(module, datamodule=datamodule)
    return (clock.starts[warmup + steps] - clock.starts[warmup]) / steps


def time_bare(cfg: Any, device: str, warmup: int, steps: int) -> float:
    clock = StepClock(device)
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=warmup + steps + 1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         precision=cfg.trainer.precision, callbacks=[clock])
    return _time_fit(trainer, clock, cfg, device, warmup, steps)


def time_template(cfg: Any, device: str, warmup: int, steps: int) -> float:
    clock = StepClock(device)
    callbacks = [*instantiate_callbacks(cfg.get("callbacks")), clock]
    trainer = instantiate_trainer(cfg.trainer, callbacks, instantiate_loggers(cfg.get("logger")))
    return _time_fit(trainer, clock, cfg, device, warmup, steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive_int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=positive_int, default=5, help="untimed steps first")
    parser.add_argument("--reps", type=positive_int, default=5, help="rounds of the three, interleaved")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("seg_template").setLevel(logging.ERROR)
    runs = {"plain": time_plain, "bare Lightning": time_bare, "template": time_template}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as out:
        for rep in range(args.reps):
            for name, run in runs.items():
                folder = f"{out}/{rep}_{name.replace(' ', '_')}"
                cfg = compose_cfg(args.overrides, args.device, args.warmup + args.steps + 1, folder)
                times[name].append(run(cfg, args.device, args.warmup, args.steps))
    print(f"\n{args.steps} steps x {args.reps} reps on {args.device} ({torch.get_num_threads()} threads), "
          f"overrides: {' '.join(args.overrides) or '(none)'}")
    print("| run | ms / step (median) | x plain (median of per-rep ratios) | per rep |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ratios = [v / p for v, p in zip(values, times["plain"], strict=True)]
        print(f"| {name} | {1000 * statistics.median(values):.1f} | {statistics.median(ratios):.3f} | "
              f"{', '.join(f'{r:.3f}' for r in ratios)} |")


if __name__ == "__main__":
    main()
