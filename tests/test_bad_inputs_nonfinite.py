"""Catalogue of bad inputs, family "non-finite models" (issue 17): a model whose weights or logits hold NaN or
inf is never reported as fine.

NaN weights give NaN logits, whose argmax is class 0: eval used to print an all-zero table and predict to
write class 0 everywhere, both exiting 0, and export to report "max |logit difference| 0.00e+00, argmax
agreement 100 %" for an ONNX file whose outputs were all NaN. Now every loader refuses non-finite weights
naming the file and the tensors (checkpoints for eval / predict / export / resume, ``model.pretrained``, ONNX
files), inference refuses non-finite logits naming the model file, the parity check is NaN-aware, and class
weights and sweep rankings treat NaN as what it is.

``pytest tests/test_bad_inputs_nonfinite.py -rxX`` (add ``-m slow`` for the real ``predict.py``).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from seg_template.cli import user_message
from seg_template.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, UserError
from seg_template.eval import evaluate
from seg_template.inference import InferenceModel
from seg_template.predict import run_predict
from seg_template.train import train
from tests.bad_input_files import PREDICT, SMALL, TRAIN, Workspace, assert_short_named, raised_user_error
from tests.helpers import importable, run_script

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

NAN, INF = float("nan"), float("inf")
#: the synthetic data's 6 classes, ``model.width=4``: the tensors the poisoned files touch
HEAD, BN_VAR, BN_MEAN = "net.classifier.weight", "net.stem.0.1.running_var", "net.stem.0.1.running_mean"
#: the exporter that takes seconds, and a parity check on one small shape
ONNX_FAST = ["export.dynamo=false", "export.check_shapes=[[1,32,32]]", "export.threads=1"]


def _set(key: str, value: float, everywhere: bool = False) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        if everywhere:
            state[key].fill_(value)
        else:
            state[key].view(-1)[0] = value
    return change


class Files(Workspace):
    """The bad-input workspace plus poisoned checkpoints: ``{nan}`` (one NaN in the head), ``{bninf}`` (inf in a
    batch-norm running variance), ``{huge}`` (finite weights so large the logits overflow), ``{nantrain}`` /
    ``{nanmoment}`` (training checkpoints with a NaN weight / a NaN AdamW moment), ``{nanonnx}``."""

    def _poisoned(self, path: Path, *changes: Callable[[dict], None], training: bool = False,
                  optimizer: list | None = None) -> None:
        ckpt = self.checkpoint()
        for change in changes:
            change(ckpt["state_dict"])
        if training:
            ckpt.update({"epoch": 0, "global_step": 2, "loops": {}, "optimizer_states": optimizer or []})
        torch.save(ckpt, path)

    def _make_nan(self, path: Path, _: str) -> None:
        self._poisoned(path, _set(HEAD, NAN))

    def _make_bninf(self, path: Path, _: str) -> None:
        self._poisoned(path, _set(BN_VAR, INF))

    def _make_huge(self, path: Path, _: str) -> None:  # finite, but every logit overflows float32
        # features after the last ReLU >= 10 (its batch norm's shift), times 3e38
        self._poisoned(path, _set(HEAD, 3e38, everywhere=True), _set("net.fuse.1.bias", 10.0, everywhere=True))

    def _make_nantrain(self, path: Path, _: str) -> None:
        self._poisoned(path, _set(HEAD, NAN), training=True)

    def _make_nanmoment(self, path: Path, _: str) -> None:  # the default optimiser's (AdamW) state
        param = nn.Parameter(torch.ones(2))
        optimizer = torch.optim.AdamW([param])
        param.sum().backward()
        optimizer.step()
        state = optimizer.state_dict()
        state["state"][0]["exp_avg"][1] = NAN
        self._poisoned(path, training=True, optimizer=[state])

    def _make_nanweights(self, path: Path, _: str) -> None:  # a plain state dict, for model.pretrained
        state = self.module_state()
        _set(HEAD, NAN)(state)
        torch.save(state, path)

    def _make_nanonnx(self, path: Path, _: str) -> Path:
        """An ONNX export of ``{good}`` (recipe inside), one of its initializers then set to NaN."""
        import onnx
        from onnx import numpy_helper

        from seg_template.export import run_export

        path = path.with_suffix(".onnx")
        cfg = self.compose("export", [*PREDICT, f"ckpt_path={self['good']}", *ONNX_FAST,
                                      f"output_file={path}"], output_dir=self.root / "export")
        run_export(cfg, overrides=[])
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the biggest one
        array = numpy_helper.to_array(weight).copy()
        array.reshape(-1)[0] = np.nan
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))
        onnx.save(model, str(path))
        return path


    # ---- files a fit resumes from: a real last.ckpt of one epoch (trained once per session), then edited
    def trained(self) -> dict:
        last = self.trained_run / "checkpoints" / "last.ckpt"
        if not last.exists():
            train(self.compose("train", [*TRAIN, "trainer.max_epochs=1"], output_dir=self.trained_run))
        return torch.load(last, weights_only=True)

    def _make_trained(self, path: Path, _: str) -> None:  # sound
        torch.save(self.trained(), path)

    def _make_negvar(self, path: Path, _: str) -> None:  # what the stranger resumed: finite, variance -1
        ckpt = self.trained()
        ckpt["state_dict"][BN_VAR].fill_(-1.0)
        torch.save(ckpt, path)

    def _make_hugemean(self, path: Path, _: str) -> None:
        """Finite, and it trains (batch statistics), but in eval mode its first batch norm overflows: the
        running mean is -3e38, the variance tiny, so every validation logit is NaN / inf."""
        ckpt = self.trained()
        ckpt["state_dict"][BN_MEAN].fill_(-3e38)
        ckpt["state_dict"][BN_VAR].fill_(1e-30)
        torch.save(ckpt, path)

    def _make_hugemeanweights(self, path: Path, _: str) -> None:  # the same, as model.pretrained
        state = torch.load(self["hugemean"], weights_only=True)["state_dict"]
        torch.save({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}, path)

    def _make_scaled(self, path: Path, _: str) -> None:  # the stranger's "weights x 1e36": finite
        ckpt = self.trained()
        for name, tensor in ckpt["state_dict"].items():
            if tensor.is_floating_point() and "running" not in name:
                tensor.mul_(1e36)
        torch.save(ckpt, path)

    def _make_classes3onnx(self, path: Path, _: str) -> Path:
        """An honest export of ``{good}`` (6 classes), its logits' channel dimension made symbolic (as the
        dynamo exporter leaves it) and its recipe edited to 3 classes: the stranger's file."""
        import onnx

        path = self._onnx(path)
        model = onnx.load(str(path))
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
        entry = next(p for p in model.metadata_props if p.key == "seg_template.recipe")
        recipe = json.loads(entry.value)
        recipe["data"]["num_classes"] = 3  # and, consistently, 3 names and colours
        recipe["class_names"] = recipe["data"]["class_names"] = ["a", "b", "c"]
        recipe["palette"] = recipe["palette"][:3]
        recipe["data"].pop("class_weights", None)
        entry.value = json.dumps(recipe)
        onnx.save(model, str(path))
        return path

    def _make_goodonnx(self, path: Path, _: str) -> Path:
        return self._onnx(path)

    def _onnx(self, path: Path) -> Path:
        from seg_template.export import run_export

        path = path.with_suffix(".onnx")
        cfg = self.compose("export", [*PREDICT, f"ckpt_path={self['good']}", *ONNX_FAST,
                                      f"output_file={path}"], output_dir=self.root / f"export_{path.stem}")
        run_export(cfg, overrides=[])
        return path


@pytest.fixture
def files(compose_cfg, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Files:
    workspace = Files(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    workspace.trained_run = tmp_path_factory.getbasetemp() / "nonfinite_trained_run"
    return workspace


def _run(compose_cfg, task: str, overrides: list[str], out: Path) -> UserError:
    cfg = compose_cfg(task, overrides, output_dir=out)
    if task == "predict":
        cfg.output_dir = str(out)
    call = {"train": lambda: train(cfg), "eval": lambda: evaluate(cfg, overrides),
            "predict": lambda: run_predict(cfg, overrides)}[task]
    return raised_user_error(call)


def _no_masks(out: Path) -> None:
    assert not list((out / "masks").rglob("*.png")), "masks were written"


needs_onnx = pytest.mark.skipif(not all(importable(m) for m in ("onnx", "onnxruntime", "onnxscript")),
                                reason="needs the onnx extra")

#: (id, task, overrides with {file}s, error class, culprit regex, whether predict must have written nothing)
CASES = [
    ("nonfinite/eval_nan_weight", "eval", [*SMALL, "ckpt_path={nan}"], CheckpointError,
     rf"ckpt_path: '.*/nan' holds NaN/inf in 1 of its \d+ weight tensors \({HEAD}\).*diverged", False),
    ("nonfinite/predict_nan_weight", "predict", [*PREDICT, "device=cpu", "ckpt_path={nan}", "input={images}"],
     CheckpointError, rf"ckpt_path: '.*/nan' holds NaN/inf.*{HEAD}", True),
    ("nonfinite/eval_inf_batchnorm_var", "eval", [*SMALL, "ckpt_path={bninf}"], CheckpointError,
     rf"bninf' holds NaN/inf in 1 .*{BN_VAR}", False),
    ("nonfinite/predict_inf_batchnorm_var", "predict",
     [*PREDICT, "device=cpu", "ckpt_path={bninf}", "input={images}"], CheckpointError, rf"bninf'.*{BN_VAR}", True),
    ("nonfinite/pretrained_nan", "train", [*TRAIN, "model.pretrained={nanweights}"], CheckpointError,
     r"model\.pretrained: '.*nanweights' holds NaN/inf in 1 .*classifier\.weight.*training from it", False),
    ("nonfinite/resume_nan_weight", "train", [*TRAIN, "ckpt_path={nantrain}"], CheckpointError,
     rf"ckpt_path: '.*nantrain' holds NaN/inf in 1 .*state_dict\.{HEAD}", False),
    ("nonfinite/resume_nan_optimizer_state", "train", [*TRAIN, "ckpt_path={nanmoment}"], CheckpointError,
     r"nanmoment' holds NaN/inf .*optimizer_states\[0\]\.state\.0\.exp_avg\)", False),
    ("nonfinite/eval_logits_overflow", "eval", [*SMALL, "ckpt_path={huge}"], CheckpointError,
     r"ckpt_path: '.*huge' gives (NaN|inf) in .* logits .*weights are finite", False),
    ("nonfinite/eval_bounded_logits_overflow", "eval",
     [*SMALL, "ckpt_path={huge}", "inference=slide", "inference.crop_size=[32,32]", "inference.stride=[16,16]",
      "inference.bounded=true"], CheckpointError, r"huge' gives (NaN|inf) in", False),
    ("nonfinite/predict_logits_overflow", "predict",
     [*PREDICT, "device=cpu", "ckpt_path={huge}", "input={images}"], CheckpointError,
     r"huge' gives (NaN|inf) in .* on image\(s\) img0\.png", True),
    ("nonfinite/predict_ms_flip_logits_overflow", "predict",
     [*PREDICT, "device=cpu", "ckpt_path={huge}", "input={images}", "inference=ms_flip"], CheckpointError,
     r"huge' gives (NaN|inf) in", True),
    pytest.param("nonfinite/predict_onnx_nan_initializer", "predict",
                 [*PREDICT, "device=cpu", "model_file={nanonnx}", "input={images}"], CheckpointError,
                 r"model_file: '.*nanonnx\.onnx' holds NaN/inf in 1 of its \d+ weight tensors", True,
                 marks=needs_onnx, id="nonfinite/predict_onnx_nan_initializer"),
    pytest.param("nonfinite/export_nan_weight", "export", [*PREDICT, "ckpt_path={nan}", *ONNX_FAST],
                 CheckpointError, rf"ckpt_path: '.*/nan' holds NaN/inf.*{HEAD}", False,
                 marks=needs_onnx, id="nonfinite/export_nan_weight"),
    pytest.param("nonfinite/export_logits_overflow", "export", [*PREDICT, "ckpt_path={huge}", *ONNX_FAST],
                 CheckpointError, r"huge' gives non-finite logits.*PyTorch output holds", False,
                 marks=needs_onnx, id="nonfinite/export_logits_overflow"),
    # a batch-norm running variance below 0: finite, yet NaN through sqrt(var + eps); refused by every loader
    ("nonfinite/resume_negative_bn_var", "train", [*TRAIN, "trainer.max_epochs=2", "ckpt_path={negvar}"],
     CheckpointError, rf"ckpt_path: '.*negvar' holds a batch-norm running_var below 0 in 1 tensor\(s\) "
                      rf"\(state_dict\.{BN_VAR}\)", False),
    ("nonfinite/eval_negative_bn_var", "eval", [*SMALL, "ckpt_path={negvar}"], CheckpointError,
     rf"ckpt_path: '.*negvar' holds a batch-norm running_var below 0 .*{BN_VAR}", False),
    ("nonfinite/predict_negative_bn_var", "predict", [*PREDICT, "device=cpu", "ckpt_path={negvar}", "input={images}"],
     CheckpointError, rf"negvar' holds a batch-norm running_var below 0 .*{BN_VAR}", True),
    # an ONNX file whose logits have another channel count than data.num_classes (the dimension symbolic)
    pytest.param("nonfinite/predict_onnx_recipe_classes_differ", "predict",
                 [*PREDICT, "device=cpu", "model_file={classes3onnx}", "input={images}"], ConfigError,
                 r"model_file=.*classes3onnx\.onnx outputs 6 classes .*data\.num_classes=3 .*data\.num_classes=6", True,
                 marks=needs_onnx, id="nonfinite/predict_onnx_recipe_classes_differ"),
    pytest.param("nonfinite/predict_onnx_typed_classes_differ", "predict",
                 [*PREDICT, "device=cpu", "model_file={goodonnx}", "input={images}", "data.num_classes=3",
                  "data.class_names=[a,b,c]"], ConfigError,
                 r"model_file=.*goodonnx\.onnx outputs 6 classes .*data\.num_classes=3", True,
                 marks=needs_onnx, id="nonfinite/predict_onnx_typed_classes_differ"),
    # images the transform turns into NaN / inf: the data's fault, not the model's (or refused as an option)
    ("nonfinite/eval_std_0", "eval", [*SMALL, "ckpt_path={good}", "+data.val_transform.std=[0,0,0]"], UserError,
     r"data\.val_transform.*std", False),
    ("nonfinite/predict_std_0", "predict",
     [*PREDICT, "device=cpu", "ckpt_path={good}", "input={images}", "+data.val_transform.std=[0,0,0]"], UserError,
     r"(img0\.png.*)?data\.val_transform.*std", True),
    ("nonfinite/class_weights_nan_list", "train", [*TRAIN, "loss=wce", "data.class_weights=[1,nan,1,1,1,1]"],
     ConfigError, r"data\.class_weights\[1\]=nan|\[nan\].*data\.class_weights", False),  # typed options, or the loss
    ("nonfinite/class_weights_inf_list", "train", [*TRAIN, "loss=wce", "data.class_weights=[1,1,inf,1,1,1]"],
     ConfigError, r"data\.class_weights\[2\]=inf|\[inf\].*data\.class_weights", False),
]


def _case_id(case) -> str:
    return case.id if hasattr(case, "id") else case[0]


def _task_error(compose_cfg, task: str, overrides: list[str], out: Path) -> BaseException:
    """The user error ``task`` (eval, predict, train, export) raises on ``overrides``; an export writes no
    ``model.onnx``."""
    if task != "export":
        return _run(compose_cfg, task, overrides, out)
    from seg_template.export import run_export

    overrides = [*overrides, f"output_file={out / 'model.onnx'}"]
    cfg = compose_cfg("export", overrides, output_dir=out)
    err = raised_user_error(lambda: run_export(cfg, overrides))
    assert not (out / "model.onnx").exists()
    return err


@pytest.mark.parametrize(("id_", "task", "overrides", "error", "culprit", "nothing_written"),
                         CASES, ids=[_case_id(c) for c in CASES])
def test_non_finite_model_gets_one_short_named_message(id_, task, overrides, error, culprit, nothing_written,
                                                       compose_cfg, files: Files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    err = _task_error(compose_cfg, task, [o.format_map(files) for o in overrides], out)
    assert isinstance(err, error), f"{type(err).__name__}, expected {error.__name__}: {err}"
    assert_short_named(user_message(err), culprit)
    if nothing_written:
        _no_masks(out)


#: a fit whose validation (or test) gets NaN / inf logits from finite weights, or that diverges right after
#: resuming: (id, overrides with {file}s, error class, culprit regex). Nothing is scored, no checkpoint written.
NO_SANITY = "++trainer.num_sanity_val_steps=0"
TEST_ONLY = [*SMALL, "callbacks.rich_model_summary=null", "train=false", "test=true"]
FIT_CASES = [
    ("nonfinite/resume_sanity_validation_nan", [*TRAIN, "trainer.max_epochs=2", "ckpt_path={hugemean}"],
     TrainingDiverged, r"the sanity-check validation before training \(at step 2\) gave NaN/inf logits in 1 of its 1 "
                       r"batch\(es\).*not scored.*This fit resumed from ckpt_path=.*hugemean, so that file is the "
                       r"likely cause"),
    # the stranger's run: the validation of the first resumed epoch used to report val/mIoU 0.16 and become best
    ("nonfinite/resume_epoch_validation_nan", [*TRAIN, "trainer.max_epochs=2", NO_SANITY, "ckpt_path={hugemean}"],
     TrainingDiverged, r"the validation of epoch 1 \(step 4\) gave NaN/inf logits .*no checkpoint was written.*"
                       r"resumed from ckpt_path=.*hugemean"),
    ("nonfinite/pretrained_validation_nan", [*TRAIN, "trainer.max_epochs=1", "model.pretrained={hugemeanweights}"],
     TrainingDiverged, r"sanity-check validation before training \(at step 0\).*weights are finite.*No training "
                       r"step has run yet.*model\.pretrained"),
    ("nonfinite/test_nan_logits", [*TEST_ONLY, "ckpt_path={hugemean}"], CheckpointError,
     r"ckpt_path: '.*hugemean' gives NaN/inf logits in 1 of its 1 batch\(es\) of the test split.*not scored"),
    # weights x 1e36 (finite): the guard stops the resumed fit; the advice names the file, then the lr
    ("nonfinite/resume_scaled_weights_diverge", [*TRAIN, "trainer.max_epochs=3", NO_SANITY,
                                                 "callbacks.nan_guard.patience=2", "ckpt_path={scaled}"],
     TrainingDiverged, r"2 training steps in a row .*Try: this fit resumed from ckpt_path=.*scaled at step 2 and "
                       r"diverged 1 step\(s\) later, so that file is the likely cause.*; else lower optimizer\.lr"),
    # ... unless the resume changed the optimiser's options: then those are named
    ("nonfinite/resume_with_huge_lr_diverges", [*TRAIN, "trainer.max_epochs=3", NO_SANITY, "optimizer.lr=1e9",
                                                "callbacks.nan_guard.patience=1", "ckpt_path={trained}"],
     TrainingDiverged, r"[Tt]his fit resumed from ckpt_path=.*trained at step 2 with changed options "
                       r"\(optimizer\.lr: 0\.003 -> 1e\+09\).* so those changes are the likely cause"),
]


@pytest.mark.parametrize(("id_", "overrides", "error", "culprit"), FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_non_finite_validation_is_never_scored(id_, overrides, error, culprit, compose_cfg, files: Files,
                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    err = _run(compose_cfg, "train", [o.format_map(files) for o in overrides], out)
    assert isinstance(err, error), f"{type(err).__name__}, expected {error.__name__}: {err}"
    assert_short_named(user_message(err), culprit)
    written = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert written == [], f"a checkpoint of the non-finite state was written: {written}"


def test_divergence_long_after_a_resume_blames_the_learning_rate() -> None:
    from types import SimpleNamespace

    from seg_template.callbacks.nan_guard import RESUME_WINDOW, divergence_advice

    optimizer = SimpleNamespace(defaults={"lr": 0.01})
    for resumed, step, names_file in ((None, 3, False), (("/r/last.ckpt", 100, ()), 101, True),
                                      (("/r/last.ckpt", 100, ()), 100 + RESUME_WINDOW + 1, False)):
        trainer = SimpleNamespace(optimizers=[optimizer], precision="32-true", global_step=step,
                                  lightning_module=SimpleNamespace(resumed_from=resumed))
        advice = divergence_advice(trainer)
        assert ("ckpt_path=/r/last.ckpt" in advice) == names_file, advice
        assert advice.endswith("lower optimizer.lr (now 0.01)"), advice


@pytest.mark.parametrize("suffix", [".txt", ".json", ".npy"])
def test_class_weight_files_with_nan_are_refused_naming_the_file(suffix: str, compose_cfg, tmp_path: Path) -> None:
    path = tmp_path / f"weights{suffix}"
    values = [1.0, NAN, 1.0, 1.0, INF, 1.0]
    if suffix == ".npy":
        np.save(path, np.array(values))
    elif suffix == ".json":
        path.write_text(json.dumps(values))  # Python writes NaN / Infinity, which json.loads reads back
    else:
        path.write_text("1 nan 1\n1 inf 1\n")
    err = _run(compose_cfg, "train", [*TRAIN, "loss=wce", f"data.class_weights={path}"], tmp_path / "out")
    assert isinstance(err, ConfigError)
    assert_short_named(user_message(err), rf"weights{suffix}.*finite.*\[nan, inf\]")


# ------------------------------------------------------------------------ the one inference path
class ConstantNet(nn.Module):
    """Logits ``[N, classes, H/4, W/4]`` all equal to ``value``, from finite (zero) weights."""

    def __init__(self, value: float, classes: int = 3) -> None:
        super().__init__()
        self.value = value
        self.conv = nn.Conv2d(3, classes, 4, stride=4)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.conv(images) + self.value


SETTINGS = {"whole": {}, "flip": {"flip": True}, "scales": {"scales": [0.5, 1.0]},
            "slide": {"mode": "slide", "crop_size": [16, 16], "stride": [8, 8]},
            "bounded": {"mode": "slide", "crop_size": [16, 16], "stride": [8, 8], "bounded": True}}


@pytest.mark.parametrize("mode", sorted(SETTINGS))
def test_nan_logits_from_finite_weights_never_become_class_ids(mode: str) -> None:
    net = ConstantNet(NAN).eval()
    net.weights_source = "ckpt_path: '/runs/x/best.ckpt'"  # what load_net_weights sets
    model = InferenceModel(net, **SETTINGS[mode])
    images = torch.randn(2, 3, 24, 40)
    err = raised_user_error(lambda: model.predict_labels(images, names=["a.png", "b.png"]))
    assert isinstance(err, CheckpointError)
    assert_short_named(user_message(err), r"ckpt_path: '/runs/x/best\.ckpt' gives NaN in all of its float32 "
                                          r"logits.* on image\(s\) a\.png, b\.png.*weights are finite")
    if mode != "bounded":
        err = raised_user_error(lambda: model(images))  # what eval's module calls: no names
        assert_short_named(user_message(err), r"gives NaN in all .* on a batch of 2 24x40 image\(s\)")


def test_finite_logits_pass_unchanged() -> None:
    model = InferenceModel(ConstantNet(2.5).eval())
    images = torch.randn(1, 3, 16, 16)
    assert torch.equal(model(images), torch.full((1, 3, 16, 16), 2.5))


def test_non_finite_images_are_a_data_error() -> None:
    model = InferenceModel(ConstantNet(0.0).eval())
    model.net.conv.weight.data.fill_(1.0)  # the NaN pixel reaches the logits
    images = torch.zeros(1, 3, 16, 16)
    images[0, 0, 3, 3] = NAN
    err = raised_user_error(lambda: model.predict_labels(images, names=["x.tif"]))
    assert isinstance(err, DataError)
    assert_short_named(user_message(err), r"image\(s\) x\.tif hold NaN/inf .*data\.val_transform")


def test_overflow_under_mixed_precision_suggests_32_bit() -> None:
    model = InferenceModel(ConstantNet(INF).eval())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what trainer.precision=bf16-mixed runs eval under
        err = raised_user_error(lambda: model(torch.ones(1, 3, 8, 8)))
    assert_short_named(user_message(err), r"gives (NaN|inf) in .*bfloat16 logits.*16-bit .*trainer\.precision=32-true")


def test_a_net_with_nan_weights_that_skipped_the_loader_is_named() -> None:
    net = ConstantNet(0.0).eval()
    net.conv.weight.data[0, 0, 0, 0] = NAN
    err = raised_user_error(lambda: InferenceModel(net)(torch.ones(1, 3, 8, 8)))
    assert_short_named(user_message(err), r"the network \(ConstantNet\) gives NaN.*weights hold NaN/inf in 1 .*"
                                          r"conv\.weight")


# ------------------------------------------------------------------------------------- ONNX parity
@needs_onnx
def test_parity_with_nan_outputs_fails_and_says_so(files: Files) -> None:
    from seg_template.onnx_model import check_parity

    net = ConstantNet(0.5, classes=6).eval()  # any net of the file's class count: its outputs are finite
    parity = check_parity(net, files["nanonnx"], [[1, 32, 32]], threads=1)
    assert not parity.ok(1e3, 0.0), parity
    text = parity.summary()
    assert "0.00e+00" not in text and "100.000%" not in text and "max |logit difference| nan" in text, text
    assert "onnxruntime output holds NaN in" in text and "PyTorch output" not in text, text
    assert parity.agreement < 1.0


@needs_onnx
def test_parity_counts_nan_on_the_pytorch_side_too(files: Files) -> None:
    from seg_template.onnx_model import Parity, check_parity

    onnx_file = files["nanonnx"]
    parity = check_parity(ConstantNet(NAN, classes=6).eval(), onnx_file, [[1, 32, 32]], threads=1)
    assert parity.nonfinite["PyTorch"][0] == parity.values and not parity.finite("PyTorch")
    assert "PyTorch output holds NaN in 100% of its values" in parity.summary()
    assert parity.agreement == 0.0  # all-NaN pixels on both sides: argmax 0 == 0 is no agreement
    assert not Parity(float("nan"), 1.0, [(1, 8, 8)]).ok(1.0, 0.5)  # a NaN difference never passes


# ------------------------------------------------------------------------------------- sweep summary
def test_sweep_summary_ranks_a_job_with_a_nan_objective_last(tmp_path: Path) -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from seg_template.sweep_summary import SweepSummary, collect_jobs
    from tests.helpers import job_config

    callback = SweepSummary()
    for num, override, value in ((0, "loss=ce", 0.4), (1, "loss=wce", NAN), (2, "loss=ohem", 0.3)):
        config = job_config(tmp_path, num, override)
        callback.on_job_start(config)
        job = tmp_path / f"{num}_{override}"
        # job 1 had the best epoch of all before it diverged: its returned value is NaN
        (job / "metrics.csv").write_text("epoch,step,val/mIoU\n0,0,0.2\n1,1,0.9\n2,2,nan\n")
        ret = JobReturn(status=JobStatus.COMPLETED)
        ret.return_value = value
        callback.on_job_end(config, ret)
    jobs = collect_jobs(tmp_path, final=True)
    assert [j["num"] for j in jobs] == [0, 2, 1]
    assert jobs[-1]["best_val"] == 0.9 and math.isnan(jobs[-1]["objective"])


def test_sweep_summary_ignores_non_finite_metric_rows(tmp_path: Path) -> None:
    from seg_template.sweep_summary import STATUS_FILE, read_job

    (tmp_path / STATUS_FILE).write_text(json.dumps({"job": "0", "status": "completed", "objective": None}))
    (tmp_path / "metrics.csv").write_text("epoch,step,val/mIoU,test/mIoU\n0,0,0.5,\n1,1,inf,\n2,2,nan,\n3,3,,nan\n")
    job = read_job(tmp_path)
    assert (job["best_val"], job["best_epoch"], job["test"]) == (0.5, 0, None)


# ------------------------------------------------------------------------------------- the real script
@pytest.mark.slow
def test_predict_script_refuses_a_nan_checkpoint(files: Files, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    result = run_script("predict.py", *PREDICT, "device=cpu", f"ckpt_path={files['nan']}",
                        f"input={files['images']}", f"output_dir={out}", f"paths.log_dir={tmp_path / 'logs'}",
                        timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "][ERROR] - " in line]
    assert len(errors) == 1, output[-3000:]
    assert_short_named(output[output.index(errors[0]):], rf"CheckpointError: ckpt_path: '.*nan' holds NaN/inf.*{HEAD}")
    _no_masks(out)


@pytest.mark.slow
def test_train_script_stops_a_resumed_fit_whose_validation_is_nan(files: Files, tmp_path: Path) -> None:
    """The stranger's run, for real: it used to exit 0 with val/mIoU 0.16 from NaN logits and a best.ckpt."""
    logs = tmp_path / "logs"
    result = run_script("train.py", *TRAIN, "trainer.max_epochs=2", f"ckpt_path={files['hugemean']}",
                        f"paths.log_dir={logs}", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "][ERROR] - " in line]
    assert len(errors) == 1, output[-3000:]
    assert_short_named(output[output.index(errors[0]):], r"TrainingDiverged: the sanity-check validation before "
                                                         r"training .*NaN/inf logits.*resumed from ckpt_path=.*hugemean")
    assert not list(logs.rglob("*.ckpt")), "a checkpoint of the non-finite state was written"


# ------------------------------------------------------------------------ tensors of a kind training never writes
#: how each kind is made from a dense tensor, and what the message says of it (stranger B's sparse head: a
#: 125-line "Could not run 'aten::ne.Scalar' ... SparseCPU" traceback from the NaN check, exit 1)
ODD_KINDS: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {
    "sparse_coo": (lambda t: t.to_sparse(), r"is sparse \(layout torch\.sparse_coo\)"),
    "sparse_csr": (lambda t: t.to_sparse_csr(), r"is sparse \(layout torch\.sparse_csr\)"),
    "sparse_bsc": (lambda t: t.to_sparse_bsc((1, 1)), r"is sparse \(layout torch\.sparse_bsc\)"),
    "nested": (lambda t: torch.nested.nested_tensor([t.flatten(), t.flatten()[:3]], layout=torch.jagged),
               r"is a nested tensor \(layout torch\.jagged\)"),
    "meta": (lambda t: torch.empty_like(t, device="meta"), r"holds no data \(device meta\)"),
    "quantized": (lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8), r"is quantized \(dtype torch\.qint8\)"),
    "complex": (lambda t: torch.complex(t, torch.zeros_like(t)), r"is complex \(dtype torch\.complex64\)"),
}


def _odd(kind: str) -> Callable[[dict], None]:
    make = ODD_KINDS[kind][0]

    def change(state: dict) -> None:
        with warnings.catch_warnings():  # torch calls sparse CSR / nested tensors beta, quantizing deprecated
            warnings.simplefilter("ignore", UserWarning)
            state[HEAD] = make(state[HEAD])
    return change


class OddFiles(Files):
    """``{odd__<kind>}`` (a checkpoint for eval / predict / export), ``{oddtrain__<kind>}`` (a training
    checkpoint, for resuming) and ``{oddweights__<kind>}`` (a plain state dict, for ``model.pretrained``), each
    with the head's weight of that kind (:data:`ODD_KINDS`)."""

    def _make_odd(self, path: Path, name: str) -> None:
        self._poisoned(path, _odd(name.partition("__")[2]))

    def _make_oddtrain(self, path: Path, name: str) -> None:
        self._poisoned(path, _odd(name.partition("__")[2]), training=True)

    def _make_oddweights(self, path: Path, name: str) -> None:
        state = self.module_state()
        _odd(name.partition("__")[2])(state)
        torch.save(state, path)


@pytest.fixture
def odd_files(compose_cfg, tmp_path: Path) -> OddFiles:
    workspace = OddFiles(tmp_path / "files", compose_cfg)
    workspace.root.mkdir()
    return workspace


def _odd_culprit(option: str, file: str, kind: str, name: str = f"state_dict\\.{HEAD}") -> str:
    return (rf"{re.escape(option)}: '.*{file}__{kind}': tensor {name} {ODD_KINDS[kind][1]}: not a weights file this "
            rf"project reads; training writes dense tensors .*best\.ckpt or last\.ckpt")


#: every kind through eval; the sparse head through every way a file comes in
ODD_CASES = [
    *[(f"odd/eval_{kind}", "eval", [*SMALL, f"ckpt_path={{odd__{kind}}}"], _odd_culprit("ckpt_path", "odd", kind))
      for kind in ODD_KINDS],
    ("odd/predict_sparse_coo", "predict", [*PREDICT, "device=cpu", "ckpt_path={odd__sparse_coo}", "input={images}"],
     _odd_culprit("ckpt_path", "odd", "sparse_coo")),
    pytest.param("odd/export_sparse_coo", "export", [*PREDICT, "ckpt_path={odd__sparse_coo}", *ONNX_FAST],
                 _odd_culprit("ckpt_path", "odd", "sparse_coo"), marks=needs_onnx, id="odd/export_sparse_coo"),
    ("odd/pretrained_sparse_coo", "train", [*TRAIN, "model.pretrained={oddweights__sparse_coo}"],
     _odd_culprit("model.pretrained", "oddweights", "sparse_coo", name=re.escape(HEAD))),
    ("odd/pretrained_meta", "train", [*TRAIN, "model.pretrained={oddweights__meta}"],
     _odd_culprit("model.pretrained", "oddweights", "meta", name=re.escape(HEAD))),
    ("odd/resume_sparse_coo", "train", [*TRAIN, "trainer.max_epochs=2", "ckpt_path={oddtrain__sparse_coo}"],
     _odd_culprit("ckpt_path", "oddtrain", "sparse_coo")),
    ("odd/resume_quantized", "train", [*TRAIN, "trainer.max_epochs=2", "ckpt_path={oddtrain__quantized}"],
     _odd_culprit("ckpt_path", "oddtrain", "quantized")),
]


@pytest.mark.parametrize(("id_", "task", "overrides", "culprit"), ODD_CASES, ids=[_case_id(c) for c in ODD_CASES])
def test_a_tensor_of_a_kind_training_never_writes_is_named(id_, task, overrides, culprit, compose_cfg,
                                                           odd_files: OddFiles, tmp_path: Path) -> None:
    """A sparse, nested, quantized, complex or data-less (meta) tensor is refused by the one reader, naming the
    file and the tensor, whichever way the file comes in (was: a traceback from the NaN check, or a silently
    densified / dequantized / real-cast weight)."""
    out = tmp_path / "out"
    err = _task_error(compose_cfg, task, [o.format_map(odd_files) for o in overrides], out)
    assert isinstance(err, CheckpointError), f"{type(err).__name__}: {err}"
    assert_short_named(user_message(err), culprit)
    _no_masks(out)
    assert not list(out.rglob("*.ckpt")), "a checkpoint was written"


def test_the_nan_check_never_reads_a_tensor_it_has_no_kernel_for() -> None:
    """``refuse_nonfinite`` called on a tree that did not come through the reader: the kind is named first; the
    kinds training writes (any real or integer dtype, half and float8 included) pass."""
    from seg_template.models.finite import odd_kind, refuse_nonfinite

    dense = torch.ones(6, 4, 1, 1)
    for fine in (dense, dense.half(), dense.double(), dense.to(torch.float8_e4m3fn), torch.zeros(3, dtype=torch.long),
                 torch.tensor(True), nn.Parameter(dense)):
        assert odd_kind(fine) is None, fine.dtype
    for kind, (_, said) in ODD_KINDS.items():
        state = {HEAD: dense.clone()}
        _odd(kind)(state)
        with pytest.raises(CheckpointError, match=rf"ckpt_path: 'w\.pt': tensor {re.escape(HEAD)} {said}: not a "):
            refuse_nonfinite(state, "w.pt", "ckpt_path")
