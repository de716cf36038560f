"""Catalogue family "typed options" (issue 17, section 6): every option is checked once, by
``seg_template.options``, against the kinds its config files give it and the table of ranges and choices.

Each case runs a task in-process (train / eval / predict / export on tiny data, as ``tests/test_bad_inputs.py``)
and must raise a ``ConfigError`` naming the key and the value. Several used to go silently wrong:
``inference.bounded=flase`` ran the bounded mode (``bool("flase")`` is True), ``seed=2**40`` made Lightning
pick a random seed, ``model.compile=flase`` compiled the model, duplicated class names merged two metrics
columns, a second predict run over a folder holding its outputs segmented its own masks, and
``compute_class_weights.py --limit -1`` used all masks but the last.

    pytest tests/test_bad_inputs_options.py -v
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from seg_template import options
from seg_template.cli import user_message
from seg_template.data.preflight import PREFLIGHT_MODES
from seg_template.errors import ConfigError
from seg_template.export import run_export
from seg_template.options import check_options, problems, schema
from seg_template.paths import CONFIG_DIR
from seg_template.predict import run_predict
from seg_template.train import train
from tests.bad_input_files import PREDICT, TRAIN, Workspace, assert_short_named, raised_user_error
from tests.test_bad_inputs import TASKS, Case, eval_case, predict_case, train_case
from tests.test_scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TYPED_TASKS = {**TASKS, "export": run_export}


def export_case(id: str, *overrides: str, culprit: str) -> Case:
    return Case(id, "export", (*PREDICT, *overrides), ConfigError, culprit)


CASES = [
    eval_case("options/eval_bounded_typo", "ckpt_path={good}", "inference=slide", "inference.crop_size=[16,16]",
              "inference.stride=[8,8]", "inference.bounded=flase", error=ConfigError,
              culprit=r"inference\.bounded='flase': expected true or false"),
    predict_case("options/predict_bounded_typo", "ckpt_path={good}", "input={images}", "inference.bounded=flase",
                 error=ConfigError, culprit=r"inference\.bounded='flase': expected true or false"),
    train_case("options/width_bool", "model.width=true", culprit=r"model\.width=true: expected an integer >= 1"),
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
               culprit=r"optimizer\.betas=\[0\.9, abc\]: expected a list of numbers"),
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
                culprit=r"export\.check_shapes=\[\[1, abc, 32\]\]: expected a list of integers"),
    export_case("options/export_atol_nan", "ckpt_path={good}", "export.atol=nan",
                culprit=r"export\.atol=nan: expected a finite number >= 0"),
]


@pytest.fixture
def workspace(compose_cfg, tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "files", compose_cfg)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_option_is_one_named_message(case: Case, compose_cfg, workspace: Workspace, tmp_path: Path) -> None:
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
]


@pytest.mark.parametrize("override", GOOD)
def test_good_values_are_accepted(override: str, compose_cfg) -> None:
    assert problems(compose_cfg(overrides=[override])) == []


@pytest.mark.parametrize(("config", "override"), [("eval", "inference.bounded=true"), ("eval", "split=test"),
                                                  ("predict", "batch_size=1"), ("predict", "overlay_alpha=1"),
                                                  ("export", "export.opset=17"), ("export", "export.atol=0")])
def test_good_values_of_the_other_tasks_are_accepted(config: str, override: str, compose_cfg) -> None:
    assert problems(compose_cfg(config, [override, "ckpt_path=x"])) == []


# ------------------------------------------------------------------------------------ the schema itself
def test_schema_follows_packages_and_groups() -> None:
    table = schema()
    assert table["inference.bounded"].kinds == {"bool"}  # configs/inference/whole.yaml
    assert "real" in table["data.class_weights"].entries  # data/class_weights/*.yaml: `# @package data`
    assert "data.class_weights.class_weights" not in table
    assert table["trainer.fast_dev_run"].kinds == {"bool"}  # debug/fdr.yaml: `# @package _global_`
    assert table["seed"].kinds == {"int"} and table["seed"].example == 42  # train.yaml first
    assert table["data.batch_size"].example == 16  # then the default option (data: synthetic), then the others
    assert not any(key.startswith("hydra") or key.endswith("defaults") for key in table)


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
