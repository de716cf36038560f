"""Every GPU path of the template in one command, on one GPU, in under 9 minutes:

    python scripts/gpu_check.py [--out DIR] [--only fit-gpu,loss-a,...]

Prints one table (check, status ok/FAIL/skip, key figure, seconds) and exits 1 if any check failed:

- fit-gpu / fit-16-mixed / fit-bf16-mixed / compile / ddp-syncbn: ``train.py`` on tiny synthetic data in a
  subprocess (trainer=gpu; trainer.precision=16-mixed / bf16-mixed; model.compile=true; trainer=ddp with
  trainer.devices=1, i.e. NCCL and SyncBatchNorm with one process);
- eval-slide-flip: ``eval.py`` on fit-gpu's checkpoint with sliding windows and flips;
- fit-ema: ``train.py callbacks=[default,ema]`` on the GPU: the average on the GPU and finite, its memory, and
  the time of one EMA update against a training step (its cost);
- syncs: ``train.py callbacks=[default,ema]`` with ``torch.cuda.set_sync_debug_mode("warn")`` during the training
  steps that are not logging steps: no synchronising CUDA call there (tests/test_host_syncs.py counts the same
  on the CPU);
- fit-smp-amp: ``model=smp_segformer`` (segmentation_models_pytorch) in bf16 (else 16-bit) mixed precision,
  channels-last; skipped without the smp extra;
- loss-a / loss-b: the memory-efficient CE against interpolate-then-CE on CUDA at 2x19x128x256 -> 512x1024
  and 8x150x128x128 -> 512x512: value and gradient parity, time ratio, peak-memory ratio
  (``torch.cuda.max_memory_allocated``), with scripts/bench_losses.py's functions;
- hrnet_w48: training throughput (images/s) at batch 2, 512x1024, mixed precision (bf16 where supported).

Without CUDA it says so, checks that everything imports and the configs it uses compose, and exits 0.
Each check's output goes to ``<out>/<check>.log`` (a temporary folder unless --out), kept when one fails.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from gpu_probes import ema_figure, sync_figure  # noqa: E402

BUDGET_S = 540  # the whole run stays under 9 minutes: a check that would start later is not run
TINY = ["data.train_set.length=16", "data.val_set.length=4", "data.test_set.length=4",
        "data.train_set.image_size=[64,64]", "data.batch_size=4", "trainer.max_epochs=1",
        "callbacks.rich_progress_bar=null"]
CHECKS = ["imports", "fit-gpu", "fit-16-mixed", "fit-bf16-mixed", "loss-a", "loss-b", "compile", "ddp-syncbn",
          "eval-slide-flip", "fit-ema", "syncs", "fit-smp-amp", "hrnet_w48"]


class Skip(Exception):
    """A check that does not apply on this machine (e.g. no bf16)."""


def compose(*overrides: str):
    """configs/train.yaml with ``overrides``, as the entry points compose it (no Hydra run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from seg_template.paths import CONFIG_DIR, export_project_root, register_resolvers

    export_project_root()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def run_entry(out: Path, name: str, script: str, overrides: list[str], timeout: float) -> tuple[Path, str]:
    """``python <script> <overrides>`` from the repository root, logs under ``<out>/<name>``; returns the run
    folder and the output. Raises RuntimeError with the output's last error line when it fails."""
    log_dir = out / name
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"),
                                                                                   os.environ.get("PYTHONPATH", "")])}
    try:
        result = subprocess.run([sys.executable, script, *overrides, f"paths.log_dir={log_dir}"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=timeout)
        text, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as err:
        text, code = f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout:.0f} s", -1
    (out / f"{name}.log").write_text(text if isinstance(text, str) else text.decode(errors="replace"))
    if code != 0:
        lines = [ln for ln in str(text).splitlines() if "Error" in ln or "error" in ln or "timed out" in ln]
        reason = (lines or [f"exit code {code}"])[-1].strip()[:90]
        raise RuntimeError(f"{reason} (log: {out / f'{name}.log'})")
    runs = sorted((log_dir / Path(script).stem / "runs").iterdir())
    return runs[-1], str(text)


def last_metric(run: Path, name: str) -> float:
    with open(run / "metrics.csv") as f:
        values = [row[name] for row in csv.DictReader(f) if row.get(name)]
    if not values:
        raise RuntimeError(f"no {name} in {run / 'metrics.csv'}")
    if not math.isfinite(float(values[-1])):  # a run that logged NaN has not passed
        raise RuntimeError(f"{name} is {values[-1]} in {run / 'metrics.csv'}")
    return float(values[-1])


def fit(out: Path, name: str, timeout: float, *overrides: str, trainer: str = "gpu",
        expect: str = "") -> tuple[str, Path]:
    """``train.py trainer=<trainer>`` on TINY data: (its val and test mIoU, the run folder)."""
    run, text = run_entry(out, name, "train.py", [f"trainer={trainer}", *TINY, *overrides], timeout)
    if expect and expect not in text:
        raise RuntimeError(f"'{expect}' not in the output (log: {out / f'{name}.log'})")
    return f"val/mIoU {last_metric(run, 'val/mIoU'):.3f}, test/mIoU {last_metric(run, 'test/mIoU'):.3f}", run


def check_imports() -> str:
    """Import every task and the modules the checks use; compose every config they run."""
    import importlib

    for module in ("pytorch_lightning", "hydra", "seg_template.train", "seg_template.eval", "seg_template.predict",
                   "seg_template.losses", "seg_template.models.hrnet", "seg_template.inference", "bench_losses",
                   "gpu_probes"):
        importlib.import_module(module)
    for overrides in (["trainer=gpu", "trainer.precision=bf16-mixed", "model.compile=true"],
                      ["trainer=ddp", "trainer.devices=1"], ["model=hrnet_w48", "data=cityscapes"],
                      ["trainer=gpu", "callbacks=[default,ema]", "+callbacks.probe._target_=gpu_probes.EMAProbe"],
                      ["trainer=gpu", "+callbacks.probe._target_=gpu_probes.SyncProbe"]):
        compose(*overrides)
    if not torch.cuda.is_available():
        return f"torch {torch.__version__}, no CUDA device"
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)} "
            f"({torch.cuda.device_count()} visible)")


def evaluate_slide_flip(out: Path, ckpt: Path, timeout: float, trainer: str = "gpu") -> str:
    """``eval.py`` of ``ckpt`` with overlapping sliding windows and flips on TINY's 64x64 images."""
    run, _ = run_entry(out, "eval-slide-flip", "eval.py", [f"trainer={trainer}", f"ckpt_path={ckpt}", *TINY,
                       "inference=slide", "inference.crop_size=[48,48]", "inference.stride=[32,32]",
                       "inference.flip=true"], timeout)
    return f"val/mIoU {last_metric(run, 'val/mIoU'):.3f} (48x48 windows over 64x64, flip)"


def check_loss(key: str, device: str = "cuda") -> str:
    """Parity, time and peak-memory ratios of the memory-efficient CE vs interpolate-then-CE (``key``: a
    shape of scripts/bench_losses.py, ``a``, ``b`` or ``NxCxhxw:HxW``)."""
    from bench_losses import BASELINE, ROWS, SHAPES, make_inputs, peak_memory, plain_ce, time_rows

    lean = "CE (memory_efficient)"
    logits, target = make_inputs(key, "random", device)
    values, grads = [], []
    for fn in (plain_ce, ROWS[lean]().to(device)):
        loss = fn(logits, target)
        loss.backward()
        values.append(loss.detach().double())
        grads.append(logits.grad.double())
        logits.grad = None
    d_loss = float((values[1] - values[0]).abs() / values[0].abs())
    d_grad = float((grads[1] - grads[0]).abs().max() / grads[0].abs().max())
    del logits, target, values, grads
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    times = time_rows([BASELINE, lean], key, "random", device, reps=5, warmup=2)
    ratio = statistics.median(t / b for t, b in zip(times[lean], times[BASELINE], strict=True))
    mem = {row: peak_memory(row, key, "random", device) for row in (BASELINE, lean)}
    figure = (f"{SHAPES.get(key, key)}: rel diff loss {d_loss:.0e} grad {d_grad:.0e}; time x{ratio:.2f}; "
              f"peak mem x{mem[lean] / max(mem[BASELINE], 1e-9):.2f} ({mem[lean]:.0f}/{mem[BASELINE]:.0f} MiB)")
    if not (d_loss <= 1e-4 and d_grad <= 1e-3):  # written so that NaN fails
        raise RuntimeError("parity lost: " + figure)
    return figure


def check_hrnet_throughput(steps: int = 10, warmup: int = 3) -> str:
    """Training steps of hrnet_w48 + the configured loss at batch 2, 512x1024, autocast; images/s."""
    from hydra.utils import instantiate

    from seg_template.build import build_net

    cfg = compose("model=hrnet_w48", "data=cityscapes", "model.pretrained=null")
    net = build_net(cfg.model)[0].cuda().train()
    loss_fn = instantiate(cfg.loss).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.randn(2, 3, 512, 1024, device="cuda")
    masks = torch.randint(0, cfg.data.num_classes, (2, 512, 1024), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            loss = loss_fn(net(images), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    rate = 2 * steps / (time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)}")
    return (f"{rate:.1f} images/s ({str(dtype).removeprefix('torch.')}), "
            f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def gpu_checks(out: Path, deadline: float) -> dict[str, Callable[[], str]]:
    """The CUDA checks in run order, each a function returning its key figure (raising on failure)."""
    left = lambda limit: max(1.0, min(limit, deadline - time.monotonic()))  # noqa: E731
    ckpt: list[Path] = []

    def fit_gpu() -> str:
        figure, run = fit(out, "fit-gpu", left(150))
        ckpt.append(run / "checkpoints" / "best.ckpt")
        return figure

    def bf16() -> str:
        if not torch.cuda.is_bf16_supported():
            raise Skip(f"{torch.cuda.get_device_name(0)} has no bf16")
        return fit(out, "fit-bf16-mixed", left(120), "trainer.precision=bf16-mixed", expect="bfloat16")[0]

    def ddp() -> str:  # NCCL with one process, SyncBatchNorm swapped in by the strategy
        run, text = run_entry(out, "ddp-syncbn", "train.py", ["trainer=ddp", "trainer.devices=1", *TINY,
                              "+callbacks.probe._target_=gpu_probes.SyncBNProbe"], left(150))
        layers = [ln.split("=")[1] for ln in text.splitlines() if ln.startswith("GPU_CHECK_SYNCBN_LAYERS=")]
        if "nccl" not in text or not layers or int(layers[-1]) == 0:
            raise RuntimeError(f"expected the nccl backend and SyncBatchNorm layers (log: {out}/ddp-syncbn.log)")
        return f"nccl, {layers[-1]} SyncBatchNorm layers, val/mIoU {last_metric(run, 'val/mIoU'):.3f}"

    def ema() -> str:  # the average on the GPU, finite, and what an update costs against a training step
        run, text = run_entry(out, "fit-ema", "train.py", ["trainer=gpu", *TINY, "callbacks=[default,ema]",
                              "+callbacks.probe._target_=gpu_probes.EMAProbe"], left(150))
        return f"{ema_figure(text)}; val/mIoU {last_metric(run, 'val/mIoU'):.3f}"

    def syncs() -> str:  # the default training step never waits for the GPU outside logging steps
        _, text = run_entry(out, "syncs", "train.py", ["trainer=gpu", *TINY, "data.train_set.length=96",
                            "callbacks=[default,ema]", "+callbacks.probe._target_=gpu_probes.SyncProbe"], left(150))
        return sync_figure(text)

    def smp_amp() -> str:  # an smp model (SegFormer, MiT-B0) in mixed precision, channels-last
        try:
            import segmentation_models_pytorch  # noqa: F401
        except ImportError as err:
            raise Skip('segmentation_models_pytorch is not installed (pip install -e ".[smp]")') from err
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        figure = fit(out, "fit-smp-amp", left(180), "model=smp_segformer", "model.pretrained=null",
                     "model.channels_last=true", f"trainer.precision={precision}")[0]
        return f"{precision}, channels_last: {figure}"

    def evaluate() -> str:
        if not ckpt or not ckpt[0].is_file():
            raise RuntimeError("needs fit-gpu's checkpoint")
        return evaluate_slide_flip(out, ckpt[0], left(120))

    return {
        "fit-gpu": fit_gpu,
        "fit-16-mixed": lambda: fit(out, "fit-16-mixed", left(120), "trainer.precision=16-mixed",
                                    expect="16bit Automatic Mixed Precision")[0],
        "fit-bf16-mixed": bf16,
        "loss-a": lambda: check_loss("a"),
        "loss-b": lambda: check_loss("b"),
        # the first steps compile (tens of seconds): a longer limit than the other fits
        "compile": lambda: fit(out, "compile", left(240), "model.compile=true")[0],
        "ddp-syncbn": ddp,
        "eval-slide-flip": evaluate,
        "fit-ema": ema,
        "syncs": syncs,
        "fit-smp-amp": smp_amp,
        "hrnet_w48": check_hrnet_throughput,
    }


def run_check(name: str, func: Callable[[], str]) -> tuple[str, str, str, float]:
    start = time.monotonic()
    try:
        status, figure = "ok", func()
    except Skip as why:
        status, figure = "skip", str(why)
    except Exception as err:  # a failed check is a row of the table, not the end of the run
        status, figure = "FAIL", f"{type(err).__name__}: {err}"
        traceback.print_exc(file=sys.stderr)
    return name, status, figure, time.monotonic() - start


MARKER = ".gpu_check"  # in every --out folder this script wrote: it may write there again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="keep every check's logs and runs here (default: a temporary "
                                                 "folder, removed unless a check fails)")
    parser.add_argument("--only", help=f"comma list of checks (default all): {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else CHECKS
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {CHECKS}")
    deadline = time.monotonic() + BUDGET_S
    if args.out is not None and args.out.exists() and not (args.out / MARKER).is_file() and (
            not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out}: not a new or empty folder, nor an earlier gpu_check's (marked by {MARKER}); "
                     "its runs and logs could overwrite files of yours. Pick another --out.")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()

    rows = [run_check("imports", check_imports)]
    if not torch.cuda.is_available():
        print("No CUDA device: only the imports and the configs were checked.")
        rows += [(name, "skip", "no CUDA device", 0.0) for name in only if name != "imports"]
    elif rows[0][1] == "ok":
        for name, func in gpu_checks(out, deadline).items():
            if name not in only:
                continue
            if time.monotonic() > deadline - 10:
                rows.append((name, "FAIL", f"not run: the {BUDGET_S} s budget is spent", 0.0))
                continue
            rows.append(run_check(name, func))
            print(f"  {rows[-1][0]}: {rows[-1][1]} ({rows[-1][3]:.0f} s)", file=sys.stderr, flush=True)

    failed = [r for r in rows if r[1] == "FAIL"]
    width = max(len(r[2]) for r in rows)
    print(f"\n{'check':<16} {'status':<6} {'key figure':<{width}} {'seconds':>7}")
    for name, status, figure, seconds in rows:
        print(f"{name:<16} {status:<6} {figure:<{width}} {seconds:>7.1f}")
    print(f"{len(rows) - len(failed)} ok or skipped, {len(failed)} failed; logs: "
          f"{out if failed or args.out else '(removed)'}")
    if not failed and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
