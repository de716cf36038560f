"""Catalogue of bad inputs (issue 11): what a careless or hostile user can pass to train / eval / predict and
the losses, and what must happen: one short message naming the culprit (config key, file or value) and exit
status 1, never a traceback for a user's mistake, never a silently wrong run.

- :data:`CASES`: the table. Each case runs a task in-process on tiny data and must raise a
  :class:`~seg_template.errors.UserError` of the listed class whose message matches the listed culprit and is
  short; ``seg_template.cli`` prints exactly that message as one block and exits 1, which the ``slow`` script
  tests below prove end to end for a handful of them.
- :data:`LOSS_CASES`: the losses called directly with bad tensors.
- runs that diverge or skip validation; slow: the real scripts print one block and exit 1 (or 0 with a
  warning). ``tests/test_bad_inputs_runs.py`` (slow) adds resume after ``kill -9``, a full disk during a save
  and one seed giving one ``metrics.csv``; ``tests/bad_input_files.py`` writes the files the cases name.

The catalogue's figures (inputs tried, short named messages, tracebacks left):
``pytest tests/test_bad_inputs.py tests/test_bad_inputs_runs.py -rxX`` (each pass is a short named message, or
a clean exit where one is due; each xfail names a traceback still left and where it must be fixed).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_template.cli import user_message
from seg_template.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MissingFileError,
    TrainingDiverged,
)
from seg_template.losses import CrossEntropy, OhemCrossEntropy, load_class_weights
from seg_template.train import train
from tests.bad_input_files import (
    FOLDER,
    MARKER,
    PREDICT,
    SMALL,
    TASKS,
    TRAIN,
    Case,
    RunsACommand,
    Workspace,
    assert_short_named,
    eval_case,
    nothing_ran,
    others_written,
    predict_case,
    raised_user_error,
    train_case,
)
from tests.helpers import run_script

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py



CASES = [
    # ---- config values
    train_case("config/batch_size_abc", "data.batch_size=abc", culprit=r"data\.batch_size.*'abc'"),
    train_case("config/batch_size_0", "data.batch_size=0", culprit=r"data\.batch_size=0: expected an integer >= 1"),
    train_case("config/batch_size_float", "data.batch_size=1.5", culprit=r"data\.batch_size.*1\.5"),
    train_case("config/num_workers_negative", "data.num_workers=-1", culprit=r"data\.num_workers.*-1"),
    train_case("config/preflight_unknown", "data.preflight=bogus", culprit=r"data\.preflight.*'bogus'"),
    train_case("config/num_classes_vs_names", "data.num_classes=3",
               culprit=r"data\.class_names.*data\.num_classes is 3"),
    train_case("config/model_num_classes", "model.num_classes=7", culprit=r"model\.num_classes=7"),
    train_case("config/ignore_index_0", "data.ignore_index=0", culprit=r"data\.ignore_index=0"),
    train_case("config/model_width_0", "model.width=0", culprit=r"model\.width.*0"),
    train_case("config/max_epochs_forever", "trainer.max_epochs=-1", culprit=r"trainer\.max_epochs=-1"),
    train_case("config/lr_negative", "optimizer.lr=-1", culprit=r"optimizer\.lr=-1: expected a finite number >= 0"),
    train_case("config/lr_text", "optimizer.lr=abc", culprit=r"optimizer\.lr='abc': expected a finite number"),
    train_case("config/weight_decay_negative", "optimizer.weight_decay=-1", culprit=r"weight_decay.*-1"),
    train_case("config/optimizer_unknown_key", "+optimizer.momentum=0.9", culprit=r"momentum"),
    train_case("config/scheduler_power", "scheduler.power=-1", culprit=r"scheduler\.power.*-1"),
    train_case("config/scheduler_warmup", "scheduler.warmup_steps=-1",
               culprit=r"scheduler\.warmup_steps.*-1"),
    train_case("config/nan_guard_patience", "callbacks.nan_guard.patience=0",
               culprit=r"nan_guard\.patience.*0"),
    train_case("config/save_last_link", "callbacks.model_checkpoint.save_last=link",
               culprit=r"save_last=link"),
    train_case("config/every_n_train_steps", "callbacks.model_checkpoint.every_n_train_steps=-1",
               culprit=r"every_n_train_steps.*-1"),
    train_case("config/monitor_not_logged", "callbacks.model_checkpoint.monitor=val/nope",
               "trainer.max_epochs=1",
               culprit=r"monitor='val/nope'.*val/mIoU"),
    # ---- config values of the wrong type (a typo on the command line stays a string)
    train_case("config/patience_text", "callbacks.nan_guard.patience=abc",
               culprit=r"nan_guard\.patience.*'abc'"),
    train_case("config/check_gradients_text", "callbacks.nan_guard.check_gradients=flase",
               culprit=r"check_gradients.*'flase'"),
    train_case("config/checkpoint_mode", "callbacks.model_checkpoint.mode=maximum",
               culprit=r"model_checkpoint.*maximum"),
    train_case("config/save_top_k_text", "callbacks.model_checkpoint.save_top_k=abc",
               culprit=r"model_checkpoint.*'abc'"),
    train_case("config/every_n_train_steps_text", "callbacks.model_checkpoint.every_n_train_steps=abc",
               culprit=r"every_n_train_steps.*'abc'"),
    train_case("config/scheduler_power_text", "scheduler.power=abc", culprit=r"scheduler\.power.*'abc'"),
    train_case("config/model_width_text", "model.width=abc", culprit=r"model\.width.*abc"),
    train_case("config/train_length_text", "data.train_set.length=abc",
               culprit=r"data\.train_set\.length.*'abc'"),
    train_case("config/ignore_index_text", "data.ignore_index=abc", culprit=r"data\.ignore_index.*'abc'"),
    train_case("loss/ohem_thresh_text", "loss=ohem", "loss.main.thresh=abc", culprit=r"loss\.main\.thresh"),
    train_case("loss/aux_weight_text", "loss.aux_weight=abc", culprit=r"loss\.aux_weight"),
    train_case("loss/memory_efficient_text", "loss.memory_efficient=flase",
               culprit=r"memory_efficient.*'flase'"),
    train_case("config/train_set_smaller_than_batch", "data.train_set.length=3",
               culprit=r"data\.train_set has 3 samples.*data\.batch_size=4"),
    train_case("config/val_set_empty", "data.val_set.length=0", error=DataError,
               culprit=r"data\.val_set.*empty"),
    train_case("config/seed_text", "seed=abc", culprit=r"seed.*'abc'"),
    train_case("config/max_epochs_-2", "trainer.max_epochs=-2", culprit=r"max_epochs"),
    train_case("config/precision_unknown", "trainer.precision=bogus",
                            culprit=r"(?i)precision.*bogus"),
    train_case("config/check_val_every_0", "trainer.check_val_every_n_epoch=0",
                            culprit=r"check_val_every_n_epoch"),
    eval_case("config/eval_split", "ckpt_path={good}", "split=train", error=ConfigError,
              culprit=r"split='train': expected one of 'val', 'test'"),
    eval_case("config/eval_no_ckpt_path", error=ConfigError,
              culprit=r"ckpt_path is required: python eval\.py"),
    eval_case("config/inference_mode", "ckpt_path={good}", "inference.mode=bogus", error=ConfigError,
              culprit=r"inference\.mode.*bogus"),
    eval_case("config/slide_without_crop", "ckpt_path={good}", "inference.mode=slide", error=ConfigError,
              culprit=r"inference\.crop_size"),
    predict_case("config/predict_no_input", "ckpt_path={good}", error=ConfigError,
                 culprit=r"input is required"),
    predict_case("config/predict_device", "ckpt_path={good}", "input={images}", "device=bogus",
                 error=ConfigError, culprit=r"device=bogus"),
    predict_case("config/predict_missing_gpu", "ckpt_path={good}", "input={images}", "device=cuda:7",
                 error=ConfigError, culprit=r"device=cuda:7.*GPU"),
    # ---- losses and class weights
    train_case("loss/wce_without_weights", "loss=wce", "data.class_weights=null",
               culprit=r"loss=wce needs class weights.*data\.class_weights"),
    train_case("loss/class_weights_all_zero", "loss=wce", "data.class_weights=[0,0,0,0,0,0]",
               culprit=r"every class weight is 0.*data\.class_weights"),
    train_case("loss/class_weights_negative", "loss=wce", "data.class_weights=[1,-1,1,1,1,1]",
               culprit=r"-1\.0.*data\.class_weights"),
    train_case("loss/class_weights_length", "loss=wce", "data.class_weights=[1,2]", "trainer.max_epochs=1",
               culprit=r"class weights have 2 entries.*6 classes"),
    train_case("loss/class_weights_file_missing", "loss=wce", "data.class_weights={missing}.json",
               error=MissingFileError, culprit=r"missing\.json"),
    train_case("loss/class_weights_file_broken", "loss=wce", "data.class_weights={badjson}",
               culprit=r"badjson\.json"),
    train_case("loss/ohem_thresh", "loss=ohem", "loss.main.thresh=2", culprit=r"loss\.main\.thresh"),
    train_case("loss/ohem_min_kept", "loss=ohem", "loss.main.min_kept=0", culprit=r"loss\.main\.min_kept"),
    train_case("loss/aux_weight", "loss.aux_weight=-1", culprit=r"loss\.aux_weight"),
    train_case("loss/ignore_index_mismatch", "loss.main.ignore_index=-5", "trainer.max_epochs=1",
               culprit=r"loss\.main\.ignore_index=-5 but data\.ignore_index=255"),
    train_case("loss/align_corners_mismatch", "loss.main.align_corners=true",
               culprit=r"loss\.main\.align_corners=True but model\.align_corners=False"),
    # ---- data on disk (data=folder)
    train_case("data/root_missing", data="missing", error=MissingFileError,
               culprit=r"folder.*expected this layout"),
    train_case("data/labels_out_of_range", data="out_of_range", error=DataError,
               culprit=r"\[7\] outside \[0, 3\).*train_001\.png"),
    train_case("data/all_masks_ignore", data="all_ignore", error=DataError,
               culprit=r"data\.train_set.*none of its 4 masks has a labelled pixel"),
    train_case("data/size_mismatch", data="size_mismatch", error=DataError,
               culprit=r"train_001\.jpg is 32x32.*train_001\.png is 16x16"),
    train_case("data/truncated_image", data="truncated_image", error=DataError, culprit=r"train_002\.jpg"),
    train_case("data/image_without_mask", data="unpaired", error=MissingFileError, culprit=r"train_001"),
    train_case("data/rgb_mask_as_index", data="rgb_mask", error=DataError, culprit=r"train_001\.png.*RGB"),
    train_case("data/split_without_images", data="no_images", error=MissingFileError, culprit=r"train"),
    train_case("data/bad_labels_without_preflight", "data.preflight=none", "trainer.max_epochs=1",
               data="out_of_range", error=DataError, culprit=r"train_001\.png.*\[7\] outside \[0, 3\)"),
    eval_case("data/eval_labels_out_of_range", "data.root={folder__val_out_of_range}", "ckpt_path={good3}",
              base=tuple(FOLDER[:-3]), error=DataError, culprit=r"\[9\].*val_001\.png"),
    # ---- checkpoints and weights files
    train_case("ckpt/train_missing", "ckpt_path={missing}.ckpt", error=MissingFileError,
               culprit=r"missing\.ckpt"),
    train_case("ckpt/train_empty", "ckpt_path={empty}", error=CheckpointError,
               culprit=r"ckpt_path: '.*empty' is empty"),
    train_case("ckpt/train_text", "ckpt_path={text}", error=CheckpointError,
               culprit=r"text' is not a PyTorch"),
    train_case("ckpt/train_truncated", "ckpt_path={truncated}", error=CheckpointError, culprit=r"truncated'"),
    train_case("ckpt/train_crafted_pickle", "ckpt_path={crafted}", error=CheckpointError,
               culprit=r"crafted'.*run code", check=nothing_ran),
    train_case("ckpt/train_weights_only", "ckpt_path={weights}", error=CheckpointError,
               culprit=r"weights' is not a Lightning training checkpoint.*model\.pretrained"),
    train_case("ckpt/train_other_class_count", "ckpt_path={classes5}", error=CheckpointError,
               culprit=r"classes5'.*checkpoint \[5.*model \[6.*num_classes=5"),
    train_case("ckpt/train_other_model_size", "ckpt_path={widetrain}", error=CheckpointError,
               culprit=r"widetrain'.*\(checkpoint \[8, 3, 3, 3\], model \[4, 3, 3, 3\]\)"),
    train_case("ckpt/train_is_a_folder", "ckpt_path={images}", error=MissingFileError, culprit=r"images'"),
    eval_case("ckpt/eval_empty", "ckpt_path={empty}", culprit=r"empty' is empty"),
    eval_case("ckpt/eval_text", "ckpt_path={text}", culprit=r"text' is not a PyTorch"),
    eval_case("ckpt/eval_truncated", "ckpt_path={truncated}", culprit=r"truncated'"),
    eval_case("ckpt/eval_crafted_pickle", "ckpt_path={crafted}", culprit=r"crafted'.*run code",
              check=nothing_ran),
    eval_case("ckpt/eval_other_class_count", "ckpt_path={classes5}", culprit=r"classes5'.*num_classes=5"),
    eval_case("ckpt/eval_other_model_size", "ckpt_path={wide}", culprit=r"wide'.*model="),
    predict_case("ckpt/predict_empty", "ckpt_path={empty}", "input={images}", culprit=r"empty' is empty"),
    predict_case("ckpt/predict_text", "ckpt_path={text}", "input={images}",
                 culprit=r"text' is not a PyTorch"),
    predict_case("ckpt/predict_garbage", "ckpt_path={garbage}", "input={images}", culprit=r"garbage'"),
    predict_case("ckpt/predict_crafted_pickle", "ckpt_path={crafted}", "input={images}",
                 culprit=r"crafted'.*run code", check=nothing_ran),
    predict_case("ckpt/predict_other_class_count", "ckpt_path={classes5}", "input={images}",
                 culprit=r"classes5'.*\[5"),
    train_case("ckpt/pretrained_garbage", "model.pretrained={garbage}", error=CheckpointError,
               culprit=r"model\.pretrained: '.*garbage' is not a"),
    train_case("ckpt/pretrained_missing", "model.pretrained={missing}.pth", error=MissingFileError,
               culprit=r"model\.pretrained.*missing\.pth"),
    train_case("ckpt/pretrained_crafted_pickle", "model.pretrained={crafted}", error=CheckpointError,
               culprit=r"crafted'.*run code", check=nothing_ran),
    train_case("ckpt/pretrained_other_architecture", "model.pretrained={linear}", error=CheckpointError,
               culprit=r"linear' does not fit"),
    # ---- predict inputs
    predict_case("predict/input_missing", "ckpt_path={good}", "input={missing}", error=MissingFileError,
                 culprit=r"input=.*missing"),
    predict_case("predict/input_empty_folder", "ckpt_path={good}", "input={images__empty_folder}",
                 error=MissingFileError, culprit=r"images__empty_folder holds no images"),
    predict_case("predict/truncated_image", "ckpt_path={good}", "input={images__truncated}", error=DataError,
                 culprit=r"1 of 3 input images.*img1\.png", check=others_written),
    predict_case("predict/text_as_image", "ckpt_path={good}", "input={images__text}", error=DataError,
                 culprit=r"img1\.png", check=others_written),
    predict_case("predict/same_names", "ckpt_path={good}",
                 "input=[{images__same_names}/sub/img0.png,{images__same_names}/copy/img0.png]",
                 error=ConfigError, culprit=r"same file name"),
    predict_case("predict/output_dir_is_a_file", "ckpt_path={good}", "input={images}", "output_dir={text}",
                 error=ConfigError, culprit=r"output_dir=.*text"),
]

@pytest.fixture
def workspace(compose_cfg, tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "files", compose_cfg)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_one_short_named_message(case: Case, compose_cfg, workspace: Workspace,
                                                tmp_path: Path) -> None:
    workspace.root.mkdir()
    out = tmp_path / "out"
    overrides = [o.format_map(workspace) for o in case.overrides]
    cfg = compose_cfg(case.task, overrides, output_dir=out)
    if case.task == "predict" and not any(o.startswith("output_dir=") for o in overrides):
        cfg.output_dir = str(out)
    err = raised_user_error(lambda: TASKS[case.task](cfg, overrides))
    assert isinstance(err, case.error), f"{type(err).__name__}, expected {case.error.__name__}: {err}"
    assert_short_named(user_message(err), case.culprit)
    if case.check is not None:
        case.check(workspace, out)


# ---------------------------------------------------------------------------------------------- losses
def _logits(n_classes: int = 3, fill: float | None = None) -> torch.Tensor:
    logits = torch.randn(2, n_classes, 4, 4, generator=torch.Generator().manual_seed(0))
    if fill is not None:
        logits[0, 0, 1, 1] = fill
    return logits.requires_grad_()


def _target(bad: int | None = None) -> torch.Tensor:
    target = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    if bad is not None:
        target[1, 3, 3] = bad
    return target


LOSSES = {"ce": lambda **kw: CrossEntropy(**kw),
          "ce_eager": lambda **kw: CrossEntropy(memory_efficient=False, **kw),
          "ohem": lambda **kw: OhemCrossEntropy(min_kept=10, memory_efficient=True, **kw),
          "ohem_eager": lambda **kw: OhemCrossEntropy(min_kept=10, **kw)}

#: (id, loss, constructor kwargs, logits, target, error, culprit)
LOSS_CASES = [
    *[(f"loss/labels_out_of_range_{name}", name, {}, _logits, lambda: _target(7), DataError, r"labels \[7\]")
      for name in LOSSES],
    ("loss/negative_label", "ce", {}, _logits, lambda: _target(-3), DataError, r"labels \[-3\]"),
    ("loss/weight_length", "ce", {"weight": [1.0, 2.0]}, _logits, _target, ConfigError,
     r"2 entries.*3 classes"),
    ("loss/weights_all_zero", "ohem", {"weight": [0.0, 0.0, 0.0]}, _logits, _target, ConfigError,
     r"every class weight is 0"),
    ("loss/weights_nan", "ce", {"weight": [1.0, float("nan"), 1.0]}, _logits, _target, ConfigError,
     r"\[nan\]"),
]


@pytest.mark.parametrize(("name", "kwargs", "logits", "target", "error", "culprit"),
                         [c[1:] for c in LOSS_CASES], ids=[c[0] for c in LOSS_CASES])
def test_bad_loss_input_is_named(name, kwargs, logits, target, error, culprit) -> None:
    err = raised_user_error(lambda: LOSSES[name](**kwargs)(logits(), target()))
    assert isinstance(err, error)
    assert_short_named(user_message(err), culprit)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("fill", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_logits_give_a_non_finite_loss(name: str, fill: float) -> None:
    """Never a finite loss (OHEM's selection would drop the bad pixel) over NaN gradients."""
    assert not torch.isfinite(LOSSES[name]()(_logits(fill=fill), _target()))


def test_class_weight_files_never_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "weights.npy"
    np.save(path, np.array([RunsACommand(tmp_path / MARKER)], dtype=object), allow_pickle=True)
    err = raised_user_error(lambda: load_class_weights(str(path)))
    assert_short_named(user_message(err), r"weights\.npy")
    assert not (tmp_path / MARKER).exists()


# ------------------------------------------------------------------------------- runs that end badly
def _checkpoints_are_finite(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    for name in names:
        state = torch.load(folder / name, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), name
    return names


@pytest.mark.parametrize("loss", ["ce", "ohem"])
def test_diverging_run_stops_with_one_message(loss: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(overrides=[*TRAIN, f"loss={loss}", "optimizer.lr=1e6", "trainer.max_epochs=3"],
                      output_dir=tmp_path)
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, TrainingDiverged)
    assert_short_named(user_message(err), r"(step \d+|NaN or inf).*optimizer\.lr \(now 1e\+06\)")
    _checkpoints_are_finite(tmp_path / "checkpoints")


def test_run_without_validation_warns_instead_of_failing(compose_cfg, tmp_path: Path, caplog) -> None:
    from seg_template.train import run_task

    cfg = compose_cfg(overrides=[*TRAIN, "++trainer.limit_val_batches=0", "trainer.max_epochs=1"],
                      output_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        assert run_task(cfg) is None
    assert "optimized_metric='val/mIoU' was not logged" in caplog.text


# ---------------------------------------------------------------------------------- the real scripts
def _short_block(result: subprocess.CompletedProcess, culprit: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "][ERROR] - " in line]
    assert len(errors) == 1, output[-3000:]  # one message, once
    block = output[output.index(errors[0]):]
    assert_short_named(block, culprit)


SCRIPT_CASES = [
    ("config/batch_size_abc", ["train.py", *TRAIN, "data.batch_size=abc"],
     r"ConfigError: data\.batch_size.*'abc'"),
    ("config/batch_size_0", ["train.py", "data.batch_size=0"], r"ConfigError: data\.batch_size=0: expected"),
    ("config/lr_negative", ["train.py", *TRAIN, "optimizer.lr=-1"], r"ConfigError: optimizer\.lr=-1: expected"),
    ("ckpt/eval_empty", ["eval.py", *SMALL, "ckpt_path={empty}"],
     r"CheckpointError: ckpt_path: '.*empty' is empty"),
    ("ckpt/pretrained_garbage", ["train.py", *TRAIN, "model.pretrained={garbage}"],
     r"model\.pretrained: .*garbage"),
    ("data/labels_out_of_range", ["train.py", *FOLDER, "data.root={folder__out_of_range}"],
     r"DataError: .*\[7\].*train_001\.png"),
    ("loss/diverged", ["train.py", *TRAIN, "optimizer.lr=1e6", "trainer.max_epochs=3"],
     r"TrainingDiverged: .*optimizer\.lr"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "culprit"), [c[1:] for c in SCRIPT_CASES], ids=[c[0] for c in SCRIPT_CASES])
def test_script_prints_one_short_block_and_exits_1(args, culprit, workspace: Workspace,
                                                   tmp_path: Path) -> None:
    workspace.root.mkdir()
    result = run_script(*[a.format_map(workspace) for a in args], f"paths.log_dir={tmp_path / 'logs'}",
                        timeout=300)
    _short_block(result, culprit)
    runs = tmp_path / "logs" / "train" / "runs"
    if args[0] == "train.py" and culprit.startswith("ConfigError"):  # refused before a run folder exists
        assert not runs.exists() or not list(runs.iterdir()), list(runs.iterdir())
    if args[0] == "train.py" and runs.is_dir():
        for run in runs.iterdir():
            _checkpoints_are_finite(run / "checkpoints")


@pytest.mark.slow
def test_predict_script_writes_the_readable_images_and_lists_the_others(workspace: Workspace,
                                                                        tmp_path: Path) -> None:
    workspace.root.mkdir()
    out = tmp_path / "pred"
    result = run_script("predict.py", *PREDICT, "device=cpu", f"ckpt_path={workspace['good']}",
                        f"input={workspace['images__truncated']}", f"output_dir={out}",
                        f"paths.log_dir={tmp_path / 'logs'}", timeout=300)
    _short_block(result, r"DataError: 1 of 3 input images.*img1\.png")
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img0.png", "img2.png"]


@pytest.mark.slow
def test_script_without_validation_exits_0_with_a_warning(tmp_path: Path) -> None:
    result = run_script("train.py", *TRAIN, "++trainer.limit_val_batches=0", "trainer.max_epochs=1",
                        f"paths.log_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "optimized_metric='val/mIoU' was not logged" in result.stdout + result.stderr


def test_the_catalogue_covers_every_kind_of_input() -> None:
    ids = [c.values[0].id if hasattr(c, "values") else c.id for c in CASES] + [c[0] for c in LOSS_CASES]
    kinds = {i.split("/")[0] for i in ids}
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert kinds == {"config", "loss", "data", "ckpt", "predict"}
