"""Lovász-softmax: parity with segmentation_models_pytorch's port of Berman's reference code, class weights
against a per-class reference written here from the paper's formula, gradcheck, and the loss rules
(all ignored -> 0.0, non-finite logits -> NaN, bad labels raise first, autocast computes in float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_template.errors import ConfigError, DataError
from seg_template.losses.aux import SegmentationLoss
from seg_template.losses.lovasz import LovaszSoftmax, lovasz_jaccard_weights
from seg_template.losses.reference import upsample

IGNORE = 255


def make_batch(shape=(3, 5, 6, 7), size=(12, 14), ignore_frac=0.2, scale=3.0, seed=0, dtype=torch.float64):
    """Random logits [N, C, *shape[2:]] and a target [N, *size] with a fraction of ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(shape, generator=gen, dtype=dtype)).requires_grad_()
    target = torch.randint(0, shape[1], (shape[0], *size), generator=gen)
    target[torch.rand(target.shape, generator=gen) < ignore_frac] = IGNORE
    return logits, target


def class_losses_reference(prob: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Lovász loss of each class present in ``labels [P]``, from ``prob [P, C]``: one class at a time, straight
    from the paper (errors sorted in decreasing order, dotted with the differences of the Jaccard losses)."""
    losses = {}
    for c in labels.unique().tolist():
        fg = (labels == c).to(prob.dtype)
        errors = (fg - prob[:, c]).abs()
        order = torch.argsort(errors.detach(), descending=True)
        fg_sorted = fg[order]
        gts = fg_sorted.sum()
        jaccard = 1 - (gts - fg_sorted.cumsum(0)) / (gts + (1 - fg_sorted).cumsum(0))
        losses[c] = errors[order] @ torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return losses


def lovasz_reference(logits, target, weight=None, per_image=False, align_corners=False):
    """Upsample, softmax, then the (weighted) mean of ``class_losses_reference`` per set of pixels (the batch,
    or each image with a valid pixel, then the plain mean over those images)."""
    prob = F.softmax(upsample(logits, tuple(target.shape[-2:]), align_corners), dim=1)
    sets = [(prob, target)] if not per_image else [(prob[i:i + 1], target[i:i + 1]) for i in range(len(target))]
    results = []
    for p, t in sets:
        valid = t != IGNORE
        if not valid.any():
            continue
        losses = class_losses_reference(p.movedim(1, -1)[valid], t[valid])
        w = {c: 1.0 if weight is None else float(weight[c]) for c in losses}
        total = sum(w[c] * loss for c, loss in losses.items())
        results.append(total / sum(w.values()) if sum(w.values()) > 0 else total * 0)
    return sum(results) / len(results)


def smp_lovasz(logits, target, per_image, monkeypatch, align_corners=False, float64=True):
    """segmentation_models_pytorch's multiclass LovaszLoss on the upsampled logits.

    smp's ``_lovasz_grad`` casts the sorted labels with ``.float()``, so in float64 its ``torch.dot`` refuses to
    mix the float32 Jaccard gradient with float64 errors; for the float64 comparison ``Tensor.float`` is
    ``Tensor.double`` during this call only, so smp's own code runs unchanged, all in float64."""
    smp = pytest.importorskip("segmentation_models_pytorch",
                              reason="segmentation_models_pytorch (a test-only, optional dependency) is the "
                                     "independent Lovász reference")
    loss = smp.losses.LovaszLoss(mode="multiclass", per_image=per_image, ignore_index=IGNORE, from_logits=True)
    up = upsample(logits, tuple(target.shape[-2:]), align_corners)
    with monkeypatch.context() as patch:
        if float64:
            patch.setattr(torch.Tensor, "float", torch.Tensor.double)
        return loss(up, target)


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
def test_matches_smp_float64(per_image, align_corners, monkeypatch):
    logits, target = make_batch(seed=1)
    # smp counts an all-ignored image in its per-image mean (and then returns an empty tensor); we skip it:
    # compare only where every image has valid pixels
    assert bool((target != IGNORE).flatten(1).any(1).all())
    ours = LovaszSoftmax(per_image=per_image, align_corners=align_corners)(logits, target)
    ref = smp_lovasz(logits, target, per_image, monkeypatch, align_corners)
    assert ours.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert g_ours.abs().max() > 1e-4  # a real gradient, not zeros on both sides
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("per_image", [False, True])
def test_matches_smp_float32_as_published(per_image, monkeypatch):
    """Plain smp (its Jaccard gradient in float32, no patch) on float32 logits: equal to float32 rounding."""
    logits, target = make_batch(seed=2, dtype=torch.float32)
    ours = LovaszSoftmax(per_image=per_image)(logits, target)
    ref = smp_lovasz(logits, target, per_image, monkeypatch, float64=False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("per_image", [False, True])
def test_class_weights_are_a_weighted_mean_of_per_class_losses(per_image, monkeypatch):
    logits, target = make_batch(seed=3)
    # the per-class reference is itself checked against smp: unweighted, its mean is smp's loss
    torch.testing.assert_close(lovasz_reference(logits, target, per_image=per_image),
                               smp_lovasz(logits, target, per_image, monkeypatch), rtol=0, atol=1e-12)
    weight = [0.5, 2.0, 0.0, 1.5, 3.0]  # class 2 is present with weight 0: it contributes nothing
    ours = LovaszSoftmax(weight=weight, per_image=per_image)(logits, target)
    ref = lovasz_reference(logits, target, torch.tensor(weight), per_image=per_image)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    assert abs(ours.item() - LovaszSoftmax(per_image=per_image)(logits, target).item()) > 1e-3  # weights count
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-14)


def test_hard_predictions_give_the_jaccard_loss():
    """At one-hot probabilities the Lovász extension is the Jaccard loss itself: mean of 1 - IoU over the
    classes present in the target (a class only predicted is not averaged)."""
    gen = torch.Generator().manual_seed(4)
    pred = torch.randint(0, 4, (2, 9, 10), generator=gen)
    target = torch.randint(0, 3, (2, 9, 10), generator=gen)
    target[:, :2] = IGNORE
    logits = (60.0 * F.one_hot(pred, 4).permute(0, 3, 1, 2).double()).requires_grad_()
    valid = target != IGNORE
    ious = []
    for c in target[valid].unique().tolist():
        hit, truth = (pred == c) & valid, target == c
        ious.append((hit & truth).sum().item() / (hit | truth).sum().item())
    expected = 1 - sum(ious) / len(ious)
    assert LovaszSoftmax()(logits, target).item() == pytest.approx(expected, abs=1e-12)
    assert LovaszSoftmax()(logits, torch.where(valid, pred, IGNORE)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.fixture
def one_thread():
    """gradcheck runs ~150 forwards; on a busy 2-core machine each parallel softmax waits ~8 ms for its second
    thread, so run them on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck(per_image, one_thread):
    logits, target = make_batch(shape=(2, 3, 3, 4), size=(6, 8), seed=5)
    weight = [1.0, 2.0, 0.5]
    # no two errors of a class tie (nor come within the finite-difference step), so the sort is locally constant
    prob = F.softmax(upsample(logits.detach(), (6, 8)), dim=1).movedim(1, -1)
    sets = [target != IGNORE] if not per_image else [(target != IGNORE) & (torch.arange(2) == i).view(2, 1, 1)
                                                     for i in range(2)]
    for valid in sets:
        for c in range(3):
            errors = ((target[valid] == c).double() - prob[valid][:, c]).abs().sort().values
            assert errors.diff().min() > 1e-5
    loss = LovaszSoftmax(weight=weight, per_image=per_image)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


def test_jaccard_weights_stay_accurate_in_float32_for_large_classes():
    """The closed form of Berman's ``lovasz_grad`` has no cancellation: float32 matches the exact weights to
    ~1e-7 relative on 300k pixels, where ``J_j - J_{j-1}`` of two Jaccard values near 1 loses most digits (in
    float32 entirely; even float64 keeps only ~5 digits of the smallest weights here)."""
    gen = torch.Generator().manual_seed(6)
    fg = torch.rand(1, 300_000, generator=gen) < 0.3
    ours = lovasz_jaccard_weights(fg, torch.float32).double()
    # exact: J_j - J_{j-1} = (I_{j-1} U_j - I_j U_{j-1}) / (U_{j-1} U_j), the numerator in exact integers
    gts = fg.sum(1, keepdim=True)
    intersection = gts - fg.cumsum(1)
    union = gts + (~fg).cumsum(1)
    before_i = torch.cat([gts, intersection[:, :-1]], dim=1)
    before_u = torch.cat([gts, union[:, :-1]], dim=1)
    exact = (before_i * union - intersection * before_u).double() / (before_u * union).double()
    # after the last foreground pixel the intersection is empty and every weight is 0
    tail = exact == 0
    assert bool(tail.any()) and bool((ours[tail] == 0).all()) and bool((exact[~tail] > 0).all())
    assert ((ours - exact).abs() / exact)[~tail].max() < 1e-6
    assert ours.sum().item() == pytest.approx(1.0, abs=1e-6)  # telescopes to J of everything = 1


# ----------------------------------------------------------------------------- the loss rules

@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 0.5, 1.0, 1.0]], ids=["plain", "weighted"])
def test_all_ignored_gives_zero_with_flowing_gradient(per_image, weight):
    logits, target = make_batch(ignore_frac=1.0, dtype=torch.float32)
    with torch.no_grad():
        logits[0, 0, 0, 0] = 3e38  # finite, but logits.sum() would overflow to inf (and inf * 0 is NaN)
    value = LovaszSoftmax(weight=weight, per_image=per_image)(logits, target)
    assert value.item() == 0.0 and value.requires_grad and value.dtype == torch.float32
    (grad,) = torch.autograd.grad(value, logits)
    assert grad is not None and bool((grad == 0).all())


def test_present_classes_of_weight_zero_give_zero_with_flowing_gradient():
    logits, target = make_batch()
    target[target != IGNORE] = 3
    value = LovaszSoftmax(weight=[1.0, 1.0, 1.0, 0.0, 1.0])(logits, target)
    assert value.item() == 0.0
    (grad,) = torch.autograd.grad(value, logits)
    assert bool((grad == 0).all())


def test_per_image_skips_an_all_ignored_image():
    logits, target = make_batch(seed=7)
    target[1] = IGNORE
    loss = LovaszSoftmax(per_image=True)
    both = loss(logits, target)
    kept = [0, 2]
    torch.testing.assert_close(both, loss(logits[kept], target[kept]), rtol=0, atol=1e-15)
    mean = (loss(logits[:1], target[:1]) + loss(logits[2:], target[2:])) / 2
    torch.testing.assert_close(both, mean, rtol=0, atol=1e-15)
    torch.testing.assert_close(both, lovasz_reference(logits, target, per_image=True), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(both, logits)
    assert bool((grad[1] == 0).all()) and grad[0].abs().max() > 0


def _poison(logits, target, case):
    nan, inf = float("nan"), float("inf")
    if case == "one NaN":
        logits[0, 1, 2, 3] = nan
    elif case == "+inf":
        logits[1, 4, 5, 6] = inf
    elif case == "-inf":
        logits[0, 2, 3, 3] = -inf
    elif case == "NaN seen by ignored pixels only":  # upsampling x2 reads logit (0, 0) up to output row/col 2
        logits[0, :, 0, 0] = nan
        target[0, :4, :4] = IGNORE
    else:  # every pixel ignored: the "nothing to average -> 0" path
        logits[2, 3, 1, 1] = nan
        target.fill_(IGNORE)


@pytest.mark.parametrize("case", ["one NaN", "+inf", "-inf", "NaN seen by ignored pixels only", "all ignored"])
@pytest.mark.parametrize("per_image", [False, True])
def test_nonfinite_logits_give_a_nan_loss(per_image, case):
    logits, target = make_batch(dtype=torch.float32)
    with torch.no_grad():
        _poison(logits, target, case)
    assert LovaszSoftmax(per_image=per_image)(logits, target).isnan()


@pytest.mark.parametrize("native", [False, True], ids=["upsampled", "native"])
@pytest.mark.parametrize("bad_label", [7, -1])
def test_out_of_range_labels_raise_before_any_computation(bad_label, native, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the loss computed before the label check")

    monkeypatch.setattr(F, "interpolate", forbidden)
    monkeypatch.setattr(F, "softmax", forbidden)
    logits, target = make_batch(shape=(2, 3, 6, 8) if native else (2, 3, 3, 4), size=(6, 8))
    target[0, 0, :2] = bad_label
    with pytest.raises(DataError, match=rf"\[{bad_label}\].*outside \[0, 3\).*ignore_index=255"):
        LovaszSoftmax()(logits, target)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    images = torch.randn(2, 3, 6, 7)
    _, target = make_batch(shape=(2, 5, 6, 7), size=(12, 14), seed=8)
    with torch.autocast("cpu", dtype=dtype):
        logits = conv(images)
        assert logits.dtype == dtype
        logits.retain_grad()
        loss = LovaszSoftmax(weight=[1.0, 2.0, 1.0, 0.5, 1.0])(logits, target)
    assert loss.dtype == torch.float32 and loss.isfinite()
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == dtype and bool(logits.grad.isfinite().all())
    assert logits.grad.abs().max() > 0 and conv.weight.grad is not None
    # the same numbers as float32 logits outside autocast: only the logits were rounded to the half type
    full = LovaszSoftmax(weight=[1.0, 2.0, 1.0, 0.5, 1.0])(logits.detach().float(), target)
    torch.testing.assert_close(loss.detach(), full, rtol=1e-6, atol=1e-6)


def test_float64_stays_float64_and_uint8_targets_work():
    logits, target = make_batch()
    loss = LovaszSoftmax()(logits, target)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(LovaszSoftmax()(logits, target.to(torch.uint8)), loss, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("per_image", [False, True])
def test_cuda_matches_cpu_and_checks_labels(per_image):
    logits, target = make_batch(dtype=torch.float32)
    loss = LovaszSoftmax(weight=[1.0, 2.0, 1.0, 0.5, 1.0], per_image=per_image)
    cpu = loss(logits, target)
    (g_cpu,) = torch.autograd.grad(cpu, logits)
    gpu_logits = logits.detach().cuda().requires_grad_()
    gpu = loss.cuda()(gpu_logits, target.cuda())
    (g_gpu,) = torch.autograd.grad(gpu, gpu_logits)
    torch.testing.assert_close(gpu.cpu(), cpu.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-4, atol=1e-7)
    target[0, 0, 0] = 19
    with pytest.raises(DataError, match=r"\[19\]"):
        loss(gpu_logits, target.cuda())


def test_weight_length_checked_at_forward():
    logits, target = make_batch()
    with pytest.raises(ConfigError, match="3 entries but the logits have 5 classes"):
        LovaszSoftmax(weight=[1.0, 2.0, 3.0])(logits, target)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"per_image": "yes"}, "loss.main.per_image"), ({"per_image": 1}, "loss.main.per_image"),
    ({"memory_efficient": "flase"}, "loss.memory_efficient"), ({"align_corners": None}, "model.align_corners")])
def test_flags_must_be_bools(kwargs, key):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', r'[.]')}=.*expected"):
        LovaszSoftmax(**kwargs)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
def test_memory_efficient_path_equals_the_eager_one_group_by_group(per_image, weighted, align_corners,
                                                                    monkeypatch):
    """memory_efficient=True: the same value and gradient without autograd, the classes sorted a few at a
    time (GROUP_BYTES made tiny here: one class per group)."""
    from seg_template.losses import lovasz

    shapes = []
    weights_of = lovasz.lovasz_jaccard_weights

    def recorded(fg_sorted, dtype):  # noqa: ANN001, ANN202
        shapes.append(tuple(fg_sorted.shape))
        return weights_of(fg_sorted, dtype)

    monkeypatch.setattr(lovasz, "lovasz_jaccard_weights", recorded)
    monkeypatch.setattr(lovasz, "GROUP_BYTES", 1)
    gen = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(3, 5, 6, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 5, (3, 13, 15), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = IGNORE
    target[1] = IGNORE  # an image with nothing valid
    weight = [0.5, 2.0, 1.0, 0.0, 3.0] if weighted else None
    kwargs = {"weight": weight, "per_image": per_image, "align_corners": align_corners}
    eager = LovaszSoftmax(**kwargs)(logits, target)
    (eager_grad,) = torch.autograd.grad(eager, logits)
    shapes.clear()
    lean = LovaszSoftmax(memory_efficient=True, **kwargs)(logits, target)
    (lean_grad,) = torch.autograd.grad(lean, logits)
    torch.testing.assert_close(lean, eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lean_grad, eager_grad, rtol=1e-10, atol=1e-14)
    assert shapes and {k for k, _ in shapes} == {1}  # one class per group, never [K, P] for all K at once


def test_memory_efficient_path_gradcheck():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 8), generator=gen)
    target[0, :2] = IGNORE
    loss = LovaszSoftmax(weight=[1.0, 2.0, 0.5], per_image=True, memory_efficient=True)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


def test_attributes_repr_and_buffer():
    loss = LovaszSoftmax(ignore_index=0, weight=[1.0, 2.0], align_corners=True, per_image=True)
    assert LovaszSoftmax.name == "lovasz"
    assert (loss.ignore_index, loss.align_corners, loss.per_image) == (0, True, True)
    assert loss.weight.dtype == torch.float32 and loss.weight.tolist() == [1.0, 2.0]
    assert "weight" in dict(loss.named_buffers()) and "weight" not in loss.state_dict()  # not persistent
    assert repr(loss) == "LovaszSoftmax(ignore_index=0, weight=[2], align_corners=True, per_image=True)"
    assert LovaszSoftmax().weight is None


def test_works_as_the_main_term_of_segmentation_loss():
    """The aux cross-entropy term reads ignore_index, align_corners and weight from the main term."""
    logits, target = make_batch(seed=9)
    aux = logits.detach().clone().requires_grad_()
    main = LovaszSoftmax(weight=[1.0, 2.0, 1.0, 0.5, 1.0])
    parts = SegmentationLoss(main, aux_weight=0.4).parts({"out": logits, "aux": aux}, target)
    assert set(parts) == {"loss", "loss/lovasz", "loss/aux"}  # logged as train/loss/lovasz
    torch.testing.assert_close(parts["loss/lovasz"], main(logits, target), rtol=0, atol=0)
    torch.testing.assert_close(parts["loss"], parts["loss/lovasz"] + 0.4 * parts["loss/aux"], rtol=0, atol=0)
    parts["loss"].backward()
    assert logits.grad.abs().max() > 0 and aux.grad.abs().max() > 0
