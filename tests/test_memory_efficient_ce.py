"""The memory-efficient kernels against the eager interpolate-then-cross-entropy path: values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

from seg_template.losses import (
    CrossEntropy,
    OhemCrossEntropy,
    SegmentationLoss,
    memory_efficient,
    memory_efficient_cross_entropy,
    memory_efficient_ohem_cross_entropy,
)
from seg_template.losses.reference import cross_entropy_reference, ohem_reference, ohem_threshold, upsample
from seg_template.losses.resize import ChunkedBilinear, source_index

IGNORE = 255
# (h, w, H, W): non-integer up-scaling with odd sizes, integer x4, same size, downsampling, 1-pixel sources
SIZES = [(7, 9, 31, 45), (8, 8, 32, 32), (5, 6, 5, 6), (12, 10, 7, 5), (1, 1, 4, 3), (3, 4, 1, 2)]


def reference_ohem(logits: Tensor, target: Tensor, thresh: float, min_kept: int, weight: Tensor | None,
               align_corners: bool) -> tuple[Tensor, bool]:
    """The sort-based reference, and whether p_k (not thresh) was the threshold."""
    return (ohem_reference(logits, target, thresh, min_kept, weight, IGNORE, align_corners),
            ohem_threshold(logits, target, thresh, min_kept, IGNORE, align_corners) > thresh)


def make_inputs(n: int, c: int, size: tuple[int, int, int, int], dtype: torch.dtype = torch.float64,
                margin: float = 0.0, ignored: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Logits [n, c, h, w] (leaf) and labels [n, H, W]; ``margin`` > 0 makes the logits favour the labels."""
    h, w, big_h, big_w = size
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, big_h, big_w), generator=gen)
    logits = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    if margin:  # labels = the low-resolution argmax map, resized: confident like a trained model
        low = torch.randint(0, c, (n, h, w), generator=gen)
        target = F.interpolate(low[:, None].double(), size=(big_h, big_w), mode="nearest")[:, 0].long()
        logits = logits + margin * F.one_hot(low, c).permute(0, 3, 1, 2).to(dtype)
    target[torch.rand(target.shape, generator=gen) < ignored] = IGNORE
    return logits.requires_grad_(), target


def value_and_grad(loss: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
    (grad,) = torch.autograd.grad(loss, logits, upstream)
    return loss.detach(), grad


def assert_match(got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor], dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_source_index_matches_interpolate(size: tuple[int, int, int, int], align_corners: bool) -> None:
    h, _, big_h, _ = size
    x = torch.randn(2, 3, h, 5, dtype=torch.float64)
    i0, i1, lam = source_index(h, big_h, align_corners, torch.float64)
    mixed = x[:, :, i0] * (1 - lam[:, None]) + x[:, :, i1] * lam[:, None]
    torch.testing.assert_close(mixed, upsample(x, (big_h, 5), align_corners), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_chunked_bilinear_and_its_adjoint(size: tuple[int, int, int, int], align_corners: bool) -> None:
    h, w, big_h, big_w = size
    x = torch.randn(3, 2, h, w, dtype=torch.float64)
    resize = ChunkedBilinear(x, (big_h, big_w), align_corners, chunk_bytes=2 * big_w * 8 * 2)  # 2 rows
    assert len(resize.chunks) > 1
    full = torch.zeros(3, 2, big_h, big_w, dtype=torch.float64)
    for n0, n1, r0, r1 in resize.chunks:
        full[n0:n1, :, r0:r1] = resize.upsample(x, (n0, n1, r0, r1))
    torch.testing.assert_close(full, upsample(x, (big_h, big_w), align_corners), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(full)
    adjoint = torch.zeros_like(x)
    for n0, n1, r0, r1 in resize.chunks:
        resize.accumulate(adjoint, g[n0:n1, :, r0:r1].clone(), (n0, n1, r0, r1))
    torch.testing.assert_close((full * g).sum(), (x * adjoint).sum())  # <A x, g> == <x, A^T g>


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_cross_entropy_matches_reference(size: tuple[int, int, int, int], align_corners: bool,
                                     dtype: torch.dtype) -> None:
    logits, target = make_inputs(2, 5, size, dtype)
    weight = torch.rand(5, generator=torch.Generator().manual_seed(2), dtype=dtype) + 0.1
    for w in (None, weight):
        for reduction in ("mean", "sum", "none"):
            want = cross_entropy_reference(logits, target, w, IGNORE, align_corners, reduction)
            want = value_and_grad(want, logits)
            # 3 output rows per chunk, so chunk seams are exercised; None: one chunk for the batch
            for chunk_bytes in (3 * 5 * size[3] * logits.element_size(), None):
                got = memory_efficient_cross_entropy(logits, target, w, IGNORE, align_corners, reduction,
                                                     chunk_bytes=chunk_bytes)
                got = value_and_grad(got, logits)
                assert_match(got, want, dtype)


def test_several_images_per_chunk() -> None:
    logits, target = make_inputs(5, 4, (6, 7, 13, 11))
    per_image = 4 * 13 * 11 * 8
    want = value_and_grad(cross_entropy_reference(logits, target), logits)
    got = value_and_grad(memory_efficient_cross_entropy(logits, target, chunk_bytes=2 * per_image), logits)
    assert_match(got, want, torch.float64)


def count_sweeps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    sweep = memory_efficient.sweep_chunks

    def counted(plan, *args, **kwargs):  # noqa: ANN001, ANN202
        chunks = kwargs.get("chunks", args[5] if len(args) > 5 else None)
        calls.append(len(plan.chunks if chunks is None else chunks))
        return sweep(plan, *args, **kwargs)

    monkeypatch.setattr(memory_efficient, "sweep_chunks", counted)
    return calls


# margin 0 leaves every p ~ 1/C, so more than min_kept pixels are below thresh (one sweep) unless min_kept
# exceeds the valid count; a large margin leaves few below thresh, so p_k is the threshold (a second sweep)
OHEM_CASES = [(0.7, 10, 0.0), (0.7, 100000, 0.0), (0.7, 300, 6.0), (0.7, 1000, 6.0), (0.9, 1500, 6.0),
              (0.3, 1, 3.0)]


@pytest.mark.parametrize(("second_pass", "dtype"),
                         [("pixels", torch.float32), ("pixels", torch.float64), ("chunks", torch.float64)])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("thresh", "min_kept", "margin"), OHEM_CASES)
def test_ohem_matches_reference(thresh: float, min_kept: int, margin: float, align_corners: bool,
                                dtype: torch.dtype, second_pass: str, monkeypatch: pytest.MonkeyPatch) -> None:
    logits, target = make_inputs(2, 5, (7, 9, 31, 45), dtype, margin=margin)
    weight = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=dtype) + 0.1
    monkeypatch.setattr(memory_efficient, "SPARSE_MAX_FRACTION", 1.0 if second_pass == "pixels" else 0.0)
    calls = count_sweeps(monkeypatch)
    for w in (None, weight):
        want, used_pk = reference_ohem(logits, target, thresh, min_kept, w, align_corners)
        calls.clear()
        got = memory_efficient_ohem_cross_entropy(logits, target, thresh, min_kept, w, IGNORE, align_corners,
                                                  chunk_bytes=4000)
        assert_match(value_and_grad(got, logits), value_and_grad(want, logits), dtype)
        assert len(calls) == 1 + (used_pk and second_pass == "chunks") and want > 0


def test_ohem_cases_cover_both_thresholds() -> None:
    used = {reference_ohem(*make_inputs(2, 5, (7, 9, 31, 45), margin=m), t, k, None, False)[1]
            for t, k, m in OHEM_CASES}
    assert used == {True, False}


@pytest.mark.parametrize("sparse_fraction", [0.0, memory_efficient.SPARSE_MAX_FRACTION])
def test_ohem_second_pass_touches_only_extra_pixels(sparse_fraction: float,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Few extra pixels: by default they go pixel by pixel (no second sweep); forced to chunks, only the
    chunks holding them are swept again."""
    monkeypatch.setattr(memory_efficient, "SPARSE_MAX_FRACTION", sparse_fraction)
    logits = torch.zeros(2, 5, 8, 8, dtype=torch.float64).index_fill(1, torch.tensor([1]), 8.0)
    logits[0, :, :2] = 0.0  # one hard band at the top of image 0; everything else is confidently class 1
    logits.requires_grad_()
    target = torch.ones(2, 32, 32, dtype=torch.long)
    calls = count_sweeps(monkeypatch)
    want = reference_ohem(logits, target, 0.7, 400, None, False)
    assert want[1]  # fewer than min_kept pixels below thresh: p_k is the threshold
    got = memory_efficient_ohem_cross_entropy(logits, target, 0.7, 400, chunk_bytes=5 * 32 * 8 * 4)  # 4 rows/chunk
    assert_match(value_and_grad(got, logits), value_and_grad(want[0], logits), torch.float64)
    if sparse_fraction:
        assert len(calls) == 1
    else:
        assert len(calls) == 2 and 0 < calls[1] <= 2 < calls[0]


def test_ohem_empty_kept_set_gives_zero() -> None:
    logits, target = make_inputs(1, 3, (4, 4, 8, 8), ignored=1.0)
    target[0, 3, 5] = 1  # the single valid pixel has p >= thresh and is p_k itself: nothing is below
    with torch.no_grad():
        logits[:, 1] += 30.0
    loss = memory_efficient_ohem_cross_entropy(logits, target, 0.7, 10)
    loss.backward()
    assert loss.item() == 0.0 and reference_ohem(logits, target, 0.7, 10, None, False)[0].item() == 0.0
    assert logits.grad is not None and not logits.grad.any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_with_zero_gradient(reduction: str) -> None:
    logits, target = make_inputs(2, 4, (3, 5, 9, 10), ignored=1.0)
    for loss in (memory_efficient_cross_entropy(logits, target, reduction=reduction),
                 memory_efficient_ohem_cross_entropy(logits, target, 0.7, 5)):
        assert not loss.isnan().any() and not loss.any()
        loss.sum().backward()
        assert logits.grad is not None and not logits.grad.any()
        logits.grad = None


def test_gradcheck_float64() -> None:
    logits, target = make_inputs(1, 3, (3, 4, 7, 6))
    weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda x, r=reduction: memory_efficient_cross_entropy(x, target, weight, reduction=r, chunk_bytes=64),
            logits)
    assert torch.autograd.gradcheck(
        lambda x: memory_efficient_ohem_cross_entropy(x, target, 0.5, 10, weight, chunk_bytes=64), logits)


def test_scaled_and_repeated_backward() -> None:
    logits, target = make_inputs(2, 4, (5, 6, 11, 13))
    (want,) = torch.autograd.grad(cross_entropy_reference(logits, target, align_corners=True) * 0.4, logits)
    loss = memory_efficient_cross_entropy(logits, target, align_corners=True) * 0.4
    loss.backward(retain_graph=True)
    loss.backward()  # the saved gradient is handed out, never modified: a second backward adds the same
    torch.testing.assert_close(logits.grad, 2 * want)


def test_no_grad_forward_matches() -> None:
    logits, target = make_inputs(2, 4, (5, 6, 11, 13))
    with torch.no_grad():
        got = memory_efficient_ohem_cross_entropy(logits, target, 0.7, 30)
        want = reference_ohem(logits, target, 0.7, 30, None, False)[0]
    torch.testing.assert_close(got, want)
    assert not got.requires_grad


def test_bfloat16_autocast_computes_in_float32() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    images = torch.randn(2, 3, 9, 11)
    _, target = make_inputs(2, 6, (9, 11, 36, 44))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        assert logits.dtype == torch.bfloat16
        logits.retain_grad()
        loss = memory_efficient_cross_entropy(logits, target)
        ohem = memory_efficient_ohem_cross_entropy(logits, target, 0.7, 100)
    assert loss.dtype == ohem.dtype == torch.float32
    (loss + ohem).backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16 and logits.grad.isfinite().all()
    reference = cross_entropy_reference(logits.detach().float(), target)
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-5)  # exact given bf16 logits
    assert conv.weight.grad is not None and conv.weight.grad.isfinite().all()


def test_rejects_bad_shapes_and_reduction() -> None:
    with pytest.raises(ValueError, match="logits"):
        memory_efficient_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        memory_efficient_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                                       reduction="avg")


# ---- integration with seg_template.losses (the memory_efficient switch) ----


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("main", ["ce", "wce", "ohem"])
def test_segmentation_loss_parts_match_with_aux(main: str, align_corners: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out, target = make_inputs(2, 5, (7, 9, 31, 45), torch.float32, margin=3.0)
    aux = (0.5 * out.detach()).requires_grad_()
    weight = [0.5, 1.0, 2.0, 1.5, 0.7] if main == "wce" else None

    def make(efficient: bool) -> SegmentationLoss:
        if main == "ohem":
            crit = OhemCrossEntropy(0.7, 1000, IGNORE, weight, align_corners, memory_efficient=efficient)
        else:
            crit = CrossEntropy(IGNORE, weight, align_corners, memory_efficient=efficient)
        return SegmentationLoss(crit, aux_weight=0.4, memory_efficient=efficient)

    calls = count_sweeps(monkeypatch)
    results = []
    for loss_fn in (make(False), make(True)):
        calls.clear()
        parts = loss_fn.parts({"out": out, "aux": aux}, target)
        grads = torch.autograd.grad(parts["loss"], (out, aux))
        results.append((parts, grads, len(calls)))
    (eager, eager_grads, eager_sweeps), (efficient, efficient_grads, efficient_sweeps) = results
    assert eager_sweeps == 0 and efficient_sweeps >= 2  # the switch reaches both the main and the aux term
    assert set(efficient) == {"loss", f"loss/{'ohem' if main == 'ohem' else 'ce'}", "loss/aux"}
    for key in efficient:
        torch.testing.assert_close(efficient[key].detach(), eager[key].detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(efficient_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_memory_efficient_path_still_validates_labels() -> None:
    logits, target = make_inputs(1, 3, (4, 4, 8, 8))
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\]"):
        CrossEntropy(memory_efficient=True)(logits, target)


@pytest.mark.parametrize("name", ["ce", "wce", "ohem"])
def test_loss_configs_switch_both_terms(name: str, compose_tmp) -> None:  # noqa: ANN001
    for flag in (True, False):
        loss_fn = instantiate(compose_tmp(f"loss={name}", f"loss.memory_efficient={flag}").loss)
        assert loss_fn.main.memory_efficient is flag and loss_fn.aux.memory_efficient is flag


def test_training_step_same_with_and_without_memory_efficient() -> None:
    """Two SGD steps of a small stride-4 conv net: the same losses and weights with the switch on and off."""
    images = torch.randn(2, 3, 30, 38, generator=torch.Generator().manual_seed(4))
    _, target = make_inputs(2, 4, (8, 10, 30, 38))
    runs = []
    for efficient in (False, True):
        torch.manual_seed(5)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 4, 1))
        loss_fn = SegmentationLoss(OhemCrossEntropy(0.7, 500, memory_efficient=efficient),
                                   memory_efficient=efficient)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        losses = []
        for _ in range(2):
            optimizer.zero_grad()
            loss = loss_fn(net(images), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs.append((losses, torch.cat([p.detach().flatten() for p in net.parameters()])))
    (eager_losses, eager_params), (efficient_losses, efficient_params) = runs
    assert eager_losses[1] != eager_losses[0]  # the step changed the model
    assert efficient_losses == pytest.approx(eager_losses, rel=1e-5)
    torch.testing.assert_close(efficient_params, eager_params, rtol=1e-5, atol=1e-6)
