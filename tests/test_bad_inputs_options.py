"""Catalogue family "typed options" (issue 17, section 6): every option is checked once, by
``seg_template.options``, against the kinds its config files give it and the table of ranges and choices.

Each case runs a task in-process (train / eval / predict / export on tiny data, as ``tests/test_bad_inputs.py``)
and must raise a ``ConfigError`` naming the key and the value. Several used to go silently wrong:
``inference.bounded=flase`` ran the bounded mode (``bool("flase")`` is True), ``seed=2**40`` made Lightning
pick a random seed, ``model.compile=flase`` compiled the model, duplicated class names merged two metrics
columns, a second predict run over a folder holding its outputs segmented its own masks, and
``compute_class_weights.py --limit -1`` used all masks but the last.

Wave 3 (the schema tightened): a key no config file writes is refused with the closest real key
(``+resume_in_plce=false`` resumed in place and overwrote the run's last.ckpt; ``+seeed=3`` was ignored), unless
the ``_target_`` of its node takes it; keys a target does not take are named before building (they were
``TypeError`` tracebacks); lists keep the length and entry kind of their files (``optimizer.betas=[0.9]`` was a
``ConfigIndexError`` traceback, ``data.train_set.image_size=[32]`` was reported as ``crop_size``);
``scale_range`` entries that leave no pixel (a ``cv2.error`` mid-epoch); class-weight files holding booleans
(``true`` was weight 1), nested too deep (a ``RecursionError``), or ``.npy`` arrays of bool / text.

    pytest tests/test_bad_inputs_options.py -v
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from pytorch_lightning import Callback

from seg_template import options
from seg_template.cli import user_message
from seg_template.data.preflight import PREFLIGHT_MODES
from seg_template.errors import ConfigError, MissingFileError
from seg_template.export import run_export
from seg_template.options import check_options, problems, schema
from seg_template.paths import CONFIG_DIR
from seg_template.predict import run_predict
from seg_template.train import train
from tests.bad_input_files import (
    PREDICT,
    TASKS,
    TRAIN,
    Case,
    Workspace,
    assert_short_named,
    eval_case,
    predict_case,
    raised_user_error,
    train_case,
)
from tests.helpers import load_script, run_script, skip_unless_onnx

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TYPED_TASKS = {**TASKS, "export": run_export}


def export_case(id: str, *overrides: str, culprit: str) -> Case:
    return Case(id, "export", (*PREDICT, *overrides), ConfigError, culprit)


class EveryProbe(Callback):
    """A forker's callback with an argument of its own, added from the command line."""

    def __init__(self, every: int = 1) -> None:
        self.every = every


class OptionWorkspace(Workspace):
    """:class:`Workspace` plus class-weight files: ``{cw__bool_json}`` writes ``<root>/cw__bool.json``."""

    def _make_cw(self, path: Path, name: str) -> Path:
        kind, _, suffix = name.partition("__")[2].rpartition("_")
        path = path.with_name(f"cw__{kind}.{suffix}")
        if kind == "bool":  # JSON true was read as weight 1
            if suffix == "json":
                path.write_text("[true, 1, 1, 1, 1, 1]")
            else:
                np.save(path, np.ones(6, dtype=bool))
        elif kind == "strings":  # numbers written as strings were read as numbers
            path.write_text('["1", "2", "1", "1", "1", "1"]')
        elif kind == "deep":  # json.loads raised RecursionError
            path.write_text("[" * 100_000 + "]" * 100_000)
        elif kind == "text":
            np.save(path, np.array(["1", "2", "1", "1", "1", "1"]))
        elif kind == "object":
            np.save(path, np.array([1, "a", 1, 1, 1, 1], dtype=object), allow_pickle=True)
        return path


ADD_ONE = r"\(a new option: write it with its default in a YAML file under configs/\)"


CASES = [
    eval_case("options/eval_bounded_typo", "ckpt_path={good}", "inference=slide", "inference.crop_size=[16,16]",
              "inference.stride=[8,8]", "inference.bounded=flase", error=ConfigError,
              culprit=r"inference\.bounded='flase': expected true or false"),
    predict_case("options/predict_bounded_typo", "ckpt_path={good}", "input={images}", "inference.bounded=flase",
                 error=ConfigError, culprit=r"inference\.bounded='flase': expected true or false"),
    train_case("options/width_bool", "model.width=true", culprit=r"model\.width=true: expected an integer >= 1"),
    # keys the files only write as a reference to another key are checked like that key
    train_case("options/followed_key_bool", "loss.main.memory_efficient=flase",
               culprit=r"loss\.main\.memory_efficient='flase': expected true or false"),
    train_case("options/followed_key_val_split", "data.val_set.seed=abc",
               culprit=r"data\.val_set\.seed='abc': expected an integer"),
    train_case("options/followed_key_folder", "data.val_set.lossy_masks=abc", data="ok",
               culprit=r"data\.val_set\.lossy_masks='abc': expected true or false"),
    # a split's node: built outright, without a class, without a name
    train_case("options/split_not_partial", "data.train_set._partial_=false",
               culprit=r"data\.train_set: its _target_ is built outright.*_partial_: true"),
    train_case("options/split_without_target", "data.test_set=null", "++data.test_set.split=test",
               culprit=r"data\.test_set holds only split, no _target_.*data\.test_set=null for none"),
    train_case("options/split_without_name", "data.val_set.split=null", data="ok",
               culprit=r"has no split name .*split folders \(train, val\) hold training images"),
    train_case("options/split_a_number", "data.val_set.split=7", data="ok", error=MissingFileError,
               culprit=r"image folder of split '7'"),
    train_case("options/split_a_list", "data.val_set.split=[a,b]", data="ok",
               culprit=r"split must be a name \(data\.\*_set\.split\), got \['a', 'b'\]"),
    train_case("options/loss_against_the_model", "loss.main.align_corners=true",
               culprit=r"loss\.main\.align_corners=True but model\.align_corners=False"),
    train_case("options/compile_typo", "model.compile=flase", culprit=r"model\.compile='flase': expected true or false"),
    train_case("options/max_epochs_text", "trainer.max_epochs=abc",
               culprit=r"trainer\.max_epochs='abc': expected an integer >= 1, -1 or null"),
    train_case("options/max_epochs_float", "trainer.max_epochs=1.5",
               culprit=r"trainer\.max_epochs=1\.5: expected an integer"),
    train_case("options/seed_negative", "seed=-1", culprit=r"seed=-1: expected an integer in \[0, 4294967295\]"),
    train_case("options/seed_2_40", f"seed={2**40}", culprit=rf"seed={2**40}: expected an integer in \[0, "),
    train_case("options/accumulate_0", "+trainer.accumulate_grad_batches=0",
               culprit=r"trainer\.accumulate_grad_batches=0: expected an integer >= 1"),
    train_case("options/batch_size_bool", "data.batch_size=true",
               culprit=r"data\.batch_size=true: expected an integer >= 1"),
    train_case("options/class_names_twice", "data.class_names=[bg,circle,ring,triangle,ring,cross]",
               culprit=r"data\.class_names=.*'ring' is class 2 and class 4"),
    train_case("options/aux_weight_nan", "loss.aux_weight=nan", culprit=r"loss\.aux_weight=nan: expected a finite"),
    train_case("options/power_nan", "scheduler.power=nan", culprit=r"scheduler\.power=nan: expected a finite"),
    train_case("options/lr_nan", "optimizer.lr=nan", culprit=r"optimizer\.lr=nan: expected a finite number >= 0"),
    train_case("options/lr_inf", "optimizer.lr=inf", culprit=r"optimizer\.lr=inf: expected a finite number >= 0"),
    train_case("options/thresh_nan", "loss=ohem", "loss.main.thresh=nan",
               culprit=r"loss\.main\.thresh=nan: expected a finite number in \(0, 1\]"),
    train_case("options/class_weight_nan", "loss=wce", "data.class_weights=[1,nan,1,1,1,1]",
               culprit=r"data\.class_weights\[1\]=nan: expected a finite number"),
    train_case("options/betas_text", "optimizer.betas=[0.9,abc]",
               culprit=r"optimizer\.betas=\[0\.9, abc\]: expected a list of 2 finite numbers in \[0, 1\), got 'abc'"),
    train_case("options/resume_in_place_typo", "resume_in_place=flase",
               culprit=r"resume_in_place='flase': expected true or false"),
    train_case("options/preflight_choice", "data.preflight=ful",
               culprit=r"data\.preflight='ful': expected one of 'sample', 'full', 'none'"),
    predict_case("options/predict_batch_size_text", "ckpt_path={good}", "input={images}", "batch_size=abc",
                 error=ConfigError, culprit=r"batch_size='abc': expected an integer >= 1"),
    predict_case("options/predict_batch_size_0", "ckpt_path={good}", "input={images}", "batch_size=0",
                 error=ConfigError, culprit=r"batch_size=0: expected an integer >= 1"),
    predict_case("options/predict_alpha_nan", "ckpt_path={good}", "input={images}", "overlay_alpha=nan",
                 error=ConfigError, culprit=r"overlay_alpha=nan: expected a finite number in \[0, 1\]"),
    export_case("options/export_shapes_text", "ckpt_path={good}", "export.check_shapes=[[1,abc,32]]",
                culprit=r"export\.check_shapes=\[\[1, abc, 32\]\]: expected a list of lists of 3 integers >= 1, "
                        r"got 'abc'"),
    export_case("options/export_atol_nan", "ckpt_path={good}", "export.atol=nan",
                culprit=r"export\.atol=nan: expected a finite number >= 0"),
    # ---- keys no config file writes (were ignored, exit 0), keys a target does not take (were tracebacks)
    train_case("keys/seed_typo", "+seeed=3", culprit=r"seeed=3: no config file writes this option; did you mean "
                                                     rf"seed\? {ADD_ONE}"),
    train_case("keys/name_typo", "+nmae=foo", culprit=r"nmae='foo': .*did you mean name\?"),
    train_case("keys/resume_in_place_typo", "+resume_in_plce=false",
               culprit=r"resume_in_plce=false: .*did you mean resume_in_place\?"),
    train_case("keys/in_another_node", "+max_epochs=3", culprit=r"max_epochs=3: .*did you mean trainer\.max_epochs\?"),
    train_case("keys/new_node", "+foo.bar=1", culprit=r"foo: no config file writes this option \(the top-level "
                                                      r"options: task_name, name, seed, "),
    export_case("keys/export_atol_typo", "ckpt_path={good}", "+export.atoll=1",
                culprit=r"export\.atoll=1: .*did you mean export\.atol\?"),
    eval_case("keys/eval_inference_typo", "ckpt_path={good}", "+inference.flips=true", error=ConfigError,
              culprit=r"inference\.flips=true: no config file writes this option; did you mean inference\.flip\?"),
    predict_case("keys/predict_inference_typo", "ckpt_path={good}", "input={images}", "+inference.flips=true",
                 error=ConfigError, culprit=r"inference\.flips=true: .*did you mean inference\.flip\?"),
    train_case("keys/scheduler_target", "+scheduler.warmup_step=10",
               culprit=r"scheduler\.warmup_step=10: seg_template\.optim\.poly_warmup takes no argument "
                       r"'warmup_step'; did you mean scheduler\.warmup_steps\?"),
    train_case("keys/transform_target", "+data.train_transform.hfilp=false",
               culprit=r"data\.train_transform\.hfilp=false: .*train_transform takes no argument 'hfilp'; did you "
                       r"mean data\.train_transform\.hflip\?"),
    train_case("keys/model_target", "+model.widht=8", culprit=r"model\.widht=8: .*did you mean model\.width\?"),
    train_case("keys/loss_target", "loss=ohem", "+loss.main.threshh=0.9",
               culprit=r"loss\.main\.threshh=0\.9: seg_template\.losses\.OhemCrossEntropy takes no argument"),
    train_case("keys/callback_target", "+callbacks.val_images.num_image=2",
               culprit=r"callbacks\.val_images\.num_image=2: .*did you mean callbacks\.val_images\.num_images\?"),
    train_case("keys/forkers_callback_typo", f"+callbacks.probe._target_={__name__}.EveryProbe",
               "+callbacks.probe.evrey=2", culprit=r"callbacks\.probe\.evrey=2: .*EveryProbe takes no argument "
                                                   r"'evrey'; did you mean callbacks\.probe\.every\?"),
    train_case("keys/trainer_target", "+trainer.max_epoch=3",
               culprit=r"trainer\.max_epoch=3: pytorch_lightning\.Trainer takes no argument 'max_epoch'; did you mean "
                       r"trainer\.max_epochs\?"),
    train_case("keys/another_targets_key", "+data.train_set.lossy_masks=true",
               culprit=r"data\.train_set\.lossy_masks=true: .*SyntheticShapes takes no argument 'lossy_masks' \(the "
                       r"config files give it to seg_template\.data\.folder\.FolderDataset\)"),
    train_case("keys/another_optimizers_key", "optimizer=sgd", "+optimizer.betas=[0.9,0.99]",
               culprit=r"optimizer\.betas=\[0\.9, 0\.99\]: torch\.optim\.SGD takes no argument 'betas'"),
    train_case("keys/wrong_node", "+data.max_epochs=3",
               culprit=r"data\.max_epochs=3: .*SegDataModule takes no argument 'max_epochs'; did you mean "
                       r"trainer\.max_epochs\?"),
    train_case("keys/forwarded_kwargs", "+callbacks.model_checkpoint.dirpth=/x",  # **kwargs to ModelCheckpoint
               culprit=r"callbacks\.model_checkpoint\.dirpth='/x': .*did you mean callbacks\.model_checkpoint\.dirpath\?"),
    predict_case("keys/predict_top_level", "ckpt_path={good}", "input={images}", "+overlay_alpah=0.3",
                 error=ConfigError, culprit=r"overlay_alpah=0\.3: .*did you mean overlay_alpha\?"),
    # ---- list shapes from the config files (were tracebacks, or named another key)
    train_case("lists/betas_one", "optimizer.betas=[0.9]",
               culprit=r"optimizer\.betas=\[0\.9\]: expected a list of 2 finite numbers in \[0, 1\) \(e\.g\. "
                       r"optimizer\.betas=\[0\.9, 0\.999\]\)"),
    train_case("lists/betas_one_is_not_a_beta", "optimizer.betas=[0.9,1.5]",
               culprit=r"optimizer\.betas=\[0\.9, 1\.5\]: .*, got 1\.5"),
    train_case("lists/image_size_one", "data.train_set.image_size=[32]",
               culprit=r"^ConfigError: data\.train_set\.image_size=\[32\]: expected a list of 2 integers >= 1"),
    train_case("lists/crop_size_three", "data.train_transform.crop_size=[32,32,3]", data="missing",
               culprit=r"data\.train_transform\.crop_size=\[32, 32, 3\]: expected a list of 2 integers >= 1"),
    train_case("lists/class_names_numbers", "data.class_names=[1,2,3,4,5,6]",
               culprit=r"data\.class_names=\[1, 2, 3, 4, 5, 6\]: expected a list of distinct names or null, got 1 "
                       r"\(quote a name"),
    train_case("lists/class_names_text", "data.class_names=abc",
               culprit=r"data\.class_names='abc': expected a list of distinct names or null"),
    train_case("lists/std_two", "+data.val_transform.std=[0.2,0.2]",
               culprit=r"data\.val_transform\.std=\[0\.2, 0\.2\]: expected a list of 3 finite numbers > 0"),
    export_case("lists/export_shapes_text", "ckpt_path={good}", "export.check_shapes=abc",
                culprit=r"export\.check_shapes='abc': expected a list of lists of 3 integers >= 1"),
    export_case("lists/export_shapes_short", "ckpt_path={good}", "export.check_shapes=[[1,32]]",
                culprit=r"export\.check_shapes=\[\[1, 32\]\]: expected a list of lists of 3 integers >= 1, "
                        r"got \[1, 32\]"),
    eval_case("lists/eval_crop_one", "ckpt_path={good}", "inference=slide", "inference.crop_size=[16]",
              "inference.stride=[8,8]", error=ConfigError,
              culprit=r"inference\.crop_size=\[16\]: expected a list of 2 integers >= 1 or null"),
    # ---- scale_range (a cv2.error traceback mid-epoch)
    train_case("scale/tiny", "data.train_transform.scale_range=[0.001,0.002]",
               culprit=r"data\.train_transform\.scale_range=\[0\.001, 0\.002\]: a 32x32 image \(the crop's size\) "
                       r"scaled by 0\.001 keeps no pixel; expected a min scale >= 1/32"),
    train_case("scale/zero", "data.train_transform.scale_range=[0,1]",
               culprit=r"data\.train_transform\.scale_range=\[0, 1\]: expected a list of 2 finite numbers > 0, got 0"),
    train_case("scale/one", "data.train_transform.scale_range=[0.5]",
               culprit=r"data\.train_transform\.scale_range=\[0\.5\]: expected a list of 2 finite numbers > 0"),
    # ---- class-weight files (true was weight 1; a deep JSON a RecursionError naming no file)
    train_case("weights/json_bool", "loss=wce", "data.class_weights={cw__bool_json}",
               culprit=r"cw__bool\.json: expected a flat list of numbers, one per class, got the boolean true"),
    train_case("weights/json_strings", "loss=wce", "data.class_weights={cw__strings_json}",
               culprit=r"cw__strings\.json: expected a flat list of numbers, one per class, got '1'"),
    train_case("weights/json_deep", "loss=wce", "data.class_weights={cw__deep_json}",
               culprit=r"cw__deep\.json: nested too deeply to read"),
    train_case("weights/npy_bool", "loss=wce", "data.class_weights={cw__bool_npy}",
               culprit=r"cw__bool\.npy: expected numbers, got an array of bool"),
    train_case("weights/npy_text", "loss=wce", "data.class_weights={cw__text_npy}",
               culprit=r"cw__text\.npy: expected numbers, got an array of <U1"),
    train_case("weights/npy_object", "loss=wce", "data.class_weights={cw__object_npy}",
               culprit=r"cw__object\.npy: Object arrays cannot be loaded"),
    train_case("weights/list_bool", "loss=wce", "data.class_weights=[true,1,1,1,1,1]",
               culprit=r"data\.class_weights=\[true, 1, 1, 1, 1, 1\]: expected a list of finite numbers, a "
                       r"string or null, got true"),
]


@pytest.fixture
def workspace(compose_cfg, tmp_path: Path) -> Workspace:
    return OptionWorkspace(tmp_path / "files", compose_cfg)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_option_is_one_named_message(case: Case, compose_cfg, workspace: Workspace, tmp_path: Path) -> None:
    if case.task == "export":
        skip_unless_onnx()
    workspace.root.mkdir()
    out = tmp_path / "out"
    overrides = [o.format_map(workspace) for o in case.overrides]
    cfg = compose_cfg(case.task, overrides, output_dir=out)
    if case.task == "predict":
        cfg.output_dir = str(out)
    err = raised_user_error(lambda: TYPED_TASKS[case.task](cfg, overrides))
    assert isinstance(err, case.error), f"{type(err).__name__}, expected {case.error.__name__}: {err}"
    assert_short_named(user_message(err), case.culprit)
    if case.task == "predict":
        assert not (out / "masks").exists(), "refused before any image was written"


def test_several_bad_options_are_listed_in_one_block(compose_cfg) -> None:
    cfg = compose_cfg(overrides=[*TRAIN, "seed=-1", "data.batch_size=0", "loss.aux_weight=nan"])
    message = user_message(raised_user_error(lambda: train(cfg)))
    assert len(message.splitlines()) == 3, message
    for culprit in (r"data\.batch_size=0: ", r"\n  seed=-1: ", r"\n  loss\.aux_weight=nan: "):
        assert_short_named(message, culprit)


GOOD = [  # one value of each kind, and the special values the table documents
    "seed=null", "seed=0", "seed=4294967295", "trainer.max_epochs=-1", "trainer.max_epochs=null",
    "trainer.devices=[0,2]", "+trainer.fast_dev_run=3", "+trainer.fast_dev_run=true", "trainer.deterministic=warn",
    "+trainer.limit_train_batches=0.5", "+trainer.accumulate_grad_batches=2", "scheduler.warmup_steps=100",
    "loss.aux_weight=1", "optimizer.lr=1e-4", "data.class_weights=/data/w.json", "callbacks.val_images=null",
    "scheduler=none", "callbacks.model_checkpoint.every_n_train_steps=0", "data.preflight=none",
    "model.pretrained=/x/weights.pth", "data.train_transform.scale_range=[1,2]", "name=abc",
    # keys the files do not write, taken by the target of their node; a forker's callback and its argument
    "+optimizer.amsgrad=true", "+data.val_transform.mean=[0.5,0.5,0.5]", "+trainer.benchmark=true",
    f"+callbacks.probe._target_={__name__}.EveryProbe", "+paths.my_dir=/x", "name=2024",
    "data.class_names=[a,b,c,d,e,f]", "optimizer.betas=[0.5,0.99]", "optimizer=sgd",
]


@pytest.mark.parametrize("override", GOOD)
def test_good_values_are_accepted(override: str, compose_cfg) -> None:
    assert problems(compose_cfg(overrides=[override])) == []


@pytest.mark.parametrize(("config", "override"), [("eval", "inference.bounded=true"), ("eval", "split=test"),
                                                  ("predict", "batch_size=1"), ("predict", "overlay_alpha=1"),
                                                  ("export", "export.opset=17"), ("export", "export.atol=0"),
                                                  ("export", "export.check_shapes=[[1,32,32]]"),
                                                  ("eval", "inference.scales=[0.5,1,1.5,2]")])
def test_good_values_of_the_other_tasks_are_accepted(config: str, override: str, compose_cfg) -> None:
    assert problems(compose_cfg(config, [override, "ckpt_path=x"])) == []


def test_a_forkers_key_is_accepted_where_its_target_takes_it(compose_cfg) -> None:
    """``+key`` for a target that takes it: the forker's callback gets its argument, the optimiser one torch's
    AdamW takes; both build."""
    cfg = compose_cfg(overrides=[*TRAIN, f"+callbacks.probe._target_={__name__}.EveryProbe", "+callbacks.probe.every=3",
                                 "+optimizer.amsgrad=true"])
    assert problems(cfg) == []
    from seg_template.build import build_optimizer, instantiate_callbacks

    (probe,) = [c for c in instantiate_callbacks(cfg.callbacks) if isinstance(c, EveryProbe)]
    assert probe.every == 3
    assert build_optimizer(cfg.optimizer)[0](params=[torch.nn.Parameter(torch.zeros(1))]).defaults["amsgrad"] is True


def test_a_misspelt_resume_key_leaves_the_run_alone(compose_cfg, workspace: Workspace, tmp_path: Path) -> None:
    """``+resume_in_plce=false`` resumed in place and overwrote the run's last.ckpt (exit 0): now nothing in the
    run folder is touched."""
    workspace.root.mkdir()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    shutil.copy(workspace["good"], last)
    before, files = last.read_bytes(), sorted(run.rglob("*"))
    cfg = compose_cfg(overrides=[*TRAIN, f"ckpt_path={last}", "+resume_in_plce=false"], output_dir=run)
    err = raised_user_error(lambda: train(cfg))
    assert_short_named(user_message(err), r"resume_in_plce=false: .*did you mean resume_in_place\?")
    assert last.read_bytes() == before and sorted(run.rglob("*")) == files


@pytest.mark.slow
def test_a_misspelt_resume_key_in_a_real_run(tmp_path: Path) -> None:
    """The stranger's command, end to end: a trained run, then ``ckpt_path=<run>/checkpoints/last.ckpt
    +resume_in_plce=false``. It exited 0 having resumed in place over last.ckpt; now it exits 1 with one block
    and the run's checkpoints, metrics and reports are as they were, without a ``.hydra/resumed_<time>/`` record of
    the refused resume (the refusal's lines stay in train.log)."""
    logs = tmp_path / "logs"
    first = run_script("train.py", *TRAIN, "trainer.max_epochs=1", "name=orig", f"paths.log_dir={logs}", timeout=300)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()
    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != "train.log"
                and ".hydra/resumed_" not in p.as_posix()}

    before = files()
    assert run / "checkpoints" / "last.ckpt" in before
    result = run_script("train.py", *TRAIN, "trainer.max_epochs=3", f"paths.log_dir={logs}",
                        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "+resume_in_plce=false", timeout=300)
    text = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert_short_named(text, r"ConfigError: resume_in_plce=false: .*did you mean resume_in_place\?")
    assert files() == before
    assert [p.name for p in (logs / "train" / "runs").iterdir()] == [run.name], "no new run folder left behind"
    assert not list(run.glob(".hydra/resumed_*")), "no record of a resume that never ran"


# ------------------------------------------------------------------------------------ the schema itself
def test_schema_follows_packages_and_groups() -> None:
    table = schema()
    assert table["inference.bounded"].kinds == {"bool"}  # configs/inference/whole.yaml
    assert "real" in table["data.class_weights"].item.kinds  # data/class_weights/*.yaml: `# @package data`
    assert table["optimizer.betas"].lengths == {2} and table["export.check_shapes"].item.lengths == {3}
    assert table["model.width"].targets == {"seg_template.models.small.small_segnet"}  # the node's _target_
    assert table["callbacks"].kinds == {"mapping"}  # a package node: written by the files under it
    assert "data.class_weights.class_weights" not in table
    assert table["trainer.fast_dev_run"].kinds == {"bool"}  # debug/fdr.yaml: `# @package _global_`
    assert table["seed"].kinds == {"int"} and table["seed"].example == 42  # train.yaml first
    assert table["data.batch_size"].example == 16  # then the default option (data: synthetic), then the others
    assert not any(key.startswith("hydra") or key.endswith("defaults") for key in table)
    # a file placed by another's defaults list (folder.yaml: /data_folder_split@test_set) counts where it lands
    assert "seg_template.data.folder.FolderDataset" in table["data.test_set.mask_format"].targets
    from seg_template.config_specials import allowed_at

    assert any("FolderDataset" in t for t in allowed_at(("data", "test_set", "_target_")))


def test_rule_table_agrees_with_the_code() -> None:
    assert options.RULES["data.preflight"].choices == PREFLIGHT_MODES


def _forked_configs(tmp_path: Path) -> Path:
    """A copy of configs/ where a forker added two options: ``my_flag`` in train.yaml and ``my_scale`` in a
    group file."""
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    with open(config_dir / "train.yaml", "a") as f:
        f.write("\nmy_flag: false   # a forker's switch\n")
    with open(config_dir / "inference" / "whole.yaml", "a") as f:
        f.write("\nmy_scale: 0.5\n")
    return config_dir


def _compose_from(config_dir: Path, overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["trainer=cpu", *TRAIN, *overrides])
    finally:
        GlobalHydra.instance().clear()
    cfg.paths.output_dir, cfg.paths.log_dir = str(tmp_path / "out"), str(tmp_path / "logs")
    return cfg


def test_a_forkers_new_option_is_typed_without_code(tmp_path: Path, monkeypatch) -> None:
    # before it is written in a YAML file, +my_flag is a key no code reads: refused, saying how to add one
    assert problems(_compose_from(CONFIG_DIR, ["+my_flag=true"], tmp_path)) == [
        "my_flag=true: no config file writes this option (the top-level options: task_name, name, seed, train, "
        "test, ckpt_path, resume_in_place, optimized_metric, data, model, loss, optimizer, ...; a new option: write "
        "it with its default in a YAML file under configs/)"]
    config_dir = _forked_configs(tmp_path)
    monkeypatch.setattr(options, "CONFIG_DIR", config_dir)  # as if the project's own configs/ held them
    cfg = _compose_from(config_dir, ["my_flag=flase"], tmp_path)
    err = raised_user_error(lambda: train(cfg))
    assert_short_named(user_message(err), r"my_flag='flase': expected true or false \(e\.g\. my_flag=false\)")
    assert problems(_compose_from(config_dir, ["my_flag=true"], tmp_path)) == []
    # eval.yaml does not compose train.yaml's top level, but inference/ is shared: check the group option too
    cfg = _compose_from(config_dir, ["+inference=whole", "inference.my_scale=abc"], tmp_path)
    assert problems(cfg) == ["inference.my_scale='abc': expected a finite number (e.g. inference.my_scale=0.5)"]
    with pytest.raises(ConfigError, match=r"inference\.my_scale=nan"):
        check_options(_compose_from(config_dir, ["+inference=whole", "inference.my_scale=nan"], tmp_path))


def test_a_data_config_listing_self_before_its_base_is_refused(tmp_path: Path, monkeypatch) -> None:
    """``defaults: [_self_, /data_base@_here_]`` lets the base replace the file's own values without a word
    (num_workers, crop size...); the option check reads the chosen file's defaults list and says so."""
    from hydra.core.hydra_config import HydraConfig

    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    folder = (config_dir / "data" / "folder.yaml").read_text()
    (config_dir / "data" / "mine.yaml").write_text(folder.replace("  - /data_base@_here_\n", "").replace(
        "  - _self_\n", "  - _self_\n  - /data_base@_here_\n"))
    monkeypatch.setattr(options, "CONFIG_DIR", config_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["trainer=cpu", "data=mine"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.data.batch_size == 4  # the base's, over the file's 8
        assert "data=mine: configs/data/mine.yaml lists _self_ before /data_base@_here_, so the base's " \
               "values replace the file's own: move `_self_` after it in its defaults list" in problems(cfg)
    finally:
        HydraConfig.instance().cfg = None


# ------------------------------------------------------------------------- predict never reads its outputs
def test_second_predict_run_does_not_read_the_first_runs_outputs(compose_cfg, workspace: Workspace,
                                                                  tmp_path: Path, caplog) -> None:
    workspace.root.mkdir()
    images = Path(workspace["images"])
    out = images / "predictions"  # output_dir inside input
    overrides = [*PREDICT, "device=cpu", f"ckpt_path={workspace['good']}", f"input={images}", f"output_dir={out}"]
    first = run_predict(compose_cfg("predict", overrides), overrides)
    assert sorted(p.name for p in first) == ["img0.png", "img1.png", "img2.png"]
    with caplog.at_level(logging.INFO):
        second = run_predict(compose_cfg("predict", overrides), overrides)
    assert sorted(p.relative_to(out) for p in second) == sorted(p.relative_to(out) for p in first)
    assert "Left out 9 of the 12 images found" in caplog.text  # masks/, color/, overlay/ of the first run
    # a third run writing elsewhere still knows the first run's folder by its marker
    other = [*overrides[:-1], f"output_dir={tmp_path / 'elsewhere'}"]
    assert len(run_predict(compose_cfg("predict", other), other)) == 3
    # pointed at an output folder: nothing is left, and the message says why
    only = [*overrides[:-2], f"input={out}", f"output_dir={tmp_path / 'again'}"]
    err = raised_user_error(lambda: run_predict(compose_cfg("predict", only), only))
    assert_short_named(user_message(err), r"input=.*predictions: all 9 images found lie in predict's output")


def test_predict_leaves_out_the_logs_folder(compose_cfg, workspace: Workspace, tmp_path: Path) -> None:
    workspace.root.mkdir()
    images = Path(workspace["images"])
    grid = images / "logs" / "train" / "runs" / "x" / "images"  # a validation grid of an earlier run
    grid.mkdir(parents=True)
    shutil.copy(images / "img0.png", grid / "val_epoch_0.png")
    overrides = [*PREDICT, "device=cpu", f"ckpt_path={workspace['good']}", f"input={images}",
                 f"output_dir={tmp_path / 'out'}"]
    cfg = compose_cfg("predict", overrides)
    cfg.paths.log_dir = str(images / "logs")
    assert len(run_predict(cfg, overrides)) == 3
    cfg = compose_cfg("predict", [*overrides[:-2], f"input={grid.parent.parent}", f"output_dir={tmp_path / 'b'}"])
    cfg.paths.log_dir = str(images / "logs")
    assert len(run_predict(cfg, overrides)) == 1  # inside the logs folder on purpose: read


# ------------------------------------------------------------------------------------------- the scripts
@pytest.mark.parametrize(("script", "argv", "culprit"), [
    ("compute_class_weights", ["--limit", "-1"], r"argument --limit: expected an integer >= 1, got '-1'"),
    ("compute_class_weights", ["--limit", "0"], r"argument --limit: expected an integer >= 1, got '0'"),
    ("compute_class_weights", ["--limit", "abc"], r"argument --limit: expected an integer >= 1, got 'abc'"),
    ("write_synthetic", ["--out", "x", "--image-size", "8"], r"argument --image-size: expected an integer >= 16"),
    ("write_synthetic", ["--out", "x", "--seed", "-1"], r"argument --seed: expected an integer in \[0, "),
    ("bench_models", ["--reps", "0"], r"argument --reps: expected an integer >= 1, got '0'"),
    ("bench_losses", ["--warmup", "-1"], r"argument --warmup: expected an integer >= 0, got '-1'"),
    ("bench_inference", ["--window-batches", "4", "0"], r"argument --window-batches: expected an integer >= 1"),
    ("prepare_cityscapes", ["x", "--nproc", "0"], r"argument --nproc: expected an integer >= 1, got '0'"),
])
def test_script_options_are_usage_errors(script: str, argv: list[str], culprit: str, capsys) -> None:
    """argparse's own convention: one ``usage: ... error: argument --x: ...`` block and exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    assert exit_info.value.code == 2
    assert_short_named(capsys.readouterr().err, culprit)


# ------------------------------------------------------------- wave 4: sane bounds, per-class lists, files
# An outside tester's findings: trainer.max_epochs=99999999999999999999999 ran "forever" (ETA 2e19 hours), a
# recipe's data.val_set.length of 10**12 hung eval, data.class_names=[] was taken as null, a 200,000-character
# class name drew a 1,400,112 px wide legend, export.opset=99 was a 110-line graph dump, a std of 1e-40 made
# training "diverge", class-weight files of the wrong length were caught after the model was built without
# naming the file (a folder was "not found", 1e308 became "inf" of no file), and paths.log_dir='~/x' made a
# folder named '~'.
class BoundsWorkspace(OptionWorkspace):
    """:class:`OptionWorkspace` plus ``{cwfile__<kind>_<suffix>}`` (class-weight files written as a user would)
    and ``{recipe__<edit>}`` (a good checkpoint whose recipe carries one absurd value)."""

    WEIGHT_FILES = {
        "short": "1 1 1 1 1\n",  # 5 weights for the 6 synthetic classes
        "huge": "1e308 1e308 1e308 1e308 1e308 1e308\n",  # finite in float64, inf in float32
        "nan": "1 nan 1 1 1 1\n",
        "dict": '{"background": 1, "circle": 2}',
        "good": "1, 2, 1, 1, 1, 1  # commas and comments are fine\n",
    }
    RECIPE_EDITS = {
        "huge_length": lambda data: data["val_set"].__setitem__("length", 10**12),
        "long_name": lambda data: data.__setitem__("class_names", ["A" * 200_000, "c1", "c2", "c3", "c4", "c5"]),
        "tiny_std": lambda data: data["val_transform"].__setitem__("std", [1e-45, 0.224, 0.225]),
    }

    def _make_cwfile(self, path: Path, name: str) -> Path:
        kind, _, suffix = name.partition("__")[2].rpartition("_")
        path = path.with_name(f"cw_{kind}.{suffix}")
        if kind == "folder":  # a folder named like a weights file (x.json/)
            path.mkdir()
        elif kind != "missing":
            path.write_text(self.WEIGHT_FILES[kind])
        return path

    def _make_recipe(self, path: Path, name: str) -> Path:
        checkpoint = self.checkpoint()
        self.RECIPE_EDITS[name.partition("__")[2]](checkpoint["recipe"]["data"])
        path = path.with_name(f"{name.replace('__', '_')}.ckpt")
        torch.save(checkpoint, path)
        return path


FROM_THE_FILE = r".*\(from the file\)"
#: eval_case's base (the tiny data, a narrow model) without the val length it types over the recipe's
EVAL_BASE_WITHOUT_VAL_LENGTH = tuple(o for o in TRAIN if o not in ("test=false", "callbacks.rich_model_summary=null")
                                     and not o.startswith("data.val_set.length="))

BOUND_CASES = [
    # ---- counts with a ceiling no real run reaches (the class: see test_every_count_has_a_ceiling)
    train_case("bounds/max_epochs_huge", "trainer.max_epochs=99999999999999999999999",
               culprit=r"trainer\.max_epochs=99999999999999999999999: expected at most 1000000 \(1000000 epochs: "
                       r"more than any real run trains; -1: no limit\)"),
    train_case("bounds/max_steps_huge", "+trainer.max_steps=10000000000",
               culprit=r"trainer\.max_steps=10000000000: expected at most 1000000000 \(1000000000 steps"),
    train_case("bounds/val_length_huge", "data.val_set.length=1000000000000",
               culprit=r"data\.val_set\.length=1000000000000: expected at most 100000000 \(100000000 samples: "
                       r"more than any dataset has\)"),
    train_case("bounds/batch_size_huge", "data.batch_size=1000000",
               culprit=r"data\.batch_size=1000000: expected at most 65536 \(65536 images per batch"),
    train_case("bounds/num_workers_huge", "data.num_workers=100000",
               culprit=r"data\.num_workers=100000: expected at most 1024 \(1024 worker processes"),
    train_case("bounds/image_size_entry_huge", "data.train_set.image_size=[64,100000]",
               culprit=r"data\.train_set\.image_size=\[64, 100000\]: expected each entry at most 65536 \(65536 "
                       r"pixels a side: larger than any image\), got 100000"),
    train_case("bounds/forkers_int_over_64_bits", f"+callbacks.probe._target_={__name__}.EveryProbe",
               "+callbacks.probe.every=99999999999999999999999",  # an option no rule knows
               culprit=r"callbacks\.probe\.every=99999999999999999999999: expected an integer that fits in 64 bits"),
    eval_case("bounds/eval_recipe_val_length_huge", "ckpt_path={recipe__huge_length}", error=ConfigError,
              base=EVAL_BASE_WITHOUT_VAL_LENGTH,  # the recipe's length, not the tiny one typed
              culprit=r"recipe_huge_length\.ckpt carries a recipe whose options are refused.*"
                      r"data\.val_set\.length=1000000000000: expected at most 100000000" + FROM_THE_FILE),
    # ---- data.class_names: one short name per class
    train_case("class_names/empty_list", "data.class_names=[]",
               culprit=r"data\.class_names=\[\]: expected a list of distinct names or null, got 0 entries \(one per "
                       r"class: data\.num_classes is 6"),
    train_case("class_names/two_for_six", "data.class_names=[a,b]",
               culprit=r"data\.class_names=\[a, b\]: .*got 2 entries \(one per class: data\.num_classes is 6"),
    train_case("class_names/name_too_long", f"data.class_names=[{'A' * 200},b,c,d,e,f]",
               culprit=r"data\.class_names=\[AAA.*got one of 200 characters \('AAA.*at most 100 each"),
    predict_case("class_names/predict_recipe_name_too_long", "ckpt_path={recipe__long_name}", "input={images}",
                 error=ConfigError, culprit=r"data\.class_names=.*got one of 200000 characters .*at most 100 each"
                                            + FROM_THE_FILE),
    # ---- export.opset: up to the newest opset of the installed torch
    export_case("opset/export_opset_99", "ckpt_path={good}", "export.opset=99",
                culprit=r"export\.opset=99: expected an integer in \[7, \d+\] or null \(\d+: the newest opset torch "
                        r"[\d.]+'s exporter writes"),
    # ---- normalisation: a std of no real image, non-finite mean / std
    train_case("std/train_std_tiny", "+data.train_transform.std=[1e-40,1,1]",
               culprit=r"data\.train_transform\.std=\[1e-40, 1, 1\]: expected each entry at least 0\.001 \(pixels in "
                       r"\[0, 1\] are divided by it.*\), got 1e-40"),
    eval_case("std/eval_recipe_std_tiny", "ckpt_path={recipe__tiny_std}", error=ConfigError,
              culprit=r"data\.val_transform\.std=\[1e-45, 0\.224, 0\.225\]: expected each entry at least 0\.001"
                      + FROM_THE_FILE),
    train_case("std/train_mean_nan", "+data.train_transform.mean=[nan,0.5,0.5]",
               culprit=r"data\.train_transform\.mean\[0\]=nan: expected a finite number"),
    train_case("std/train_std_inf", "+data.train_transform.std=[0.2,inf,0.2]",
               culprit=r"data\.train_transform\.std\[1\]=inf: expected a finite number"),
    # ---- class-weight files: checked with data.num_classes before the model is built, the file named
    train_case("weights/txt_five_for_six", "loss=wce", "data.class_weights={cwfile__short_txt}",
               culprit=r"class weights file \S*cw_short\.txt: class weights have 5 entries for 6 classes "
                       r"\(data\.num_classes is 6\)"),
    train_case("weights/folder_named_json", "loss=wce", "data.class_weights={cwfile__folder_json}",
               culprit=r"class weights file \S*cw_folder\.json is a folder, not a file"),
    train_case("weights/txt_too_large_for_float32", "loss=wce", "data.class_weights={cwfile__huge_txt}",
               culprit=r"class weights file \S*cw_huge\.txt: 1e\+308 is too large for float32"),
    train_case("weights/loss_main_weight_file", "loss=wce", "loss.main.weight={cwfile__short_txt}",
               culprit=r"class weights file \S*cw_short\.txt: class weights have 5 entries for 6 classes"),
    # ---- '~' is expanded by nothing here
    train_case("home/quoted_tilde", "data.root='~/datasets/x'",
               culprit=r"data\.root='~/datasets/x': starts with '~', which is not expanded here: write "
                       r"\$HOME/datasets/x or an absolute path"),
    train_case("home/tilde_alone", "+paths.my_dir='~'",
               culprit=r"paths\.my_dir='~': starts with '~', .*write \$HOME or an absolute path"),
]


@pytest.fixture
def bounds_workspace(compose_cfg, tmp_path: Path) -> Workspace:
    return BoundsWorkspace(tmp_path / "files", compose_cfg)


@pytest.mark.parametrize("case", BOUND_CASES, ids=lambda c: c.id)
def test_absurd_value_is_one_named_message(case: Case, compose_cfg, bounds_workspace: Workspace,
                                           tmp_path: Path) -> None:
    test_bad_option_is_one_named_message(case, compose_cfg, bounds_workspace, tmp_path)


GOOD_BOUNDS = [  # the edges of the new bounds, and what they must not refuse
    "trainer.max_epochs=1000000", "trainer.max_epochs=-1", "+trainer.max_steps=-1", "+trainer.max_steps=1000000000",
    "data.val_set.length=100000000", "data.batch_size=65536", "data.num_workers=1024", "data.class_names=null",
    "data.class_names=[a,b,c,d,e,f]", f"data.class_names=[{'x' * 100},b,c,d,e,f]",
    "+data.train_transform.std=[0.001,0.5,0.5]", "+data.val_transform.mean=[0,0.5,1]", "name='a~b'",
    "callbacks.rich_model_summary.max_depth=9223372036854775807", "loss=wce", "data.class_weights=/data/w.json",
]


@pytest.mark.parametrize("override", GOOD_BOUNDS)
def test_values_at_the_new_bounds_are_accepted(override: str, compose_cfg) -> None:
    assert problems(compose_cfg(overrides=[override])) == []


#: integer options without a ceiling, and why a huge value does no harm there; any other integer rule (a
#: forker's new count included) must have a range or a sane ceiling
NO_CEILING = {
    "data.ignore_index": "any label value", "loss.main.ignore_index": "any label value",
    "trainer.check_val_every_n_epoch": "an interval: huge means never", "trainer.log_every_n_steps": "an interval",
    "callbacks.val_images.every_n_epochs": "an interval",
    "callbacks.model_checkpoint.every_n_train_steps": "an interval",
    "callbacks.model_checkpoint.save_top_k": "how many to keep: all", "callbacks.nan_guard.patience": "never stops",
    "callbacks.early_stopping.patience": "never stops", "max_image_pixels": "a limit: huge means none",
    "data.*_set.max_image_pixels": "a limit", "data.ohem_min_kept": "OHEM becomes plain CE (the loss says so)",
    "loss.main.min_kept": "OHEM becomes plain CE", "loss.min_kept": "OHEM becomes plain CE",
}


def _integer_rules(rule: options.Rule | None) -> list[options.Rule]:
    """``rule`` and its entries' rules (lists of lists too) that take integers."""
    found = []
    while rule is not None:
        if "int" in rule.kinds:
            found.append(rule)
        rule = rule.item
    return found


def test_every_count_has_a_ceiling() -> None:
    """The class behind max_epochs=99999999999999999999999: every integer option of the table has an upper
    bound (a range, or a sane ceiling said with its reason) unless NO_CEILING says why none is needed."""
    from seg_template.option_rules import INT64

    unbounded = [key for key, rule in options.RULES.items() for r in _integer_rules(rule)
                 if r.high is None and r.sane_high is None and key not in NO_CEILING]
    assert unbounded == [], f"counts a typo can make absurd, without a ceiling: {unbounded}"
    for key, rule in options.RULES.items():
        for r in _integer_rules(rule):
            assert r.sane_high is None or (r.sane_why and str(r.sane_high) in r.sane_why), key  # says its number
    # and no integer at all, a forker's included, goes past 64 bits
    assert options.problem("my_count", INT64, options.int_rule(0)) is not None
    assert options.problem("my_count", INT64 - 1, options.int_rule(0)) is None


def test_opset_bound_is_read_from_torch(compose_cfg) -> None:
    from torch.onnx import _constants

    newest = _constants.ONNX_MAX_OPSET
    assert problems(compose_cfg("export", [f"export.opset={newest}", "ckpt_path=x"])) == []
    assert problems(compose_cfg("export", [f"export.opset={newest + 1}", "ckpt_path=x"])) == [
        f"export.opset={newest + 1}: expected an integer in [7, {newest}] or null ({newest}: the newest opset torch "
        f"{torch.__version__.split('+')[0]}'s exporter writes; e.g. export.opset=17)"]


def test_per_class_lists_without_a_config() -> None:
    """From Python (``require``, no config to read data.num_classes from) the count is not known, but an empty
    list of names is still no list of names."""
    assert options.require("data.class_names", ["a", "b"]) == ["a", "b"]
    with pytest.raises(ConfigError, match=r"data\.class_names=\[\]: expected a list of distinct names or null, "
                                          r"got 0 entries"):
        options.require("data.class_names", [])


@pytest.mark.parametrize(("kind", "suffix", "culprit"), [
    ("short", "txt", r"class weights have 5 entries for 6 classes"),
    ("huge", "txt", r"1e\+308 is too large for float32"),
    ("nan", "txt", r"class weights must be finite and >= 0, got \[nan\]"),
    ("dict", "json", r"expected a list of numbers"),
    ("folder", "json", r"is a folder, not a file"),
    ("missing", "json", r"not found"),
    ("good", "csv", r"unsupported suffix '\.csv'"),
])
def test_every_class_weight_file_error_names_the_file(kind: str, suffix: str, culprit: str,
                                                      bounds_workspace: Workspace) -> None:
    import re

    from seg_template.losses.class_weights import load_class_weights

    bounds_workspace.root.mkdir()
    path = bounds_workspace[f"cwfile__{kind}_{suffix}"]
    err = raised_user_error(lambda: load_class_weights(path, num_classes=6))
    assert_short_named(user_message(err), re.escape(f"class weights file {path}") + r"\b.*" + culprit)


def test_a_good_class_weight_file_is_read_with_its_count(bounds_workspace: Workspace) -> None:
    from seg_template.losses.class_weights import load_class_weights

    bounds_workspace.root.mkdir()
    assert load_class_weights(bounds_workspace["cwfile__good_txt"], num_classes=6).tolist() == [1, 2, 1, 1, 1, 1]


def test_class_weights_are_read_only_by_tasks_that_build_the_loss(compose_cfg, tmp_path: Path) -> None:
    """Training reads them in the option check; predict and export build no loss, so a recipe's weights file
    that is not on this machine is no error there."""
    from seg_template.errors import MissingFileError

    cfg = compose_cfg(overrides=["loss=wce", f"data.class_weights={tmp_path / 'elsewhere.json'}"])
    with pytest.raises(MissingFileError, match=r"class weights file \S*elsewhere\.json not found"):
        options.check_class_weights(cfg)
    for task in ("predict", "export"):
        cfg.task_name = task
        options.check_class_weights(cfg)  # no error
