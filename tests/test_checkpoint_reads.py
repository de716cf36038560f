"""Each command reads its checkpoint file once (issue 18, item 5): the recipe read before Hydra composes the
config, the recipe read in the task and the weights loaded into the network share one ``torch.load``; a resume's
check and Lightning's restore share one too (tests/test_train.py). ``torch.load`` is counted per file
(the ``torch_loads`` fixture)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from seg_template.errors import CheckpointError
from seg_template.models import weights
from seg_template.recipe import recipe_from
from tests.helpers import TRAINED, importable, save_checkpoint


def _command(task: str, argv: list[str], groups: tuple[str, ...]) -> list[str]:
    """The options ``python <task>.py <argv>`` composes with: ``argv`` and the groups recipe_argv adds from
    the file (as the entry points do before Hydra)."""
    from seg_template.recipe import recipe_argv

    return recipe_argv([f"{task}.py", *argv], groups, sources=("model_file", "ckpt_path"))[1:]


@pytest.mark.parametrize("task", ["eval", "predict", "export"])
def test_eval_predict_and_export_read_the_checkpoint_once(task, compose_cfg, tmp_path, torch_loads, one_thread):
    if task == "export" and not all(importable(n) for n in ("onnx", "onnxruntime", "onnxscript")):
        pytest.skip("needs the optional packages onnx, onnxruntime, onnxscript")
    ckpt = save_checkpoint(compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t"), tmp_path / "m.ckpt")
    torch_loads.clear()
    typed = [f"ckpt_path={ckpt}"]
    if task == "predict":
        from PIL import Image

        (tmp_path / "in").mkdir()
        Image.new("RGB", (40, 32)).save(tmp_path / "in" / "a.png")
        typed.append(f"input={tmp_path / 'in'}")
    if task == "export":
        typed += ["export.dynamo=false", "export.check_shapes=[[1,32,32]]", "export.threads=1"]
    groups = {"eval": ("data", "model", "loss")}.get(task, ("data", "model"))
    argv = _command(task, typed, groups)
    assert torch_loads[str(ckpt.resolve())] == 1 and weights._kept is not None  # read before the config is composed
    cfg = compose_cfg(task, [*argv, *(["device=cpu"] if task == "predict" else [])], output_dir=tmp_path / "out")
    if task == "eval":
        from seg_template.eval import evaluate

        metrics, _ = evaluate(cfg, typed)
        assert "val/mIoU" in metrics
    elif task == "predict":
        from seg_template.predict import run_predict

        assert len(run_predict(cfg, typed)) == 1
    else:
        from seg_template.export import run_export

        assert run_export(cfg, typed).is_file()
    assert torch_loads[str(ckpt.resolve())] == 1, dict(torch_loads)
    assert weights._kept is None  # the weights loader took the object: nothing is held after the command


def test_a_file_replaced_during_a_command_is_refused_not_mixed(tmp_path, torch_loads):
    """The recipe read from one file and the weights from its replacement would be a model nobody trained."""
    from seg_template.callbacks.checkpoint_io import atomic_save

    path = tmp_path / "w.pt"
    atomic_save({"a": torch.zeros(2)}, path)
    assert weights.read_weights_file(path, keep=True)["a"].sum() == 0
    assert weights.read_weights_file(path, keep=True)["a"].sum() == 0  # kept: no second read
    assert torch_loads[str(path.resolve())] == 1
    atomic_save({"a": torch.ones(2)}, path)  # replaced (by a run writing it, by mv) before the weights load
    with pytest.raises(CheckpointError, match=r"w\.pt' was replaced while this command was using it.*nothing was "
                                              r"loaded"):
        weights.read_weights_file(path, "ckpt_path")
    assert weights._kept is None
    # another command (a look first) reads the new file
    assert weights.read_weights_file(path, keep=True)["a"].sum() == 2
    atomic_save({"a": torch.full((2,), 3.0)}, path)
    assert weights.read_weights_file(path, keep=True)["a"].sum() == 6  # a later look reads the new file
    assert weights.read_weights_file(path)["a"].sum() == 6 and weights._kept is None


def test_eval_and_resume_report_a_checkpoint_that_does_not_fit_alike(compose_cfg, tmp_path):
    """One builder of the mismatch report (``models.weights.exact_fit``) for eval and resume."""
    from hydra.utils import instantiate

    from seg_template.build import build_module
    from seg_template.callbacks.checkpoint_io import check_resume_checkpoint
    from seg_template.models.small import small_segnet

    cfg = compose_cfg(overrides=TRAINED, output_dir=tmp_path / "t")
    module = build_module(cfg, instantiate(cfg.data))
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 1, "loops": {},
                "optimizer_states": [], "hyper_parameters": {"num_classes": 6}, "recipe": recipe_from(cfg)}, ckpt)
    other_cfg = compose_cfg(overrides=[*TRAINED, "model.width=4"], output_dir=tmp_path / "o")
    other = build_module(other_cfg, instantiate(cfg.data))
    other.recipe = recipe_from(other_cfg)  # as train.py sets it before the check
    with pytest.raises(CheckpointError) as resumed:
        check_resume_checkpoint(ckpt, other)
    with pytest.raises(CheckpointError) as evaluated:
        weights.load_net_weights(small_segnet(6, width=4), ckpt, configured_model=OmegaConf.to_container(other_cfg.model))
    for err in (resumed.value, evaluated.value):
        text = str(err)
        assert text.startswith(f"ckpt_path: '{ckpt}' does not fit the configured model (")
        assert "tensors differ in shape" in text and "trained for num_classes=6" in text
        # the option that changed the tensors, named even when the other run left it at its default
        assert "the model options differ from the checkpoint's recipe (trained -> now): model.width: " in text
        assert "Pass the model= / data= options it was trained with" in text


def test_a_restore_of_another_file_lets_the_kept_one_go(tmp_path, torch_loads):
    """A requeued SLURM job checks ``ckpt_path`` but Lightning restores its ``hpc_ckpt``: the checked file's
    object is not held for the whole training."""
    from seg_template.callbacks.checkpoint_io import AtomicCheckpointIO

    checked, restored = tmp_path / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"global_step": 1}, checked)
    torch.save({"global_step": 2}, restored)
    weights.read_weights_file(checked, "ckpt_path", keep=True)
    assert weights._kept is not None
    assert AtomicCheckpointIO().load_checkpoint(restored)["global_step"] == 2
    assert weights._kept is None
