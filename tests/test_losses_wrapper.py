"""The aux-head wrapper, class-weight loading and the configs/loss/*.yaml files."""

from __future__ import annotations

import json
import logging

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from seg_template.errors import ConfigError, DataError, MissingFileError
from seg_template.losses import (
    CrossEntropy,
    OhemCrossEntropy,
    SegmentationLoss,
    load_class_weights,
    weighted_cross_entropy,
)
from seg_template.paths import CONFIG_DIR
from tests.helpers import options

IGNORE = 255


def make_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    aux = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 10, 12), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.3] = IGNORE
    return out, aux, target


# ----------------------------------------------------------------------------- SegmentationLoss

def test_tensor_output_has_no_aux_part():
    out, _, target = make_batch()
    loss = SegmentationLoss(CrossEntropy())
    parts = loss.parts(out, target)
    assert set(parts) == {"loss", "loss/ce"}
    torch.testing.assert_close(parts["loss"], CrossEntropy()(out, target))
    torch.testing.assert_close(loss(out, target), parts["loss"])
    assert set(loss.parts({"out": out, "aux": None}, target)) == {"loss", "loss/ce"}


def test_dict_output_adds_weighted_aux_term():
    out, aux, target = make_batch()
    loss = SegmentationLoss(OhemCrossEntropy(thresh=0.5, min_kept=10), aux_weight=0.4)
    parts = loss.parts({"out": out, "aux": aux}, target)
    assert set(parts) == {"loss", "loss/ohem", "loss/aux"}
    torch.testing.assert_close(parts["loss/ohem"], OhemCrossEntropy(thresh=0.5, min_kept=10)(out, target))
    torch.testing.assert_close(parts["loss"], parts["loss/ohem"] + 0.4 * parts["loss/aux"])
    torch.testing.assert_close(loss({"out": out, "aux": aux}, target), parts["loss"])
    parts["loss"].backward()
    assert out.grad is not None and aux.grad is not None and aux.grad.abs().sum() > 0


def test_aux_is_averaged_over_valid_pixels_only():
    out, aux, target = make_batch()
    loss_aux = SegmentationLoss(CrossEntropy(), aux_weight=0.5).parts({"out": out, "aux": aux}, target)["loss/aux"]
    up = F.interpolate(aux, size=target.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(up, target, ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    torch.testing.assert_close(loss_aux, per_pixel[valid].mean())
    assert not torch.allclose(loss_aux, per_pixel.mean())  # HRNet-OCR's mean with ignored pixels as zeros


def test_aux_shares_ignore_index_weights_and_align_corners():
    main = CrossEntropy(ignore_index=0, weight=[1.0, 2.0, 0.5, 1.0], align_corners=True)
    wrapper = SegmentationLoss(main)
    assert wrapper.aux.ignore_index == 0 and wrapper.aux.align_corners
    torch.testing.assert_close(wrapper.aux.weight, main.weight)


def test_a_main_term_without_attributes_takes_them_from_the_wrapper():
    """A forker's loss need not keep ignore_index / align_corners: the loss node may give them itself, and a
    model without an aux head needs neither."""

    class Plain(torch.nn.Module):
        def forward(self, logits, target):
            return logits.mean() * 0

    wrapper = SegmentationLoss(Plain(), ignore_index=7, align_corners=True)
    assert wrapper.aux.ignore_index == 7 and wrapper.aux.align_corners
    out, aux, target = make_batch()
    assert SegmentationLoss(Plain())(out, target) == 0  # no aux logits: nothing needed
    for given, missing in (({}, r"loss\.ignore_index and loss\.align_corners"),
                           ({"ignore_index": 255}, r"loss\.align_corners: the model has an auxiliary head")):
        with pytest.raises(ConfigError, match=missing + r".*loss\.main \(Plain\) does not keep"):
            SegmentationLoss(Plain(), **given)({"out": out, "aux": aux}, target)
    with pytest.raises(ConfigError, match=r"`align_corners: \$\{model\.align_corners\}`"):
        SegmentationLoss(Plain(), ignore_index=255)({"out": out, "aux": aux}, target)
    with pytest.raises(ConfigError, match=r"loss\.ignore_index=0 but loss\.main\.ignore_index=255"):
        SegmentationLoss(CrossEntropy(ignore_index=255), ignore_index=0)


def test_a_main_term_that_does_not_reduce_is_named():
    class PerPixel(torch.nn.Module):
        def forward(self, logits, target):
            return logits.sum(1)

    out, _, target = make_batch()
    with pytest.raises(TypeError, match=r"loss term .*PerPixel returned a tensor of shape \[.*\]: a loss "
                                        r"term returns one scalar"):
        SegmentationLoss(PerPixel())(out, target)


def test_wrapper_rejects_bad_input():
    out, _, target = make_batch()
    with pytest.raises(TypeError, match="returned keys \\['features'\\]: a model returns logits"):
        SegmentationLoss(CrossEntropy())({"features": out}, target)  # every form: test_model_outputs.py
    with pytest.raises(TypeError, match="returned a list"):
        SegmentationLoss(CrossEntropy())([out], target)
    with pytest.raises(ValueError, match=r"loss\.aux_weight=-1: expected a finite number >= 0"):
        SegmentationLoss(CrossEntropy(), aux_weight=-1)


def test_all_ignored_with_aux_is_zero():
    out, aux, target = make_batch()
    target[:] = IGNORE
    parts = SegmentationLoss(OhemCrossEntropy()).parts({"out": out, "aux": aux}, target)
    assert parts["loss"].item() == 0.0
    parts["loss"].backward()
    assert out.grad.abs().sum() == 0 and aux.grad.abs().sum() == 0


# ----------------------------------------------------------------------------- class weights

def test_load_class_weights_sources(tmp_path):
    expected = torch.tensor([0.5, 1.0, 2.5])
    np.save(tmp_path / "w.npy", expected.numpy())
    (tmp_path / "w.json").write_text(json.dumps([0.5, 1, 2.5]))
    (tmp_path / "w.txt").write_text("# median-frequency weights\n0.5, 1.0\n2.5  # last class\n")
    for spec in ([0.5, 1, 2.5], OmegaConf.create([0.5, 1, 2.5]), expected.double(), tmp_path / "w.npy",
                 str(tmp_path / "w.json"), str(tmp_path / "w.txt")):
        weight = load_class_weights(spec)
        assert weight.dtype == torch.float32
        torch.testing.assert_close(weight, expected)
    assert load_class_weights(None) is None


def test_load_class_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_class_weights(tmp_path / "missing.npy")
    (tmp_path / "w.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported suffix '.csv'"):
        load_class_weights(tmp_path / "w.csv")
    np.save(tmp_path / "w2.npy", np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"w2.npy: expected a non-empty 1-D.*\(2, 2\)"):
        load_class_weights(tmp_path / "w2.npy")
    (tmp_path / "neg.json").write_text("[1, -0.5, -2]")
    with pytest.raises(ValueError, match=r"neg.json: class weights must be finite and >= 0, got \[-0.5, -2.0\]"):
        load_class_weights(tmp_path / "neg.json")
    with pytest.raises(ValueError, match="expected a flat list of numbers, one per class, got 'a'"):
        load_class_weights(["a", "b"])
    with pytest.raises(ValueError, match="got the boolean true"):  # JSON true is no weight of 1
        load_class_weights([True, 1.0])
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    with pytest.raises(ValueError, match=r"deep\.json: nested too deeply to read"):
        load_class_weights(tmp_path / "deep.json")
    for dtype in (bool, "U1", complex):
        np.save(tmp_path / "typed.npy", np.ones(6, dtype=dtype))
        with pytest.raises(ValueError, match=r"typed\.npy: expected numbers, got an array of"):
            load_class_weights(tmp_path / "typed.npy")
    with pytest.raises(ValueError, match="expected numbers, got an array of bool"):
        load_class_weights(torch.ones(3, dtype=torch.bool))
    (tmp_path / "bad.txt").write_text("1.0 one")
    with pytest.raises(ValueError, match="bad.txt: could not convert"):
        load_class_weights(tmp_path / "bad.txt")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="bad.json: "):
        load_class_weights(tmp_path / "bad.json")


@pytest.mark.parametrize("make_loss", [CrossEntropy, OhemCrossEntropy, weighted_cross_entropy])
def test_all_zero_class_weights_rejected_at_construction(make_loss, tmp_path):
    with pytest.raises(ConfigError, match=r"class weights: every class weight is 0.*data\.class_weights or "
                                          r"loss\.main\.weight"):
        make_loss(weight=[0.0, 0.0, 0.0])
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros(4))
    with pytest.raises(ConfigError, match=rf"class weights file {zeros}: every class weight is 0"):
        make_loss(weight=zeros)


def test_all_zero_class_weights_stop_a_config_before_training(compose_tmp):
    with pytest.raises(InstantiationException, match=r"every class weight is 0.*data\.class_weights") as info:
        build(compose_tmp, "loss=wce", "data.class_weights=[0,0,0,0,0,0]")
    assert isinstance(info.value.__cause__, ConfigError)


def test_user_mistakes_raise_the_user_error_classes(tmp_path):
    with pytest.raises(MissingFileError, match="missing.json"):
        load_class_weights(tmp_path / "missing.json")
    for bad_config in (lambda: OhemCrossEntropy(min_kept=0), lambda: OhemCrossEntropy(thresh=2.0),
                       lambda: CrossEntropy(reduction="avg"), lambda: weighted_cross_entropy(None),
                       lambda: SegmentationLoss(CrossEntropy(), aux_weight=-1),
                       lambda: load_class_weights([1.0, -1.0])):
        with pytest.raises(ConfigError):
            bad_config()
    out, _, target = make_batch()
    with pytest.raises(ConfigError, match="loss.main.weight"):
        CrossEntropy(weight=[1.0, 2.0])(out, target)
    target[0, 0, 0] = 9
    with pytest.raises(DataError, match=r"\[9\]"):
        CrossEntropy()(out, target)


def test_relative_weight_path_resolves_from_the_launch_directory(tmp_path, monkeypatch):
    (tmp_path / "w.json").write_text("[1, 2]")
    monkeypatch.chdir(tmp_path)
    torch.testing.assert_close(load_class_weights("w.json"), torch.tensor([1.0, 2.0]))


def test_weights_follow_the_module_to_another_dtype_and_stay_out_of_state_dict():
    loss = CrossEntropy(weight=[1.0, 2.0, 3.0, 4.0])
    assert "weight" not in loss.state_dict()
    assert loss.double().weight.dtype == torch.float64


# ----------------------------------------------------------------------------- configs/loss/*.yaml

def build(compose_tmp, *overrides):
    """The loss of ``python train.py <overrides>`` (data=synthetic unless overridden)."""
    return hydra.utils.instantiate(compose_tmp(*overrides).loss)


def test_config_ce(compose_tmp):
    loss = build(compose_tmp, "loss=ce")
    assert isinstance(loss, SegmentationLoss) and type(loss.main) is CrossEntropy
    assert loss.aux_weight == 0.4 and loss.main.ignore_index == IGNORE and loss.main.weight is None
    assert not loss.main.align_corners and loss.main.reduction == "mean"
    out, aux, target = make_batch()
    torch.testing.assert_close(loss(out, target), CrossEntropy()(out, target))


def test_config_ohem_defaults_and_overrides(compose_tmp):
    loss = build(compose_tmp, "loss=ohem")
    assert type(loss.main) is OhemCrossEntropy
    assert (loss.main.thresh, loss.main.min_kept, loss.aux_weight) == (0.7, 8192, 0.4)  # data.ohem_min_kept
    hrnet = build(compose_tmp, "loss=ohem", "loss.main.thresh=0.9", "loss.main.min_kept=131072",
                  "loss.aux_weight=0.5", "loss.main.align_corners=true")
    assert (hrnet.main.thresh, hrnet.main.min_kept, hrnet.aux_weight) == (0.9, 131072, 0.5)
    assert hrnet.main.align_corners and hrnet.aux.align_corners


def test_config_wce_reads_data_class_weights(compose_tmp, tmp_path):
    loss = build(compose_tmp, "loss=wce", "data.class_weights=[1.0,2.0,3.0,4.0]")
    torch.testing.assert_close(loss.main.weight, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(loss.aux.weight, loss.main.weight)
    (tmp_path / "w.json").write_text("[0.5, 0.5, 1, 1]")
    from_file = build(compose_tmp, "loss=wce", f"loss.main.weight={tmp_path / 'w.json'}")
    torch.testing.assert_close(from_file.main.weight, torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_config_wce_without_weights_says_what_to_set(compose_tmp):
    with pytest.raises(InstantiationException, match=r"data\.class_weights.*loss\.main\.weight=<file>"):
        build(compose_tmp, "loss=wce", "data.class_weights=null")



@pytest.mark.parametrize("data", options("data"))
def test_ohem_mines_on_each_data_configs_default_batch(data, compose_tmp, caplog):
    """min_kept comes from the data config and is well below the pixels of one default batch, so OHEM keeps
    only the hard pixels once the model is confident (at 100000 it was plain CE on the synthetic batch)."""
    cfg = compose_tmp("loss=ohem", f"data={data}")
    crop_h, crop_w = cfg.data.train_transform.crop_size
    pixels = cfg.data.batch_size * crop_h * crop_w
    loss = build(compose_tmp, "loss=ohem", f"data={data}")
    assert loss.main.min_kept == cfg.data.ohem_min_kept <= pixels // 8
    if data == "synthetic":  # a default batch, 10% of its pixels ignored: OHEM mines, nothing is logged
        target = torch.randint(0, cfg.data.num_classes, (cfg.data.batch_size, crop_h, crop_w))
        target[torch.rand(target.shape) < 0.1] = IGNORE
        logits = torch.randn(cfg.data.batch_size, cfg.data.num_classes, crop_h // 4, crop_w // 4)  # stride 4
        with caplog.at_level(logging.INFO, logger="seg_template.losses.ohem"):
            loss.main(logits, target)
        assert not caplog.records


def _leaves(node, prefix=""):
    """``{"main.weight": value, ...}`` of a raw (unresolved) config node."""
    out = {}
    for key, value in node.items_ex(resolve=False):
        if OmegaConf.is_dict(value):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", ["wce", "ohem"])
def test_loss_options_inherit_ce_and_state_only_what_differs(name):
    raw = OmegaConf.load(CONFIG_DIR / "loss" / f"{name}.yaml")
    assert list(raw.pop("defaults")) == ["ce", "_self_"]
    base = _leaves(OmegaConf.load(CONFIG_DIR / "loss" / "ce.yaml"))
    repeated = {key for key, value in _leaves(raw).items() if key in base and base[key] == value}
    assert not repeated, f"loss/{name}.yaml repeats what it inherits from ce.yaml: {sorted(repeated)}"
