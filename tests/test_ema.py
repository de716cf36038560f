"""``callbacks=[default,ema]``: an exponential moving average of the weights (seg_template/callbacks/ema.py).

What is validated (and drawn in the prediction grids), written to ``best.ckpt`` / ``last.ckpt`` (``state_dict``),
tested after fit, evaluated by eval.py and loaded by predict.py / export.py is the average, recomputed here
from the raw weights after each optimiser step; the raw weights ride along (``current_model_state``).
Resuming: tests/test_ema_resume.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from seg_template.errors import CheckpointError, ConfigError, TrainingDiverged
from tests.ema_helpers import Recorder, Weights, assert_same, ema_of, fit, floats, net_part, read
from tests.helpers import predict, skip_unless_onnx

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Recorder, dict[str, Any]]:
    """2 epochs of 2 steps with ``callbacks=[default,ema]`` (decay 0.6), then the test of best.ckpt; the
    recorder's ``drawn``: the weights each validation's prediction grid was drawn with."""
    from seg_template.callbacks.visuals import ValidationImages

    out, drawn, real = tmp_path_factory.mktemp("ema"), {}, ValidationImages.draw

    def draw(self: ValidationImages, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        drawn[trainer.current_epoch] = floats(pl_module)
        return real(self, trainer, pl_module)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ValidationImages, "draw", draw)
        recorder, objects = fit(out, "trainer.max_epochs=2", "test=true")
    recorder.drawn = drawn
    return out, recorder, objects


# ------------------------------------------------------------------------------------------------ the config
def test_ema_composes_with_the_default_callbacks(compose_cfg) -> None:
    from seg_template.build import instantiate_callbacks
    from seg_template.callbacks.ema import EMAWeights
    from seg_template.config_specials import allowed_targets
    from seg_template.options import check_options

    cfg = compose_cfg(overrides=["callbacks=[default,ema]"])
    default = compose_cfg(overrides=[])
    assert list(cfg.callbacks) == [*default.callbacks, "ema"]
    check_options(cfg)
    assert "seg_template.callbacks.ema.EMAWeights" in allowed_targets()  # the recipe door's allow-list
    (ema,) = [c for c in instantiate_callbacks(cfg.callbacks) if isinstance(c, EMAWeights)]
    assert ema.decay == 0.999 and ema.update_every_n_steps == 1 and ema._use_buffers
    for bad, key in (("update_every_n_steps=0", "update_every_n_steps"), ("decay=1.0", "decay"),
                     ("decay=-0.1", "decay"), ("update_starting_at_step=-1", "update_starting_at_step")):
        with pytest.raises(ConfigError, match=rf"callbacks\.ema\.{key}"):
            check_options(compose_cfg(overrides=["callbacks=[default,ema]", f"callbacks.ema.{bad}"]))


def test_a_damaged_ema_state_is_refused_naming_the_key() -> None:
    from seg_template.callbacks.checkpoint_io import check_callback_states

    check_callback_states({"callbacks": {"EMAWeights": {"latest_update_step": 4}}}, "x.ckpt")
    for bad in (-1, 2.5, float("nan"), True):
        with pytest.raises(CheckpointError, match=r"callbacks\.EMAWeights\.latest_update_step"):
            check_callback_states({"callbacks": {"EMAWeights": {"latest_update_step": bad}}}, "x.ckpt")


# ------------------------------------------------------------------------------------------------ what is saved
def test_validation_and_checkpoints_hold_the_average(ema_run) -> None:
    out, recorder, objects = ema_run
    assert len(recorder.steps) == 4 and sorted(recorder.validated) == [0, 1]
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = read(out / "checkpoints" / name)
        step = ckpt["global_step"]
        average, raw = ema_of(recorder.steps[:step]), recorder.steps[step - 1]
        assert_same(ckpt["state_dict"], average)  # the average, recomputed from the raw weights
        assert_same(ckpt["current_model_state"], raw)  # the raw weights beside it
        assert_same(ckpt["state_dict"], raw, differ=True)
        assert_same(recorder.validated[ckpt["epoch"]], average)  # what that epoch's validation scored
        assert_same(recorder.drawn[ckpt["epoch"]], average)  # and its prediction grid showed
        assert int(ckpt["averaging_state"]["n_averaged"]) == step
        counters = [k for k in ckpt["state_dict"] if k.endswith("num_batches_tracked")]
        assert counters and all(int(ckpt["state_dict"][k]) == step for k in counters)  # counters are not averaged
        assert ckpt["callbacks"]["EMAWeights"] == {"latest_update_step": step}
        assert ckpt["recipe"]["model"]["width"] == 8  # the recipe is written as without averaging
    # the test after fit scored best.ckpt's average (Lightning's own callback put the raw weights back)
    assert "test/mIoU" in objects["metrics"]
    assert_same(floats(objects["module"]), read(out / "checkpoints" / "best.ckpt")["state_dict"])
    # a checkpoint written while validation has the average in the module is written as at any other time
    during = read(out / "during_validation.ckpt")
    assert_same(during["state_dict"], ema_of(recorder.steps))
    assert_same(during["current_model_state"], recorder.steps[-1])


def test_nonfinite_averaged_weights_are_never_written(ema_run, tmp_path) -> None:
    from seg_template.callbacks.ema import averaged_module

    _, _, objects = ema_run
    trainer = objects["trainer"]
    weight = next(averaged_module(trainer).parameters())
    kept = weight.detach().clone()
    weight.data.fill_(float("nan"))
    try:
        with pytest.raises(TrainingDiverged, match=r"\(average\)"):
            trainer.checkpoint_callback._save_checkpoint(trainer, str(tmp_path / "nan.ckpt"))
    finally:
        weight.data.copy_(kept)
    assert not (tmp_path / "nan.ckpt").exists()


def test_the_nan_guard_keeps_the_average_finite(compose_cfg, tmp_path) -> None:
    """NaN losses from step 4 on: their updates are skipped, so the average of those steps' weights stays that of
    sound weights, and the guard stops the fit with its message, the checkpoints holding finite tensors only."""
    from hydra.utils import instantiate

    from seg_template.callbacks.ema import EMAWeights
    from tests.test_checkpointing import Tiny
    from tests.test_checkpointing import fit as fit_tiny

    cfg = compose_cfg(overrides=["callbacks=[default,ema]", "callbacks.ema.decay=0.5"], output_dir=tmp_path).callbacks
    ema = instantiate(cfg.ema)
    with pytest.raises(TrainingDiverged, match="3 training steps in a row"):
        fit_tiny(Tiny(nan_from=4), [instantiate(cfg.model_checkpoint), instantiate(cfg.nan_guard), ema], tmp_path)
    assert isinstance(ema, EMAWeights) and int(ema._average_model.n_averaged) > 4  # updated at bad steps too
    assert all(torch.isfinite(t).all() for t in ema._average_model.module.state_dict().values())
    for path in (tmp_path / "checkpoints").iterdir():
        ckpt = read(path)
        assert ckpt["epoch"] == 0 and all(torch.isfinite(t).all() for key in ("state_dict", "current_model_state")
                                          for t in ckpt[key].values()), path


# ------------------------------------------------------------------------------------------------ what reads it
def test_eval_scores_the_average_as_validation_did(ema_run, compose_cfg, tmp_path) -> None:
    from seg_template.eval import evaluate

    out, recorder, _ = ema_run

    def scores(ckpt: Path) -> dict[str, float]:
        overrides = [f"ckpt_path={ckpt}", "callbacks.rich_progress_bar=null"]
        metrics, _ = evaluate(compose_cfg("eval", overrides, output_dir=tmp_path / ckpt.stem), overrides=overrides)
        return {k: float(metrics[k]) for k in ("val/loss", "val/mIoU", "val/aAcc")}

    for name in ("best.ckpt", "last.ckpt"):
        logged = recorder.metrics[read(out / "checkpoints" / name)["epoch"]]
        assert scores(out / "checkpoints" / name) == pytest.approx(logged, rel=1e-5, abs=1e-6)
    # the raw weights score otherwise: the comparison above tells the two apart
    raw = read(out / "checkpoints" / "last.ckpt")
    raw["state_dict"] = raw["current_model_state"]
    torch.save(raw, tmp_path / "raw.ckpt")
    assert scores(tmp_path / "raw.ckpt")["val/loss"] != pytest.approx(recorder.metrics[1]["val/loss"], rel=1e-4)


def test_predict_and_export_load_the_average(ema_run, compose_cfg, tmp_path, monkeypatch) -> None:
    from seg_template.models import weights

    out, _, _ = ema_run
    best = out / "checkpoints" / "best.ckpt"
    loaded: list[Weights] = []
    real = weights.load_net_weights

    def spy(net: torch.nn.Module, path: Any, option: str = "ckpt_path", **kwargs: Any) -> Any:
        report = real(net, path, option, **kwargs)
        loaded.append(floats(getattr(net, "_orig_mod", net)))
        return report

    monkeypatch.setattr(weights, "load_net_weights", spy)
    (tmp_path / "in").mkdir()
    torch.manual_seed(0)
    from PIL import Image

    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(tmp_path / "in" / "a.png")
    assert [p.name for p in predict(compose_cfg, tmp_path / "p", f"ckpt_path={best}", f"input={tmp_path / 'in'}")
            ] == ["a.png"]
    average = net_part(read(best)["state_dict"])
    assert_same(loaded[-1], average)
    skip_unless_onnx()
    from seg_template.export import run_export

    overrides = [f"ckpt_path={best}", "export.check_shapes=[[1,40,56]]", "export.threads=1", "export.dynamo=false"]
    assert run_export(compose_cfg("export", overrides, output_dir=tmp_path / "x"), overrides=overrides).is_file()
    assert_same(loaded[-1], average)  # and onnxruntime reproduced that network (the export's parity check)



def test_an_average_the_fit_never_updates_is_refused(compose_cfg) -> None:
    """update_starting_at_step at or past the fit's last optimiser step: the average would stay the starting
    weights, scored and saved as if trained (a stranger's run did so silently)."""
    from seg_template.errors import ConfigError
    from seg_template.train import train
    from tests.bad_input_files import raised_user_error

    cfg = compose_cfg("train", ["callbacks=[default,ema]", "callbacks.ema.update_starting_at_step=100",
                                "data.train_set.length=16", "data.batch_size=4", "trainer.max_epochs=1", "test=false",
                                "data.val_set.length=4"])
    err = raised_user_error(lambda: train(cfg))
    assert isinstance(err, ConfigError) and "update_starting_at_step=100 but this fit makes 4 optimiser steps" in str(err)


@pytest.mark.parametrize("device", ["gpu0", "cuda:99"])
def test_an_ema_device_this_machine_lacks_is_named(device: str) -> None:
    """callbacks.ema.device=cuda on a machine without one was torch's 'Found no NVIDIA driver' traceback when the
    average was first moved; now a ConfigError when the callback is built."""
    from seg_template.callbacks.ema import EMAWeights
    from seg_template.errors import ConfigError

    with pytest.raises(ConfigError, match=r"callbacks\.ema\.device="):
        EMAWeights(device=device)
