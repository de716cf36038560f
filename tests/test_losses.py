"""Cross-entropy and OHEM (eager path): parity with torch.nn.CrossEntropyLoss and the sort-based reference."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_template.losses import CrossEntropy, OhemCrossEntropy, SegmentationLoss, upsampled_nll
from seg_template.losses.reference import ohem_reference, upsample

IGNORE = 255


def make_batch(shape=(2, 5, 6, 7), size=(12, 14), ignore_frac=0.2, scale=3.0, seed=0, ignore=IGNORE,
               dtype=torch.float64):
    """Random logits [N, C, *shape[2:]] and a target [N, *size] with a fraction of ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(shape, generator=gen, dtype=dtype)).requires_grad_()
    target = torch.randint(0, shape[1], (shape[0], *size), generator=gen)
    target[torch.rand(target.shape, generator=gen) < ignore_frac] = ignore
    return logits, target


# ----------------------------------------------------------------------------- CrossEntropy parity

SHAPES = {  # (logits shape, target shape) — no resizing, so every dimensionality is comparable
    "NC": ((7, 5), (7,)),
    "NCL": ((2, 5, 9), (2, 9)),
    "NCHW": ((2, 5, 4, 6), (2, 4, 6)),
    "NCDHW": ((2, 5, 3, 4, 2), (2, 3, 4, 2)),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [255, -100, 0])
@pytest.mark.parametrize("dims", list(SHAPES))
def test_ce_matches_torch(reduction, weighted, ignore, dims):
    logits_shape, target_shape = SHAPES[dims]
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(logits_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, target_shape, generator=gen)
    target.view(-1)[::3] = ignore
    weight = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0]) if weighted else None
    ours = CrossEntropy(ignore_index=ignore, weight=weight, reduction=reduction)(logits, target)
    ref_weight = None if weight is None else weight.double()
    ref = nn.CrossEntropyLoss(weight=ref_weight, ignore_index=ignore, reduction=reduction)(logits, target)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_upsamples_like_interpolate_then_torch(align_corners, weighted):
    logits, target = make_batch(dtype=torch.float32)
    weight = [1.0, 0.2, 3.0, 1.5, 0.7] if weighted else None
    ours = CrossEntropy(weight=weight, align_corners=align_corners)(logits, target)
    ref_weight = None if weight is None else torch.tensor(weight)
    ref = F.cross_entropy(upsample(logits, target.shape[-2:], align_corners), target, weight=ref_weight,
                          ignore_index=IGNORE)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    none = CrossEntropy(weight=weight, align_corners=align_corners, reduction="none")(logits, target)
    assert none.shape == target.shape and bool((none[target == IGNORE] == 0).all())


def test_ce_gradcheck():
    logits, target = make_batch(shape=(1, 3, 3, 4), size=(5, 6))
    loss = CrossEntropy(weight=[1.0, 2.0, 0.5])
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


# ----------------------------------------------------------------------------- OHEM vs the sort reference

@pytest.mark.parametrize(("thresh", "min_kept"), [
    (0.7, 1), (0.7, 50), (0.3, 10), (0.05, 20), (0.05, 150), (0.9, 250), (1.0, 5), (0.5, 100000)])
@pytest.mark.parametrize("weighted", [False, True])
def test_ohem_matches_sort_reference(thresh, min_kept, weighted):
    logits, target = make_batch()
    weight = torch.tensor([1.0, 0.2, 3.0, 1.5, 0.7], dtype=torch.float64) if weighted else None
    ours = OhemCrossEntropy(thresh=thresh, min_kept=min_kept, weight=weight)(logits, target)
    ref = ohem_reference(logits, target, thresh, min_kept, weight=weight)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-6)


def test_ohem_exercises_both_selection_paths(monkeypatch):
    calls = []
    kthvalue = torch.kthvalue
    monkeypatch.setattr(torch, "kthvalue", lambda *a, **k: calls.append(1) or kthvalue(*a, **k))
    logits, target = make_batch()
    OhemCrossEntropy(thresh=0.7, min_kept=10)(logits, target)  # many pixels below 0.7: no selection needed
    assert calls == []
    OhemCrossEntropy(thresh=0.01, min_kept=100)(logits, target)  # few below 0.01: p_k found by kthvalue
    assert calls == [1]


@pytest.mark.parametrize("align_corners", [False, True])
def test_ohem_align_corners_matches_reference(align_corners):
    logits, target = make_batch(seed=3)
    ours = OhemCrossEntropy(thresh=0.6, min_kept=40, align_corners=align_corners)(logits, target)
    ref = ohem_reference(logits, target, 0.6, 40, align_corners=align_corners)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_ohem_gradcheck():
    logits, target = make_batch(shape=(1, 3, 3, 4), size=(5, 6), seed=2)
    for thresh, min_kept in [(0.7, 3), (0.05, 8)]:
        loss = OhemCrossEntropy(thresh=thresh, min_kept=min_kept, weight=[1.0, 2.0, 0.5])
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, target), (logits,))


def test_ohem_fewer_valid_pixels_than_min_kept():
    logits, target = make_batch(ignore_frac=0.9, seed=4)
    n_valid = int((target != IGNORE).sum())
    for thresh in (0.05, 0.7, 1.0):  # p_k is then the largest p: it is the threshold unless thresh is larger
        ours = OhemCrossEntropy(thresh=thresh, min_kept=10 * n_valid)(logits, target)
        ref = ohem_reference(logits, target, thresh, 10 * n_valid)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("loss", [CrossEntropy(), CrossEntropy(weight=[1.0] * 5), OhemCrossEntropy(),
                                  OhemCrossEntropy(thresh=0.1, min_kept=1)], ids=["ce", "wce", "ohem", "ohem2"])
def test_all_ignored_gives_zero_with_flowing_gradient(loss):
    logits, target = make_batch(ignore_frac=1.0)
    value = loss(logits, target)
    assert value.item() == 0.0 and value.requires_grad
    (grad,) = torch.autograd.grad(value, logits)
    assert bool((grad == 0).all())


def test_ce_mean_with_zero_weight_targets_is_zero_not_nan():
    logits, target = make_batch()
    target[target != IGNORE] = 3
    value = CrossEntropy(weight=[1.0, 1.0, 1.0, 0.0, 1.0])(logits, target)
    assert value.item() == 0.0


def test_ohem_saturated_probabilities_keep_nothing_and_return_zero():
    target = torch.randint(0, 4, (2, 6, 6))
    logits = F.one_hot(target, 4).permute(0, 3, 1, 2).double().mul(1000).requires_grad_()  # p == 1 exactly
    value = OhemCrossEntropy(thresh=0.7, min_kept=5)(logits, target)
    assert value.item() == 0.0
    (grad,) = torch.autograd.grad(value, logits)
    assert bool((grad == 0).all())


def test_ohem_single_valid_pixel():
    logits, target = make_batch(ignore_frac=1.0)
    target[0, 3, 4] = 2
    prob = F.softmax(upsample(logits, target.shape[-2:]), 1)[0, 2, 3, 4].item()
    # p >= thresh: p_k is this pixel's p and nothing is strictly below it -> 0.0 (HRNet: NaN)
    assert OhemCrossEntropy(thresh=prob / 2, min_kept=1)(logits, target).item() == 0.0
    # p < thresh: the pixel is kept and the loss is its cross-entropy
    kept = OhemCrossEntropy(thresh=min(1.0, prob * 2), min_kept=1)(logits, target)
    torch.testing.assert_close(kept, torch.tensor(-torch.log(torch.tensor(prob)).item(), dtype=kept.dtype))


@pytest.mark.parametrize("make_loss", [CrossEntropy, OhemCrossEntropy])
@pytest.mark.parametrize("bad_label", [5, 7, -1])
def test_out_of_range_labels_raise_before_cross_entropy(make_loss, bad_label, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("cross_entropy ran before the label check")

    monkeypatch.setattr(F, "cross_entropy", forbidden)
    monkeypatch.setattr(F, "interpolate", forbidden)
    logits, target = make_batch()
    target[0, 0, :2] = bad_label
    with pytest.raises(ValueError, match=rf"\[{bad_label}\].*outside \[0, 5\).*ignore_index=255"):
        make_loss()(logits, target)


def test_out_of_range_message_lists_every_offending_value():
    logits, target = make_batch()
    target[0, 0, :3] = torch.tensor([9, 6, 9])
    with pytest.raises(ValueError, match=r"\[6, 9\]"):
        CrossEntropy()(logits, target)


def test_weight_length_checked_at_forward():
    logits, target = make_batch()
    with pytest.raises(ValueError, match="3 entries but the logits have 5 classes"):
        CrossEntropy(weight=[1.0, 2.0, 3.0])(logits, target)
    with pytest.raises(ValueError, match="6 entries but the logits have 5 classes"):
        OhemCrossEntropy(weight=[1.0] * 6)(logits, target)


@pytest.mark.parametrize("weight", [[1.0, -2.0, 3.0], [1.0, float("nan")]])
def test_negative_or_nan_weights_rejected(weight):
    with pytest.raises(ValueError, match=r"finite and >= 0, got \[(-2.0|nan)\]"):
        CrossEntropy(weight=weight)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_kept": 0}, r"loss\.main\.min_kept=0: expected an integer >= 1"),
    ({"min_kept": 2.5}, r"loss\.main\.min_kept=2\.5: expected an integer >= 1"),
    ({"thresh": 0.0}, r"loss\.main\.thresh=0\.0: expected a finite number in \(0, 1\]"),
    ({"thresh": 1.5}, r"loss\.main\.thresh=1\.5: expected a finite number in \(0, 1\]"),
    ({"thresh": -0.1}, r"loss\.main\.thresh=-0\.1: expected a finite number in \(0, 1\]"),
    ({"thresh": float("nan")}, r"loss\.main\.thresh=nan: expected a finite number in \(0, 1\]")])
def test_ohem_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OhemCrossEntropy(**kwargs)


def test_ohem_accepts_thresh_one():
    logits, target = make_batch()
    ours = OhemCrossEntropy(thresh=1.0, min_kept=1)(logits, target)
    torch.testing.assert_close(ours, ohem_reference(logits, target, 1.0, 1))


def test_unknown_reduction_rejected():
    with pytest.raises(ValueError, match=r"loss\.main\.reduction='avg': expected one of 'mean', 'sum', 'none'"):
        CrossEntropy(reduction="avg")


def test_bad_shapes_and_dtypes_rejected():
    logits, target = make_batch()
    with pytest.raises(TypeError, match="integer class indices"):
        CrossEntropy()(logits, target.double())
    with pytest.raises(ValueError, match="do not match"):
        CrossEntropy()(logits, target[0])
    with pytest.raises(ValueError, match="only 4-D logits"):
        CrossEntropy()(torch.randn(2, 5, 7), torch.zeros(2, 9, dtype=torch.long))


def test_uint8_target_accepted():
    logits, target = make_batch()
    torch.testing.assert_close(CrossEntropy()(logits, target.to(torch.uint8)), CrossEntropy()(logits, target))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_label_error_and_parity():
    logits, target = make_batch(dtype=torch.float32)
    cpu = OhemCrossEntropy(thresh=0.3, min_kept=20)(logits, target)
    gpu = OhemCrossEntropy(thresh=0.3, min_kept=20).cuda()(logits.detach().cuda(), target.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu.detach(), rtol=1e-5, atol=1e-5)
    target[0, 0, 0] = 19
    with pytest.raises(ValueError, match=r"\[19\]"):
        CrossEntropy().cuda()(logits.detach().cuda(), target.cuda())


def test_upsampled_nll_is_zero_at_ignored_and_never_negative():
    """OHEM ranks all pixels by nll, relying on ignored ones being exactly 0; a replacement kernel must too."""
    logits, target = make_batch(dtype=torch.float32, scale=20.0)
    nll = upsampled_nll(logits, target, IGNORE, align_corners=False)
    assert nll.shape == target.shape
    assert bool((nll[target == IGNORE] == 0).all()) and bool((nll >= 0).all())


# ----------------------------------------------------------------------------- non-finite logits

def _poison(logits, target, case):
    nan, inf = float("nan"), float("inf")
    if case == "all NaN":
        logits.fill_(nan)
    elif case == "one NaN":
        logits[0, 1, 2, 3] = nan
    elif case == "+inf":
        logits[1, 4, 5, 6] = inf
    elif case == "-inf":
        logits[0, 2, 3, 3] = -inf
    else:  # the one NaN logit is read only by ignored pixels (upsampling x2 reads it up to output row/col 2)
        logits[0, :, 0, 0] = nan
        target[0, :4, :4] = IGNORE


LOSSES = {"ce": lambda me: CrossEntropy(memory_efficient=me),
          "wce": lambda me: CrossEntropy(weight=[1.0, 0.2, 3.0, 1.5, 0.7], memory_efficient=me),
          "ohem": lambda me: OhemCrossEntropy(thresh=0.7, min_kept=50, memory_efficient=me),
          "ohem p_k": lambda me: OhemCrossEntropy(thresh=0.05, min_kept=150, memory_efficient=me)}


@pytest.mark.parametrize("case", ["all NaN", "one NaN", "+inf", "-inf", "NaN seen by ignored pixels only"])
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
def test_nonfinite_logits_give_a_nan_loss(memory_efficient, loss, case):
    """Masks, OHEM's selection and "nothing kept -> 0" must not turn garbage logits into a finite loss."""
    logits, target = make_batch(dtype=torch.float32)
    aux = logits.detach().clone()
    with torch.no_grad():
        _poison(logits, target, case)
    assert LOSSES[loss](memory_efficient)(logits, target).isnan()
    parts = SegmentationLoss(LOSSES[loss](memory_efficient), memory_efficient=memory_efficient).parts(
        {"out": logits, "aux": aux}, target)
    main = parts[f"loss/{LOSSES[loss](memory_efficient).name}"]
    assert parts["loss"].isnan() and main.isnan() and parts["loss/aux"].isfinite()


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
def test_nonfinite_aux_logits_give_a_nan_loss(memory_efficient):
    logits, target = make_batch(dtype=torch.float32)
    aux = logits.detach().clone()
    aux[1, 0, 2, 2] = float("nan")
    parts = SegmentationLoss(OhemCrossEntropy(memory_efficient=memory_efficient), aux_weight=0.0,
                             memory_efficient=memory_efficient).parts({"out": logits, "aux": aux}, target)
    assert parts["loss/ohem"].isfinite() and parts["loss/aux"].isnan() and parts["loss"].isnan()


def test_nonfinite_logits_make_every_pixel_of_reduction_none_nan():
    logits, target = make_batch()
    with torch.no_grad():
        logits[0, 1, 2, 3] = float("inf")
    assert CrossEntropy(reduction="none")(logits, target).isnan().all()


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
def test_ohem_says_once_when_min_kept_covers_the_batch(memory_efficient, caplog):
    logits, target = make_batch()
    n_valid = int((target != IGNORE).sum())
    covering = OhemCrossEntropy(min_kept=n_valid - 1, memory_efficient=memory_efficient)  # p_k = the largest p
    with caplog.at_level(logging.INFO, logger="seg_template.losses.ohem"):
        covering(logits, target)
        covering(logits, target)
        OhemCrossEntropy(min_kept=n_valid - 2, memory_efficient=memory_efficient)(logits, target)  # mines
        OhemCrossEntropy(min_kept=5, memory_efficient=memory_efficient)(logits, torch.full_like(target, IGNORE))
    (record,) = [r for r in caplog.records if r.name == "seg_template.losses.ohem"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"min_kept={n_valid - 1} reaches the {n_valid} valid pixels" in message
    assert "plain cross-entropy" in message and "loss.main.min_kept" in message


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("loss_class", [CrossEntropy, OhemCrossEntropy])
def test_deferred_label_checks_leave_bad_pixels_out_then_raise(loss_class, memory_efficient: bool) -> None:
    """Inside deferred_label_checks (the training step) a label out of range is recorded on the device and its
    pixels left out of the loss (no index out of range); LabelRange.check raises naming it."""
    from seg_template.errors import DataError
    from seg_template.losses.rules import LabelRange, deferred_label_checks

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 10))
    bad = target.clone()
    bad[0, :2] = 7
    bad[1, 0, 0] = -3
    ignored = target.clone()
    ignored[bad != target] = 255
    kwargs = {"thresh": 0.7, "min_kept": 20} if loss_class is OhemCrossEntropy else {}
    loss = loss_class(memory_efficient=memory_efficient, **kwargs)
    with pytest.raises(DataError, match=r"labels \[-3, 7\] outside \[0, 3\)"):
        loss(logits, bad)
    labels = LabelRange()
    with deferred_label_checks(labels):
        got = loss(logits, bad)
    torch.testing.assert_close(got, loss(logits, ignored))
    with pytest.raises(DataError, match=r"outside \[0, 3\).*e\.g\. -3, 7"):
        labels.check()
    labels.check()  # forgotten once read
