"""Catalogue family "file-borne recipes" (issue 17): a checkpoint's recipe or an ONNX file's metadata is data
that eval / predict / export turn into calls, so a crafted file must be refused before anything is built.

Each case writes a genuine checkpoint (or ONNX file) whose recipe one :class:`Crafted` edit has turned
hostile, hands it to a task in-process (eval, predict with ``ckpt_path=`` or ``model_file=``, export, resume
through ``train.py ckpt_path=``), and asserts: a ``CheckpointError`` whose short message names the file, the key
and the target, and no harm done (the victim file keeps its bytes, the victim folder is still there, no marker
file was created). ``test_crafted_nodes_are_live`` proves the crafted nodes would do that harm if Hydra
instantiated them, so a pass is not vacuous. The slow test runs the real scripts.

``SHAPES``: what the door lets through is data of the right shape. References only inside the recipe
(``${trainer}`` would build the task's Trainer inside ``data``), special keys only as the config files write
them at that same key (``train_transform`` as the ``val_transform`` scored random crops, exit 0), identifier
keys, nodes that resolve (loops, missing keys, a reference bomb), a ``format`` / ``class_names`` / ``palette``
that fit; and YAML read back from a run folder without aliases (``test_run_folder_yaml_*``).

    pytest -p no:cacheprovider -q tests/test_bad_inputs_recipes.py -rA        # the table, case by case
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from seg_template.cli import user_message
from seg_template.errors import CheckpointError
from seg_template.recipe import recipe_argv
from tests.bad_input_files import PREDICT, SMALL, TRAIN, Workspace, assert_short_named, raised_user_error
from tests.helpers import run_script, skip_unless_onnx

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

VICTIM = b"precious bytes\n"
MARKER = "recipe_ran_a_command"
#: what resuming needs besides the state dict (tests/bad_input_files.py writes the same for its cases)
RESUMABLE = {"epoch": 0, "global_step": 2, "loops": {}, "optimizer_states": []}


@dataclass(frozen=True)
class Crafted:
    """``edit(recipe, root)`` makes a genuine recipe hostile (``root`` holds ``victim.txt``, ``victim_dir/``
    and is where ``MARKER`` would appear); the task's message must match ``culprit``."""

    id: str
    edit: Callable[[dict[str, Any], Path], None]
    culprit: str
    json_ok: bool = True  # False: only a checkpoint can hold it (a tensor)


def _put(recipe: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = recipe
    for key in parents:
        node = node[key]
    node[leaf] = value


def _open_victim(root: Path) -> dict[str, Any]:
    return {"_target_": "builtins.open", "_args_": [str(root / "victim.txt"), "w"]}


def _nested(recipe: dict[str, Any], root: Path) -> None:
    # eval_transform's own target is ours; the call hides in a dict in a list in a list of its arguments,
    # which Hydra's recursive instantiate builds before calling eval_transform
    _put(recipe, "data.val_transform", {"_target_": "seg_template.data.transforms.eval_transform",
                                        "std": [0.2, [{"deep": [_open_victim(root)]}], 0.2]})


def _interpolated(recipe: dict[str, Any], root: Path) -> None:
    _put(recipe, "data.evil", "builtins.open")
    _put(recipe, "data.val_transform", {"_target_": "${data.evil}", "_args_": [str(root / "victim.txt"), "w"]})


def _too_deep(recipe: dict[str, Any], _: Path) -> None:
    node: list[Any] = []
    recipe["data"]["deep"] = node
    for _level in range(200):
        node.append([])
        node = node[0]


CRAFTED = [
    Crafted("builtins_open", lambda r, root: _put(r, "data.val_transform", _open_victim(root)),
            r"would call builtins\.open \(at data\.val_transform\._target_\)"),
    Crafted("os_system", lambda r, root: _put(r, "model", {"_target_": "os.system",
                                                            "_args_": [f"touch {root / MARKER}"]}),
            r"would call os\.system \(at model\._target_\)"),
    Crafted("subprocess_run", lambda r, root: _put(r, "loss.main", {"_target_": "subprocess.run",
                                                                     "_args_": [["touch", str(root / MARKER)]]}),
            r"would call subprocess\.run \(at loss\.main\._target_\)"),
    Crafted("shutil_rmtree", lambda r, root: _put(r, "data.val_set", {"_target_": "shutil.rmtree",
                                                                       "_args_": [str(root / "victim_dir")]}),
            r"would call shutil\.rmtree \(at data\.val_set\._target_\)"),
    Crafted("partial", lambda r, root: _put(r, "data.test_set", {**_open_victim(root), "_partial_": True}),
            r"would call builtins\.open \(at data\.test_set\._target_\)"),
    Crafted("nested_in_transform_list", _nested,
            r"would call builtins\.open \(at data\.val_transform\.std\[1\]\[0\]\.deep\[0\]\._target_\)"),
    Crafted("interpolated_target", _interpolated,
            r"picks its _target_ by interpolation \('\$\{data\.evil\}'\) \(at data\.val_transform\._target_\)"),
    Crafted("resolver_builds_a_node",
            lambda r, root: _put(r, "data.val_transform",
                                 "${oc.create:{_target_: builtins.open, _args_: ['" + str(root / "victim.txt")
                                 + "', w]}}"),
            r"interpolation that would build config when resolved .*oc\.create.* \(at data\.val_transform\)"),
    Crafted("attribute_walk", lambda r, root: _put(r, "data.val_transform", {
        "_target_": "seg_template.cli.shutil.rmtree", "_args_": [str(root / "victim_dir")]}),
        r"would call seg_template\.cli\.shutil\.rmtree \(at data\.val_transform\._target_\)"),
    Crafted("non_string_target", lambda r, _: _put(r, "data.val_transform", {"_target_": ["builtins", "open"]}),
            r"_target_ that is not a name but a list .* \(at data\.val_transform\._target_\)"),
    Crafted("choices_with_a_path", lambda r, _: _put(r, "choices", {"data": "../../../tmp/evil"}),
            r"config option 'data'='\.\./\.\./\.\./tmp/evil'.*not a plain option name"),
    Crafted("tensor_in_recipe", lambda r, _: _put(r, "data.val_transform", torch.zeros(2)),
            r"holds a Tensor, not plain config \(at data\.val_transform\)", json_ok=False),
    Crafted("nested_too_deep", _too_deep, r"nested more than 64 levels deep \(at data\.deep\[0\]"),
]


def _reference_bomb(recipe: dict[str, Any], _: Path) -> None:
    # ten lists of ten references each: 10^10 values once Hydra's instantiate resolves data (a few hundred bytes)
    recipe["data"]["l0"] = [0] * 10
    for level in range(1, 10):
        recipe["data"][f"l{level}"] = [f"${{data.l{level - 1}}}"] * 10


def _keyed(key: Any) -> Callable[[dict[str, Any], Path], None]:
    return lambda r, _: r["data"].__setitem__(key, 1)


_SWAPPED = {"_target_": "seg_template.data.transforms.train_transform", "crop_size": [8, 8], "hflip": True,
            "scale_range": [0.5, 0.6], "color_jitter": 0.0, "ignore_index": 255}
_NOT_PLAIN = r"which is not a plain name: a recipe's keys are identifiers"
SHAPES = [
    # 1. references stay inside the recipe's data / model / loss nodes (also through oc.select, or relative)
    Crafted("reference_to_the_trainer", lambda r, _: _put(r, "data.val_set.length", "${trainer}"),
            r"reference to 'trainer' \(at data\.val_set\.length\), outside the recipe's data / model / loss"),
    Crafted("select_of_a_logger", lambda r, _: _put(r, "data.val_set.seed", "${oc.select:logger.csv,0}"),
            r"reference to 'logger\.csv' \(at data\.val_set\.seed\), outside the recipe's"),
    Crafted("relative_reference_out_of_the_recipe", lambda r, _: _put(r, "data.val_set.length", "${...trainer}"),
            r"reference to '\.\.\.trainer' \(at data\.val_set\.length\), outside the recipe's"),
    # 2. a target only at the key the config files write it at
    Crafted("val_transform_is_the_train_transform", lambda r, _: _put(r, "data.val_transform", dict(_SWAPPED)),
            r"would call seg_template\.data\.transforms\.train_transform \(at data\.val_transform\._target_\), "
            r"which no config file writes at that key \(they write seg_template\.data\.transforms\.eval_transform\)"),
    Crafted("val_transform_references_the_train_transform",
            lambda r, _: _put(r, "data.val_transform", "${data.train_transform}"),
            r"would call seg_template\.data\.transforms\.train_transform \(at data\.val_transform\._target_, "
            r"reached through a reference\)"),
    Crafted("model_node_referenced_in_data", lambda r, _: _put(r, "data.val_set.length", "${model}"),
            r"would call seg_template\.models\.small\.small_segnet \(at data\.val_set\.length\._target_, reached"),
    # 3. Hydra's special keys only as the config files write them; keys are identifiers
    Crafted("recursive_false", lambda r, _: _put(r, "loss._recursive_", False),
            r"has _recursive_: False \(at loss\._recursive_\), which no config file writes at that key"),
    Crafted("args_on_the_model", lambda r, _: _put(r, "model._args_", [6]),
            r"has _args_: \[6\] \(at model\._args_\)"),
    Crafted("convert_on_the_model", lambda r, _: _put(r, "model._convert_", "object"),
            r"has _convert_: 'object' \(at model\._convert_\)"),
    Crafted("partial_switched_off", lambda r, _: _put(r, "data.val_set._partial_", False),
            r"has _partial_: False \(at data\.val_set\._partial_\)"),
    Crafted("dotted_key", _keyed("val_set.length"), rf"has the key 'val_set\.length' \(at data\), {_NOT_PLAIN}"),
    Crafted("interpolated_key", _keyed("${oc.env:HOME}"),
            rf"has the key '\$\{{oc\.env:HOME\}}' \(at data\), {_NOT_PLAIN}"),
    Crafted("number_key", _keyed(3), rf"has the key 3 \(at data\), {_NOT_PLAIN}", json_ok=False),
    # 4. the nodes resolve on their own
    Crafted("self_reference", lambda r, _: _put(r, "data.val_set.length", "${data.val_set.length}"),
            r"refers back to itself \(at data\.val_set\.length: '\$\{data\.val_set\.length\}'\)"),
    Crafted("two_key_loop", lambda r, _: _put(r, "data.num_classes", "${model.num_classes}"),
            r"refers back to itself \(at data\.num_classes: '\$\{model\.num_classes\}'\)"),
    Crafted("missing_key", lambda r, _: _put(r, "data.val_set.length", "${data.nosuch}"),
            r"reference that cannot be resolved: Interpolation key 'data\.nosuch' not found "
            r"\(at data\.val_set\.length"),
    Crafted("reference_bomb", _reference_bomb, r"expands to more than 100000 values when its references are resolved"),
    # 5. plain data of the right shape
    Crafted("format_999", lambda r, _: _put(r, "format", 999),
            r"is of format 999 \(at format\), which this version does not read \(it reads format 1\)"),
    Crafted("class_names_not_strings", lambda r, _: _put(r, "class_names", [1, 2, 3, 4, 5, 6]),
            r"class name that is not a printable string: 1 \(at class_names\[0\]\)"),
    Crafted("data_class_names_of_lists",
            lambda r, _: _put(r, "data.class_names", [[1], [2], {"a": 1}, None, True, "x"]),
            r"class name that is not a printable string: \[1\] \(at data\.class_names\[0\]\)"),
    Crafted("class_names_too_many", lambda r, _: _put(r, "class_names", [f"n{i}" for i in range(300)]),
            r"class_names that are not a list of 6 names \(data\.num_classes\)"),
    Crafted("palette_out_of_range", lambda r, _: _put(r, "palette", [[300, -5, 0], *r["palette"][1:]]),
            r"palette colour that is not \[r, g, b\] of integers 0\.\.255: \[300, -5, 0\] \(at palette\[0\]\)"),
    Crafted("palette_too_short", lambda r, _: _put(r, "palette", [[1, 2, 3]]),
            r"palette that is not a list of 6 colours \(data\.num_classes\): \[\[1, 2, 3\]\] \(at palette\)"),
]
CRAFTED += SHAPES
BY_ID = {c.id: c for c in CRAFTED}
#: every route a recipe takes into a task, each with the cases that matter most there
ROUTES = {
    "eval": [c.id for c in CRAFTED],
    "predict_ckpt": ["builtins_open", "nested_in_transform_list", "os_system", "choices_with_a_path",
                     "reference_to_the_trainer", "val_transform_is_the_train_transform", "missing_key",
                     "class_names_not_strings", "palette_out_of_range"],
    "predict_onnx": ["builtins_open", "nested_in_transform_list", "interpolated_target", "subprocess_run",
                     "resolver_builds_a_node", "choices_with_a_path", "select_of_a_logger",
                     "model_node_referenced_in_data", "interpolated_key", "reference_bomb", "self_reference",
                     "format_999", "data_class_names_of_lists", "recursive_false"],
    "export": ["builtins_open", "shutil_rmtree", "partial", "attribute_walk", "args_on_the_model",
               "two_key_loop", "palette_too_short"],
    "resume": ["builtins_open", "os_system", "nested_in_transform_list", "interpolated_target",
               "reference_to_the_trainer", "recursive_false", "two_key_loop"],
}
CASES = [(route, BY_ID[name]) for route, names in ROUTES.items() for name in names]

_GENUINE: dict[str, Any] = {}  # one genuine checkpoint for the whole module (a compose and a model build)


@pytest.fixture
def workspace(compose_cfg, tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "files", compose_cfg)
    ws.root.mkdir()
    (ws.root / "victim.txt").write_bytes(VICTIM)
    (ws.root / "victim_dir").mkdir()
    (ws.root / "victim_dir" / "keep.txt").write_bytes(VICTIM)
    return ws


def genuine_checkpoint(ws: Workspace) -> dict[str, Any]:
    if "ckpt" not in _GENUINE:
        _GENUINE["ckpt"] = {**ws.checkpoint(), **RESUMABLE}
    return copy.deepcopy(_GENUINE["ckpt"])


def no_harm_done(root: Path) -> None:
    assert (root / "victim.txt").read_bytes() == VICTIM, "the recipe truncated or rewrote the victim file"
    assert (root / "victim_dir" / "keep.txt").read_bytes() == VICTIM, "the recipe removed the victim folder"
    assert not (root / MARKER).exists(), "the recipe ran a command"


def crafted_checkpoint(ws: Workspace, crafted: Crafted) -> Path:
    ckpt = genuine_checkpoint(ws)
    crafted.edit(ckpt["recipe"], ws.root)
    path = ws.root / f"{crafted.id}.ckpt"
    torch.save(ckpt, path)
    return path


def crafted_onnx(ws: Workspace, crafted: Crafted) -> Path:
    """An ONNX file (a 1x1 convolution to the recipe's 6 classes) whose metadata holds the crafted recipe."""
    recipe = genuine_checkpoint(ws)["recipe"]
    crafted.edit(recipe, ws.root)
    return onnx_with_metadata(ws.root / f"{crafted.id}.onnx", json.dumps(recipe))


def onnx_with_metadata(path: Path, text: str) -> Path:
    import onnx

    from seg_template.onnx_model import RECIPE_KEY, export_onnx

    export_onnx(torch.nn.Conv2d(3, 6, 1), path, torch.zeros(1, 3, 8, 8), dynamo=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = RECIPE_KEY, text
    onnx.save(proto, str(path))
    return path


def run_route(route: str, ws: Workspace, crafted: Crafted, compose_cfg, out: Path) -> tuple[Path, Callable]:
    """``(the crafted file, a call running the task on it in-process)``."""
    from seg_template.eval import evaluate
    from seg_template.export import run_export
    from seg_template.predict import run_predict
    from seg_template.train import train

    if route == "predict_onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
        file = crafted_onnx(ws, crafted)
    else:
        file = crafted_checkpoint(ws, crafted)
    option = "model_file" if route == "predict_onnx" else "ckpt_path"
    if route == "eval":
        overrides = [*SMALL, f"ckpt_path={file}"]
        return file, lambda: evaluate(compose_cfg("eval", overrides, output_dir=out), overrides)
    if route.startswith("predict"):
        overrides = [*PREDICT, "device=cpu", f"{option}={file}", f"input={ws['images']}", f"output_dir={out}"]
        return file, lambda: run_predict(compose_cfg("predict", overrides, output_dir=out), overrides)
    if route == "export":
        overrides = [f"ckpt_path={file}", f"output_file={out / 'model.onnx'}"]
        return file, lambda: run_export(compose_cfg("export", overrides, output_dir=out), overrides)
    overrides = [*TRAIN, f"ckpt_path={file}", "trainer.max_epochs=2"]
    return file, lambda: train(compose_cfg("train", overrides, output_dir=out))


@pytest.mark.parametrize(("route", "crafted"), CASES, ids=[f"{r}/{c.id}" for r, c in CASES])
def test_crafted_recipe_is_refused(route: str, crafted: Crafted, compose_cfg, workspace: Workspace,
                                   tmp_path: Path) -> None:
    if route == "predict_onnx" and not crafted.json_ok:
        pytest.skip("JSON metadata cannot hold it")
    if route in ("export", "predict_onnx"):
        skip_unless_onnx()
    file, call = run_route(route, workspace, crafted, compose_cfg, tmp_path / "out")
    err = raised_user_error(call)
    assert isinstance(err, CheckpointError), f"{type(err).__name__}: {err}"
    option = "model_file" if route == "predict_onnx" else "ckpt_path"
    assert_short_named(user_message(err), rf"{option}: '{re.escape(str(file))}' carries a recipe .*"
                                          rf"{crafted.culprit}.*may have been crafted")
    no_harm_done(workspace.root)
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.parametrize("name", ["builtins_open", "nested_in_transform_list", "interpolated_target",
                                  "resolver_builds_a_node", "partial"])
def test_crafted_nodes_are_live(name: str, workspace: Workspace, tmp_path: Path) -> None:
    """The crafted nodes are no straw men: Hydra itself (>= 1.3.4, whose blocklist lacks ``open``) runs them,
    so only the door stands between such a file and the victim. Here on a scratch copy of the victim."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "victim.txt").write_bytes(VICTIM)
    recipe = copy.deepcopy(genuine_checkpoint(workspace)["recipe"])
    BY_ID[name].edit(recipe, scratch)
    node = OmegaConf.create(recipe)
    target = node.data.test_set if name == "partial" else node.data.val_transform
    with pytest.raises(Exception):  # noqa: B017 - eval_transform / open choke on what follows; the harm is done
        made = instantiate(target)
        if name == "partial":
            made()  # whoever calls the partial opens the victim for writing
        raise RuntimeError("ran")
    assert (scratch / "victim.txt").read_bytes() == b"", "the crafted node did not truncate its victim"


@pytest.mark.parametrize(("text", "culprit"), [
    ("{not json", r"not readable JSON \(JSONDecodeError"),
    ("[" * 100_000 + "]" * 100_000, r"not readable JSON \(RecursionError"),
    ("[1, 2]", r"carries a recipe that is a list, not a mapping"),
    ('{"data": "synthetic"}', r"not a training recipe \(data, model and loss must be mappings"),
], ids=["not_json", "nested_past_the_json_reader", "a_list", "data_not_a_mapping"])
def test_onnx_metadata_that_is_no_recipe_is_named(text: str, culprit: str, compose_cfg, workspace: Workspace,
                                                  tmp_path: Path) -> None:
    from seg_template.predict import run_predict

    pytest.importorskip("onnxruntime")
    file = onnx_with_metadata(workspace.root / "odd.onnx", text)
    overrides = [*PREDICT, "device=cpu", f"model_file={file}", f"input={workspace['images']}",
                 f"output_dir={tmp_path / 'out'}"]
    assert recipe_argv(["predict.py", f"model_file={file}"], ("data",)) == ["predict.py", f"model_file={file}"]
    err = raised_user_error(lambda: run_predict(compose_cfg("predict", overrides, output_dir=tmp_path), overrides))
    assert isinstance(err, CheckpointError)
    assert_short_named(user_message(err), rf"model_file: '{re.escape(str(file))}' .*{culprit}")


def test_crafted_shapes_are_live(compose_cfg, workspace: Workspace) -> None:
    """Without the door these recipes go wrong in the task (the stranger's report): ``${trainer}`` reads the
    eval config's Trainer node into ``data``, ``loss._recursive_: false`` leaves the loss a DictConfig to call
    (a TypeError traceback mid-validation), a missing key is an OmegaConf traceback from ``instantiate``."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationKeyError

    def unguarded(name: str) -> DictConfig:  # the recipe's nodes in place, as apply_recipe does past the door
        recipe = copy.deepcopy(genuine_checkpoint(workspace)["recipe"])
        BY_ID[name].edit(recipe, workspace.root)
        cfg = compose_cfg("eval", [*SMALL, "ckpt_path=x"])
        for node in ("data", "model", "loss"):
            cfg[node] = recipe[node]
        return cfg

    trainer = OmegaConf.select(unguarded("reference_to_the_trainer"), "data.val_set.length")
    assert trainer._target_ == "pytorch_lightning.Trainer"
    assert isinstance(instantiate(unguarded("recursive_false").loss).main, DictConfig)
    with pytest.raises(InterpolationKeyError):
        instantiate(unguarded("missing_key").data)


def _alias_bomb(levels: int) -> str:
    """A YAML list whose last item is ``levels`` nested lists of ten aliases each: 10^levels strings once
    anything walks it (``str(item)``), from a file of a few hundred bytes."""
    lines = ["- &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_run_folder_yaml_alias_bomb_next_to_a_checkpoint_drops_the_hint(compose_cfg, workspace: Workspace,
                                                                        tmp_path: Path) -> None:
    """A recipe-less checkpoint in ``<run>/checkpoints/`` with a crafted ``<run>/.hydra/overrides.yaml``: its
    aliases are refused by the door's YAML reader, so eval names the missing recipe with the general hint
    (the original main walked the aliases to print the hint: MemoryError at nine levels, here six)."""
    from seg_template.eval import evaluate

    run = workspace.root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model=small\n" + _alias_bomb(6))
    file = run / "checkpoints" / "best.ckpt"
    torch.save({k: v for k, v in genuine_checkpoint(workspace).items() if k != "recipe"}, file)
    overrides = [f"ckpt_path={file}"]
    err = raised_user_error(lambda: evaluate(compose_cfg("eval", overrides, output_dir=tmp_path / "out"), overrides))
    assert isinstance(err, CheckpointError)
    assert_short_named(user_message(err), rf"ckpt_path={re.escape(str(file))} carries no training recipe.*"
                                          r"its training run lists them in <run>/\.hydra/overrides\.yaml")
    assert "the run that wrote it used" not in str(err)


@pytest.mark.parametrize(("text", "culprit"), [
    (_alias_bomb(9), r"holds a YAML anchor or alias \(1:3\)"),
    ("a: &x 1\nb: 2\n", r"holds a YAML anchor or alias"),
    ("base: &b {x: 1}\nother: {<<: *b}\n", r"holds a YAML anchor or alias"),
    ("- " + "x" * 1_100_000 + "\n", r"is larger than 1000000 bytes"),
    ("[" * 50_000 + "]" * 50_000, r"nests deeper than can be read"),
    ("!!python/object/apply:os.system [touch marker]\n", r"is not readable YAML \(could not determine a constructor"),
], ids=["alias_bomb", "anchor", "merge_key", "over_the_cap", "nested_past_the_reader", "python_tag"])
def test_run_folder_yaml_is_read_through_the_door(text: str, culprit: str, tmp_path: Path, capsys) -> None:
    """Every YAML file read back from a run folder passes ``file_config.read_run_yaml``: the hint beside a
    checkpoint, a sweep's ``multirun.yaml`` (a submitit job's command line, the sweep summary's direction)."""
    from seg_template.errors import ConfigError
    from seg_template.file_config import read_run_yaml
    from seg_template.models.weights import training_overrides
    from seg_template.paths import _sweep_command_line
    from seg_template.sweep_summary import _direction

    for name in ("overrides.yaml", "multirun.yaml"):
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        read_run_yaml(tmp_path / "overrides.yaml")
    assert_short_named(str(err.value), rf"'{re.escape(str(tmp_path / 'overrides.yaml'))}' \(a YAML file read back "
                                       rf"from a run folder\) {culprit}")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(text)
    assert training_overrides(tmp_path / "checkpoints" / "x.ckpt") == []  # the hint is dropped
    with pytest.raises(ConfigError, match=rf"multirun\.yaml.* {culprit}"):
        _sweep_command_line(tmp_path / "multirun.yaml")
    assert _direction(tmp_path, "val/mIoU") == 1  # ranked by the objective's name, the refusal printed
    assert re.search(rf"Sweep summary: .*multirun\.yaml.* {culprit}", capsys.readouterr().out)
    assert not (tmp_path / "marker").exists()


def test_recipe_argv_never_turns_a_crafted_choice_into_an_option(workspace: Workspace) -> None:
    """``choices`` become ``data=<name>`` before Hydra parses argv: a crafted one is dropped there (and the
    task then refuses the file), whether the file is a checkpoint or an ONNX file."""
    path = crafted_checkpoint(workspace, BY_ID["choices_with_a_path"])
    argv = ["eval.py", f"ckpt_path={path}"]
    assert recipe_argv(argv, ("data", "model", "loss")) == argv
    ckpt = genuine_checkpoint(workspace)
    ckpt["recipe"]["choices"] = {"data": "synthetic", "model": "small"}
    ckpt["recipe"]["data"]["val_transform"] = {"_target_": "builtins.open"}
    torch.save(ckpt, workspace.root / "open.ckpt")
    argv = ["eval.py", f"ckpt_path={workspace.root / 'open.ckpt'}"]
    assert recipe_argv(argv, ("data", "model")) == argv  # the task reads it again and refuses it


def test_resumed_checkpoint_state_never_deletes_a_file_outside_the_run(compose_cfg, tmp_path: Path) -> None:
    """A checkpoint's callback state names files too: Lightning deletes its restored ``last_model_path`` /
    ``kth_best_model_path`` when it writes the next one, and only checks that the path lies under the run's
    checkpoint folder without normalising ``..``. On the original main a crafted ``last.ckpt`` whose state
    says ``<checkpoints>/../../victim.txt`` deleted that file at the first epoch after resuming; the paths are
    now mapped to the run's own files (``seg_template.callbacks.checkpoint.relocated_state``)."""
    from seg_template.train import train

    run = tmp_path / "run"
    (tmp_path / "victim.txt").write_bytes(VICTIM)
    train(compose_cfg("train", [*TRAIN, "trainer.max_epochs=1"], output_dir=run))
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("BestAndLastCheckpoint")]
    state = ckpt["callbacks"][key]
    evil = f"{state['dirpath']}/../../victim.txt"
    state.update(last_model_path=evil, kth_best_model_path=evil, best_model_path=evil,
                 best_k_models={evil: state["best_model_score"]})
    torch.save(ckpt, last)
    train(compose_cfg("train", [*TRAIN, "trainer.max_epochs=2", f"ckpt_path={last}"], output_dir=run))
    assert (tmp_path / "victim.txt").read_bytes() == VICTIM, "resuming deleted a file the checkpoint named"
    assert (run / "checkpoints" / "last.ckpt").is_file()


# ---------------------------------------------------------------------------------- the real scripts
@pytest.mark.slow
@pytest.mark.parametrize("route", ["eval", "predict_onnx"])
def test_real_script_refuses_a_crafted_file(route: str, workspace: Workspace) -> None:
    """``python eval.py ckpt_path=<crafted>`` / ``python predict.py model_file=<crafted>``: exit 1, one short
    block naming the file and the target, the victim file unchanged."""
    crafted = BY_ID["nested_in_transform_list"]
    if route == "eval":
        file = crafted_checkpoint(workspace, crafted)
        args = ["eval.py", *SMALL, f"ckpt_path={file}", f"paths.log_dir={workspace.root / 'logs'}"]
    else:
        pytest.importorskip("onnxruntime")
        file = crafted_onnx(workspace, crafted)
        args = ["predict.py", f"model_file={file}", f"input={workspace['images']}", "device=cpu",
                f"output_dir={workspace.root / 'out'}", f"paths.log_dir={workspace.root / 'logs'}"]
    result = run_script(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "][ERROR] - " in line]
    assert len(errors) == 1, output[-3000:]
    block = output[output.index(errors[0]):]
    assert_short_named(block, rf"CheckpointError: .*'{re.escape(str(file))}'.*builtins\.open")
    no_harm_done(workspace.root)


# ---------------------------------------------------------------- values of the right shape that are wrong
VALUES = [
    Crafted("eval_batch_size_0", lambda r, _: _put(r, "data.eval_batch_size", 0),
            r"data\.eval_batch_size=0: expected an integer"),
    Crafted("unknown_argument", lambda r, _: _put(r, "model.evil", 1), r"model\.evil=1: .* takes no argument"),
    Crafted("dunder_target_key", lambda r, root: _put(r, "data.val_transform.__target__", "builtins.open"),
            r"data\.val_transform\.__target__=.*takes no argument '__target__'"),
    Crafted("duplicate_class_names", lambda r, _: _put(r, "data.class_names", ["x"] * 6),
            r"data\.class_names=.*expected distinct names"),
    Crafted("nan_mean", lambda r, _: _put(r, "data.val_transform.mean", [float("nan"), 0.5, 0.5]),
            r"data\.val_transform\.mean\[0\]=nan: expected a finite number"),
]
VALUE_CASES = [(route, c) for c in VALUES for route in ("eval", "predict_ckpt", "predict_onnx", "export")]


@pytest.mark.parametrize(("route", "crafted"), VALUE_CASES, ids=[f"{r}/{c.id}" for r, c in VALUE_CASES])
def test_a_recipe_value_that_is_wrong_names_the_file(route: str, crafted: Crafted, compose_cfg,
                                                     workspace: Workspace, tmp_path: Path) -> None:
    """A recipe whose values are refused by the option check said ``data.batch_size=0: ...`` as if the user had
    typed it (and the log's "from the command line: data=synthetic ..." listed options nobody typed): the
    message now names the file the values came from, each one marked."""
    if route == "export":
        pytest.importorskip("onnx")
    file, call = run_route(route, workspace, crafted, compose_cfg, tmp_path / "out")
    err = raised_user_error(call)
    option = "model_file" if route == "predict_onnx" else "ckpt_path"
    assert_short_named(user_message(err), rf"{option}={re.escape(str(file))} carries a recipe whose options are "
                                          rf"refused.*\n  {crafted.culprit}.*\(from the file\)")
    no_harm_done(workspace.root)


def test_a_typed_mistake_over_a_recipe_is_the_users(compose_cfg, workspace: Workspace, tmp_path: Path) -> None:
    from seg_template.eval import evaluate

    file = crafted_checkpoint(workspace, Crafted("genuine", lambda r, _: None, ""))
    overrides = [*SMALL, f"ckpt_path={file}", "data.batch_size=0"]
    err = raised_user_error(lambda: evaluate(compose_cfg("eval", overrides, output_dir=tmp_path), overrides))
    assert str(err).startswith("data.batch_size=0: expected an integer") and "from the file" not in str(err)


def test_recipe_choices_that_contradict_their_nodes_are_refused(compose_cfg, workspace: Workspace,
                                                                 tmp_path: Path) -> None:
    """``choices: {model: hrnet_w48}`` over a ``small`` model node: the log said hrnet_w48 while small was built,
    and recipe_argv composed hrnet_w48's config for the options typed over it."""
    crafted = Crafted("choices_lie", lambda r, _: _put(r, "choices", {**r["choices"], "model": "hrnet_w48"}), "")
    file, call = run_route("eval", workspace, crafted, compose_cfg, tmp_path / "out")
    err = raised_user_error(call)
    assert isinstance(err, CheckpointError)
    assert_short_named(user_message(err), rf"ckpt_path={re.escape(str(file))} carries a recipe whose choices say "
                                          r"model=hrnet_w48, but its model node builds 'seg_template\.models\.small")


def test_the_no_recipe_hint_quotes_what_a_crafted_run_folder_lists(compose_cfg, workspace: Workspace,
                                                                    tmp_path: Path) -> None:
    """The hint is there to be pasted into a shell: options from a crafted overrides.yaml ($(...), backticks,
    ';') are shown shell-quoted, so pasting it runs nothing."""
    import shlex

    from seg_template.eval import evaluate

    run = workspace.root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    payloads = ["data.root=$(touch PWNED)", "model=small; touch PWNED #", "data=synthetic `touch PWNED`"]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {json.dumps(p)}\n" for p in payloads))
    file = run / "checkpoints" / "best.ckpt"
    torch.save({k: v for k, v in genuine_checkpoint(workspace).items() if k != "recipe"}, file)
    overrides = [f"ckpt_path={file}"]
    err = raised_user_error(lambda: evaluate(compose_cfg("eval", overrides, output_dir=tmp_path / "out"), overrides))
    hint = str(err).split("the run that wrote it used: ", 1)[1].rstrip(")")
    assert shlex.split(hint) == payloads  # each one a single, inert word for the shell
