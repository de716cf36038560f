"""The training recipe inside a checkpoint (seg_template/recipe.py): what is stored, how it loads, and how the
command line's options are laid over it."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
from omegaconf import OmegaConf

from seg_template.errors import CheckpointError
from seg_template.file_config import allowed_targets, check_file_config, check_recipe, is_plain_reference
from seg_template.paths import CONFIG_DIR, PROJECT_ROOT
from seg_template.recipe import (
    apply_recipe,
    no_recipe_message,
    read_checkpoint_recipe,
    read_recipe,
    recipe_argv,
    recipe_from,
    with_recipe,
)


@pytest.fixture
def cityscapes_recipe(compose_cfg):
    return recipe_from(compose_cfg(overrides=["data=cityscapes", "model=hrnet_w18_small", "loss=ohem"]))


def test_recipe_loads_with_weights_only(cityscapes_recipe) -> None:
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "recipe": cityscapes_recipe}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["recipe"] == cityscapes_recipe


def test_recipe_keeps_inner_references_and_resolves_outer_ones(cityscapes_recipe) -> None:
    data = cityscapes_recipe["data"]
    # ${paths.data_dir}/cityscapes as it was resolved in training: the same machine needs no data.root=
    assert data["root"] == str(PROJECT_ROOT / "data" / "cityscapes")
    # ...while the splits still follow data.root, so data.root=/elsewhere reaches all of them
    assert data["val_set"]["root"] == "${data.root}" and data["test_set"]["root"] == "${data.val_set.root}"
    assert data["test_set"]["label_type"] == "${data.val_set.label_type}"  # test = val, a node of its own
    assert cityscapes_recipe["model"]["num_classes"] == "${data.num_classes}"
    assert cityscapes_recipe["loss"]["main"]["memory_efficient"] == "${..memory_efficient}"
    assert cityscapes_recipe["class_names"][:2] == ["road", "sidewalk"] and len(cityscapes_recipe["class_names"]) == 19
    assert cityscapes_recipe["palette"][0] == [128, 64, 128]


def test_overrides_win_over_the_recipe(compose_cfg, cityscapes_recipe) -> None:
    typed = ["data=cityscapes", "data.root=/new/place", "data.val_set.label_type=labelIds", "+model.extra=1",
             "~data.ohem_min_kept"]
    cfg = compose_cfg("eval", ["ckpt_path=x", *typed])
    cityscapes_recipe["choices"] = {"data": "cityscapes", "model": "hrnet_w18_small", "loss": "ohem"}
    out = apply_recipe(cfg, cityscapes_recipe, typed)
    assert out.model._target_.endswith("hrnet.hrnet") and "Ohem" in OmegaConf.to_yaml(out.loss)  # the recipe's
    assert out.data.val_set.root == "/new/place" and out.data.test_set.root == "/new/place"
    assert out.data.test_set.label_type == "labelIds" and out.model.extra == 1
    assert "ohem_min_kept" not in out.data
    assert out.inference.align_corners is False  # eval's own nodes resolve against the recipe's model


def test_a_group_chosen_on_the_command_line_replaces_the_recipe(compose_cfg, cityscapes_recipe) -> None:
    cityscapes_recipe["choices"] = {"data": "cityscapes", "model": "hrnet_w18_small"}
    cfg = compose_cfg("eval", ["ckpt_path=x", "model=small"])
    out = apply_recipe(cfg, cityscapes_recipe, ["model=small"])
    assert out.model._target_.endswith("small_segnet")  # the user's choice
    assert out.data.num_classes == 19 and out.model.num_classes == 19  # the recipe's data still


def test_with_recipe_drops_pretrained_and_compile(compose_cfg, cityscapes_recipe) -> None:
    cityscapes_recipe["model"]["compile"] = True
    out = with_recipe(compose_cfg("eval", ["ckpt_path=x"]), "x.ckpt", cityscapes_recipe, [])
    assert out.model.pretrained is None and out.model.compile is False  # weights come from the checkpoint
    kept = with_recipe(compose_cfg("eval", ["ckpt_path=x", "model.compile=true"]), "x.ckpt", cityscapes_recipe,
                       ["model.compile=true"])
    assert kept.model.compile is True


def test_read_checkpoint_recipe(tmp_path, cityscapes_recipe) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "recipe": cityscapes_recipe}, tmp_path / "a.ckpt")
    assert read_checkpoint_recipe(tmp_path / "a.ckpt") == cityscapes_recipe
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pth")
    assert read_checkpoint_recipe(tmp_path / "plain.pth") is None
    torch.save({"state_dict": {}, "recipe": [1, 2]}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="not a training recipe"):
        read_checkpoint_recipe(tmp_path / "odd.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.ckpt"):
        read_checkpoint_recipe(tmp_path / "text.ckpt")


def test_recipe_argv_composes_the_trained_config_files(tmp_path, cityscapes_recipe) -> None:
    cityscapes_recipe["choices"] = {"data": "cityscapes", "model": "hrnet_w18_small", "loss": "ohem",
                                    "data/class_weights": "null"}
    torch.save({"state_dict": {}, "recipe": cityscapes_recipe}, tmp_path / "a.ckpt")
    argv = ["eval.py", f"ckpt_path={tmp_path / 'a.ckpt'}", "data.val_set.label_type=labelIds"]
    assert recipe_argv(argv, ("data", "model", "loss")) == [*argv, "data=cityscapes", "model=hrnet_w18_small",
                                                            "loss=ohem"]
    assert recipe_argv([*argv, "model=small"], ("data", "model")) == [*argv, "model=small", "data=cityscapes"]
    for untouched in ([*argv, "--help"], [*argv, "-m"], ["eval.py", "ckpt_path=missing.ckpt"], ["eval.py"]):
        assert recipe_argv(untouched, ("data",)) == untouched
    cityscapes_recipe["choices"] = {"data": "my_own_dataset"}  # a config file that is not here
    torch.save({"state_dict": {}, "recipe": cityscapes_recipe}, tmp_path / "b.ckpt")
    assert recipe_argv(["eval.py", f"ckpt_path={tmp_path / 'b.ckpt'}"], ("data",)) == [
        "eval.py", f"ckpt_path={tmp_path / 'b.ckpt'}"]


def test_recipe_holds_plain_containers_only(compose_cfg) -> None:
    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    recipe = recipe_from(compose_cfg())
    assert plain(recipe)  # no DictConfig, Path or numpy: what weights_only=True reads back
    assert set(recipe) >= {"format", "data", "model", "loss", "class_names", "palette", "choices"}


# ------------------------------------------------------------------ the door (seg_template/file_config.py)
def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_recipe_the_configs_can_train_passes_the_door(compose_cfg) -> None:
    """No false refusals: the recipe of every data, model, loss and experiment config is accepted."""
    runs = [[f"data={d}"] for d in _options("data")] + [[f"model={m}"] for m in _options("model")]
    runs += [[f"loss={loss}"] for loss in _options("loss")] + [[f"experiment={e}"] for e in _options("experiment")]
    for overrides in runs:
        recipe = recipe_from(compose_cfg(overrides=overrides))
        recipe["choices"] = {"data": "cityscapes", "data/class_weights": "cityscapes_hrnet", "loss": "ohem"}
        check_recipe(recipe, "x.ckpt")


def test_allowed_targets_are_the_exact_names_written_in_the_yaml_files(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text(
        "_target_: my_fork.data.MyData  # a forker's dataset\n"
        "aug:\n  - _target_: my_fork.aug.Flip\n  - {p: 0.5, inner: {_target_: my_fork.aug.Crop}}\n"
        "other: {_target_: '${data.x}'}\n# _target_: commented.Out\n")
    (tmp_path / "broken.yaml").write_text("a: [unclosed\n")
    allowed = allowed_targets(tmp_path)
    assert allowed == {"my_fork.data.MyData", "my_fork.aug.Flip", "my_fork.aug.Crop"}
    check_file_config({"data": {"_target_": "my_fork.aug.Flip"}}, "f.ckpt", allowed=allowed)
    for lookalike in ("my_fork.aug.Flip.__init__", "my_fork.aug", "my_fork.aug.Flip ", "my_fork.aug.flip"):
        shown = repr(lookalike) if lookalike != lookalike.strip() else lookalike  # a space made visible
        with pytest.raises(CheckpointError, match=re.escape(f"would call {shown}")):
            check_file_config({"data": {"_target_": lookalike}}, "f.ckpt", allowed=allowed)
    assert {"seg_template.data.transforms.eval_transform", "torch.optim.SGD"} <= allowed_targets()


def test_a_recipe_node_holds_only_the_targets_of_its_own_node(compose_cfg) -> None:
    """A Trainer, a logger or a loss is one of the project's targets, but never inside a recipe's data node:
    each key is checked against the targets the config files write at that key."""
    from seg_template.file_config import targets_by_node

    by_node = targets_by_node()
    assert "seg_template.losses.CrossEntropy" in by_node["loss"] and "pytorch_lightning.Trainer" in by_node["trainer"]
    good = recipe_from(compose_cfg())
    check_recipe(good, "x.ckpt")
    for node, target in (("data", "pytorch_lightning.Trainer"), ("data", "pytorch_lightning.loggers.MLFlowLogger"),
                         ("model", "seg_template.losses.CrossEntropy"), ("loss", "torch.optim.SGD")):
        recipe = {**good, node: {**good[node], "_target_": target}}
        with pytest.raises(CheckpointError, match=re.escape(f"would call {target} (at {node}._target_)")):
            check_recipe(recipe, "x.ckpt")


def test_only_plain_references_pass_as_interpolations() -> None:
    for text in ("${data.root}", "${..memory_efficient}", "${oc.select:data.imagenet_pretrained,null}",
                 "${data.root}/val", "no interpolation", "${data.train_set.image_size}"):
        assert is_plain_reference(text), text
    for text in ("${oc.create:{_target_: builtins.open}}", "${oc.decode:'{a: 1}'}", "${oc.env:HOME}",
                 "${now:%H}", "${data.${key}}", "${oc.select:nokey,{_target_: os.system}}", "${}", "${unclosed"):
        assert not is_plain_reference(text), text


def test_the_door_names_the_file_the_key_and_the_target() -> None:
    crafted = {"data": {"val_transform": {"_target_": "builtins.open", "_args_": ["/etc/passwd", "w"]}}}
    with pytest.raises(CheckpointError) as err:
        check_recipe(crafted, "/x/evil.ckpt")
    assert str(err.value).startswith("ckpt_path: '/x/evil.ckpt' carries a recipe that would call builtins.open "
                                     "(at data.val_transform._target_). The file was not used")
    with pytest.raises(CheckpointError) as err:  # a file's newlines never forge lines of the message
        check_recipe({"data": {"a\nb": {"_target_": "os.system\n[ERROR] - all fine"}}}, "x.ckpt")
    assert "\n" not in str(err.value) and r"would call 'os.system\n[ERROR] - all fine' (at data.'a\nb'." in str(err.value)
    for odd in ({"data": [1]}, {"data": {}, "model": "hrnet"}, {"data": {}, "choices": ["data"]},
                {"data": {}, "choices": {"data": "a b"}}, {"data": {}, "choices": {"../data": "x"}},
                {"data": {3.5: "x"}}, {"data": {"x": b"bytes"}}):
        with pytest.raises(CheckpointError, match="x.ckpt"):
            check_recipe(odd, "x.ckpt")


def test_the_door_is_on_every_way_a_recipe_is_read(compose_cfg, tmp_path, cityscapes_recipe) -> None:
    cityscapes_recipe["model"]["_target_"] = "os.system"
    torch.save({"state_dict": {}, "recipe": cityscapes_recipe}, tmp_path / "a.ckpt")
    for read in (read_checkpoint_recipe, read_recipe):
        with pytest.raises(CheckpointError, match=r"a\.ckpt' carries a recipe that would call os\.system"):
            read(tmp_path / "a.ckpt")
    cfg = compose_cfg("eval", ["ckpt_path=x"])
    with pytest.raises(CheckpointError, match=r"model_file: '.*m\.onnx' .*os\.system \(at model\._target_\)"):
        with_recipe(cfg, "m.onnx", cityscapes_recipe, [], "predict.py", "model_file")
    with pytest.raises(CheckpointError, match=r"os\.system"):
        apply_recipe(cfg, cityscapes_recipe, [])


def test_the_no_recipe_hint_never_suggests_retyping_code(tmp_path) -> None:
    """A run folder handed over with a recipe-less checkpoint may be crafted too: its overrides.yaml is shown
    as a hint to copy, so options naming code or interpolations are left out."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- data=synthetic\n- model.width=4\n- model._target_=os.system\n- +model._args_=[rm -rf ~]\n"
        "- data.root=${oc.env:HOME}\n")
    message = no_recipe_message(str(tmp_path / "checkpoints" / "x.ckpt"), "ckpt_path", "eval.py")
    assert "used: data=synthetic model.width=4 and 3 option(s) naming code or interpolations, not shown" in message
    assert "os.system" not in message and "rm -rf" not in message and "oc.env" not in message
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- data.x{i}=1\n" for i in range(5000)) + f"- data.root=/{'a' * 10_000}\n")
    message = no_recipe_message(str(tmp_path / "checkpoints" / "x.ckpt"), "ckpt_path", "eval.py")
    assert "data.x19=1 and 4981 more option(s), too many or too long to show)" in message and len(message) < 1000


def test_a_special_key_is_allowed_only_at_the_key_the_config_files_write_it(tmp_path, compose_cfg) -> None:
    """The allow-list is per key path: a fork's YAML extends it at the key it writes (``# @package`` headers
    respected), a node written as a reference (``test_set: ${data.val_set}``) may hold what its referent may."""
    import shutil

    from seg_template.config_specials import allowed_at

    assert '"seg_template.data.transforms.eval_transform"' in allowed_at(("data", "val_transform", "_target_"))
    assert '"seg_template.data.transforms.train_transform"' not in allowed_at(("data", "val_transform", "_target_"))
    assert '"seg_template.data.cityscapes.CityscapesDataset"' in allowed_at(("data", "test_set", "_target_"))
    assert allowed_at(("data", "test_set", "_partial_")) == {"true"} and not allowed_at(("loss", "_recursive_"))
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "experiment" / "fork.yaml").write_text(
        "# @package _global_\ndata:\n  val_transform:\n    _target_: my_fork.EvalTransform\n")
    (configs / "augment").mkdir()
    (configs / "augment" / "strong.yaml").write_text(
        "# @package data.train_transform\n_target_: my_fork.StrongTransform\n_convert_: all\n"
        "extra:\n  - {_target_: my_fork.Jitter}\n")
    recipe = recipe_from(compose_cfg())
    recipe["data"]["val_transform"] = {"_target_": "my_fork.EvalTransform"}
    recipe["data"]["train_transform"].update(_convert_="all", extra=[{"_target_": "my_fork.Jitter"}] * 2)
    check_recipe(recipe, "x.ckpt", config_dir=configs)
    with pytest.raises(CheckpointError, match=r"would call my_fork\.Jitter \(at data\.train_transform\.extra\[0\]\."):
        check_recipe(recipe, "x.ckpt")  # the project's own configs never write them
    recipe["data"]["val_transform"]["_convert_"] = "all"
    with pytest.raises(CheckpointError, match=r"has _convert_: 'all' \(at data\.val_transform\._convert_\)"):
        check_recipe(recipe, "x.ckpt", config_dir=configs)


def test_references_stay_inside_the_recipe_and_resolve(compose_cfg) -> None:
    """Relative references count from where they are written; the door resolves the nodes on their own and
    names the key of a loop, a missing key or a reference bomb (recipe_resolution.py)."""
    from seg_template.recipe_resolution import MAX_VALUES, Unresolvable, resolved_nodes

    good = recipe_from(compose_cfg(overrides=["data=cityscapes", "loss=ohem"]))
    good["loss"]["main"]["aux_weight"] = "${...model.align_corners}"  # loss.main -> loss -> top -> model
    good["data"]["val_set"]["length"] = "${oc.select:data.nosuch,4}"
    check_recipe(good, "x.ckpt")
    for value, culprit in (("${....model.width}", r"reference to '\.\.\.\.model\.width'"),
                           ("${oc.select:paths.data_dir,null}", r"reference to 'paths\.data_dir'"),
                           ("${hydra:runtime.cwd}", r"interpolation that would build config")):
        bad = copy.deepcopy(good)
        bad["loss"]["main"]["aux_weight"] = value
        with pytest.raises(CheckpointError, match=rf"{culprit}.* \(at loss\.main\.aux_weight\)"):
            check_recipe(bad, "x.ckpt")
    bad = copy.deepcopy(good)
    bad["class_names"][0] = "${data.root}"
    with pytest.raises(CheckpointError, match=r"interpolation outside its data / model / loss nodes .*class_names\[0\]"):
        check_recipe(bad, "x.ckpt")
    cases = {
        "through_a_node": ({"data": {"a": "${data.a.x}"}}, r"refers back to itself \(at data\.a\)"),
        "a_node_in_itself": ({"data": {"x": "${data}"}}, r"refers back to itself \(at data\.x\)"),
        "string_loop": ({"data": {"a": "x${data.b}", "b": "y${data.a}"}}, r"refers back to itself"),
        "long_chain": ({"data": {f"a{i}": f"${{data.a{i + 1}}}" for i in range(100)}}, r"more than 32 references"),
        "string_chain": ({"data": {f"a{i}": f"x${{data.a{i + 1}}}" for i in range(300)}}, r"more than 128 nested"),
        "string_doubled": ({"data": {"s0": "x" * 1_000_000, **{f"s{i}": f"${{data.s{i - 1}}}${{data.s{i - 1}}}"
                                                                 for i in range(1, 40)}}},
                           rf"expands to more than {MAX_VALUES} values .*\(at data\.s7\)"),
    }
    for nodes, culprit in cases.values():
        with pytest.raises(Unresolvable, match=culprit):
            resolved_nodes(nodes)
    assert resolved_nodes({"data": {"root": "???", "val": {"root": "${data.root}"}, "test": "${data.val}",
                                    "t": "${data.test.root}/x"}}) == {
        "data": {"root": None, "val": {"root": None}, "test": {"root": None}, "t": "None/x"}}


def test_recipe_changes_name_the_resolved_values() -> None:
    from seg_template.recipe import recipe_changes

    trained = {"data": {"ohem_min_kept": 8192, "batch_size": 4}, "loss": {"main": {"_target_": "x.CE"}}}
    now = {"data": {"ohem_min_kept": 8192, "batch_size": 4},
           "loss": {"main": {"_target_": "x.Ohem", "min_kept": "${data.ohem_min_kept}"}}}
    assert recipe_changes(trained, now) == ["loss.main._target_: 'x.CE' -> 'x.Ohem'",
                                            "loss.main.min_kept: (none) -> 8192"]
    assert recipe_changes(now, now) == []
