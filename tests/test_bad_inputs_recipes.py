"""Catalogue family "file-borne recipes" (issue 17): a checkpoint's recipe or an ONNX file's metadata is data
that eval / predict / export turn into calls, so a crafted file must be refused before anything is built.

Each case writes a genuine checkpoint (or ONNX file) whose recipe one :class:`Crafted` edit has turned
hostile, hands it to a task in-process (eval, predict with ``ckpt_path=`` or ``model_file=``, export, resume
through ``train.py ckpt_path=``), and asserts: a ``CheckpointError`` whose short message names the file, the key
and the target, and no harm done (the victim file keeps its bytes, the victim folder is still there, no marker
file was created). ``test_crafted_nodes_are_live`` proves the crafted nodes would do that harm if Hydra
instantiated them, so a pass is not vacuous. The slow test runs the real scripts.

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
from tests.helpers import run_script

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
BY_ID = {c.id: c for c in CRAFTED}
#: every route a recipe takes into a task, each with the cases that matter most there
ROUTES = {
    "eval": [c.id for c in CRAFTED],
    "predict_ckpt": ["builtins_open", "nested_in_transform_list", "os_system", "choices_with_a_path"],
    "predict_onnx": ["builtins_open", "nested_in_transform_list", "interpolated_target", "subprocess_run",
                     "resolver_builds_a_node", "choices_with_a_path"],
    "export": ["builtins_open", "shutil_rmtree", "partial", "attribute_walk"],
    "resume": ["builtins_open", "os_system", "nested_in_transform_list", "interpolated_target"],
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
