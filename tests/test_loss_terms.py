"""Dice, Focal and sums of terms: parity with independent references (segmentation_models_pytorch's Dice, the
focal formula written out here, PyTorch's cross-entropy, the sort-based OHEM threshold), gradcheck, the
guarantees every term keeps, and the composition (TermSum, the aux term, the loss configs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from seg_template.build import check_loss_settings
from seg_template.errors import ConfigError, DataError
from seg_template.losses import (
    TERMS,
    CrossEntropy,
    DiceLoss,
    FocalLoss,
    LovaszSoftmax,
    OhemCrossEntropy,
    SegmentationLoss,
    TermSum,
)
from seg_template.losses.reference import ohem_threshold

IGNORE = 255
WEIGHT = [0.5, 2.0, 1.0, 0.0, 3.0]


def make_batch(n: int = 2, c: int = 5, low: tuple[int, int] = (5, 6), size: tuple[int, int] = (11, 13),
               ignored: float = 0.2, scale: float = 2.0, seed: int = 0, dtype: torch.dtype = torch.float64,
               absent: int | None = None) -> tuple[Tensor, Tensor]:
    """Logits [n, c, *low] (leaf) and labels [n, *size] with ignored pixels; ``absent``: a class no label has."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, c, *low, generator=gen, dtype=dtype)).requires_grad_()
    target = torch.randint(0, c, (n, *size), generator=gen)
    if absent is not None:
        target[target == absent] = (absent + 1) % c
    target[torch.rand(target.shape, generator=gen) < ignored] = IGNORE
    return logits, target


def grad_of(loss: Tensor, logits: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


def upsampled(logits: Tensor, target: Tensor) -> Tensor:
    return F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- Dice vs smp

def smp_dice_per_class(logits: Tensor, target: Tensor, smooth: float) -> Tensor:
    """smp's DiceLoss restricted to one class at a time (its ``classes=[c]``): ``[C]``, 0 for absent classes."""
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the Dice reference (pip install "
                              "segmentation-models-pytorch; test-only)")
    up = upsampled(logits, target)
    return torch.stack([smp.losses.DiceLoss("multiclass", classes=[c], smooth=smooth, ignore_index=IGNORE)(up, target)
                        for c in range(logits.shape[1])])


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_matches_smp_per_class_over_present_classes(memory_efficient, weighted, smooth) -> None:
    logits, target = make_batch(absent=2)
    weight = torch.tensor(WEIGHT, dtype=torch.float64) if weighted else None
    ours = DiceLoss(smooth, IGNORE, weight, memory_efficient=memory_efficient)(logits, target)
    per_class = smp_dice_per_class(logits, target, smooth)
    present = torch.stack([(target == c).any() for c in range(5)]).double()
    share = present * (weight if weighted else 1)
    reference = (per_class * share).sum() / share.sum()
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(ours, logits), grad_of(reference, logits), rtol=1e-10, atol=1e-13)


def test_dice_equals_smp_times_the_present_share() -> None:
    """smp averages over all C classes with the absent ones at 0; ours over the present ones."""
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the Dice reference (test-only)")
    logits, target = make_batch(absent=2)
    ours = DiceLoss(smooth=0.5)(logits, target)
    theirs = smp.losses.DiceLoss("multiclass", smooth=0.5, ignore_index=IGNORE)(upsampled(logits, target), target)
    torch.testing.assert_close(ours * 4 / 5, theirs, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- Focal vs its formula

def focal_reference(logits: Tensor, target: Tensor, gamma: float, weight: Tensor | None = None,
                    thresh: float | None = None, min_kept: int = 0) -> Tensor:
    """The softmax focal loss written out: ``-w_t (1 - p)^gamma log p``; sum / sum(w_t) over the valid pixels,
    or, with ``thresh``, the plain mean over the pixels with p below the sort-based OHEM threshold."""
    up = upsampled(logits, target)
    valid = target != IGNORE
    safe = torch.where(valid, target, 0)
    log_p = torch.log_softmax(up, 1).gather(1, safe[:, None])[:, 0]
    w = torch.ones_like(log_p) if weight is None else weight.to(log_p)[safe]
    focal = -w * (1 - log_p.exp()) ** gamma * log_p
    if thresh is None:
        return (focal * valid).sum() / (w * valid).sum()
    p = torch.softmax(up.detach(), 1).gather(1, safe[:, None])[:, 0]  # as ohem_threshold computes p (ties)
    kept = valid & (p < ohem_threshold(logits.detach(), target, thresh, min_kept, IGNORE))
    return focal[kept].mean()


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_its_formula(memory_efficient, weighted, gamma) -> None:
    logits, target = make_batch()
    weight = torch.tensor(WEIGHT, dtype=torch.float64) if weighted else None
    ours = FocalLoss(gamma, IGNORE, weight, memory_efficient=memory_efficient)(logits, target)
    reference = focal_reference(logits, target, gamma, weight)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(ours, logits), grad_of(reference, logits), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
def test_focal_with_gamma_zero_is_torch_cross_entropy(memory_efficient) -> None:
    logits, target = make_batch()
    weight = torch.tensor(WEIGHT, dtype=torch.float64)
    ours = FocalLoss(0.0, IGNORE, weight, memory_efficient=memory_efficient)(logits, target)
    torch_ce = F.cross_entropy(upsampled(logits, target), target, weight, ignore_index=IGNORE)
    torch.testing.assert_close(ours, torch_ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(ours, logits), grad_of(torch_ce, logits), rtol=1e-10, atol=1e-13)


# thresh 0.7 with a small min_kept: the kept set is "p < thresh"; thresh 0.05 with a large min_kept: p_k decides
# and the memory-efficient kernel's second pass adds the pixels between thresh and p_k
@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 20), (0.05, 200)])
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
def test_focal_over_ohem_pixels_matches_its_formula(memory_efficient, thresh, min_kept) -> None:
    logits, target = make_batch(scale=3.0)
    weight = torch.tensor(WEIGHT, dtype=torch.float64)
    ours = FocalLoss(2.0, IGNORE, weight, memory_efficient=memory_efficient, thresh=thresh,
                     min_kept=min_kept)(logits, target)
    reference = focal_reference(logits, target, 2.0, weight, thresh, min_kept)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(ours, logits), grad_of(reference, logits), rtol=1e-10, atol=1e-13)
    gamma_zero = FocalLoss(0.0, IGNORE, weight, memory_efficient=memory_efficient, thresh=thresh,
                           min_kept=min_kept)(logits, target)
    torch.testing.assert_close(gamma_zero, OhemCrossEntropy(thresh, min_kept, IGNORE, weight)(logits, target))


# ----------------------------------------------------------------------------- gradcheck

GRADCHECK = {
    "dice": lambda me: DiceLoss(1.0, IGNORE, WEIGHT, memory_efficient=me),
    "dice smooth 0": lambda me: DiceLoss(0.0, IGNORE, None, memory_efficient=me),
    "focal": lambda me: FocalLoss(2.0, IGNORE, WEIGHT, memory_efficient=me),
    "focal gamma 0.5": lambda me: FocalLoss(0.5, IGNORE, None, memory_efficient=me),
    "focal ohem": lambda me: FocalLoss(2.0, IGNORE, WEIGHT, memory_efficient=me, thresh=0.05, min_kept=40),
}


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])
@pytest.mark.parametrize("term", list(GRADCHECK))
def test_gradcheck_float64(term, memory_efficient) -> None:
    logits, target = make_batch(n=2, c=5, low=(3, 4), size=(6, 8))
    loss = GRADCHECK[term](memory_efficient)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits.detach().requires_grad_(),))


# ----------------------------------------------------------------------------- the guarantees, every term

ALL = {
    "ce": lambda me: CrossEntropy(IGNORE, WEIGHT, memory_efficient=me),
    "ohem": lambda me: OhemCrossEntropy(0.7, 50, IGNORE, WEIGHT, memory_efficient=me),
    "dice": lambda me: DiceLoss(1.0, IGNORE, WEIGHT, memory_efficient=me),
    "focal": lambda me: FocalLoss(2.0, IGNORE, WEIGHT, memory_efficient=me),
    "focal ohem": lambda me: FocalLoss(2.0, IGNORE, WEIGHT, memory_efficient=me, thresh=0.7, min_kept=50),
    "lovasz": lambda me: LovaszSoftmax(IGNORE, WEIGHT, memory_efficient=me),
    "ce + dice": lambda me: TermSum([{"term": "ce", "weight": 1.0}, {"term": "dice", "weight": 0.5}],
                                    IGNORE, WEIGHT, False, me),
}
MODES = pytest.mark.parametrize("memory_efficient", [False, True], ids=["eager", "memory_efficient"])


@MODES
@pytest.mark.parametrize("term", list(ALL))
def test_every_pixel_ignored_gives_zero_with_a_zero_gradient(term, memory_efficient) -> None:
    logits, target = make_batch(ignored=1.0)
    loss = ALL[term](memory_efficient)(logits, target)
    assert loss.item() == 0.0
    grad = grad_of(loss, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


@MODES
@pytest.mark.parametrize("term", list(ALL))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nonfinite_logit_gives_nan(term, memory_efficient, bad) -> None:
    logits, target = make_batch()
    with torch.no_grad():
        logits[1, 2, 0, 3] = bad
    assert ALL[term](memory_efficient)(logits, target).isnan()


@MODES
@pytest.mark.parametrize("term", list(ALL))
def test_an_out_of_range_label_is_a_data_error_before_any_kernel(term, memory_efficient, monkeypatch) -> None:
    logits, target = make_batch()
    target[0, 3, 3] = 9

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a kernel ran before the labels were checked")

    monkeypatch.setattr(F, "interpolate", fail)
    monkeypatch.setattr(torch, "softmax", fail)
    with pytest.raises(DataError, match=r"labels \[9\] outside \[0, 5\)"):
        ALL[term](memory_efficient)(logits, target)


@pytest.mark.parametrize("term", list(ALL))
def test_memory_efficient_equals_eager(term) -> None:
    logits, target = make_batch(n=3, c=5, low=(9, 7), size=(33, 25), scale=3.0, seed=3)
    eager = ALL[term](False)(logits, target)
    efficient = ALL[term](True)(logits, target)
    torch.testing.assert_close(efficient, eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(efficient, logits), grad_of(eager, logits), rtol=1e-10, atol=1e-13)


@MODES
@pytest.mark.parametrize("term", list(ALL))
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast_is_computed_in_float32(term, memory_efficient, half) -> None:
    logits, target = make_batch(dtype=torch.float32)
    reference = ALL[term](memory_efficient)(logits.detach().to(half).float(), target)
    low = logits.detach().to(half).requires_grad_()
    with torch.autocast("cpu", dtype=half):
        loss = ALL[term](memory_efficient)(low, target)
    assert loss.dtype == torch.float32 and loss.isfinite()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert grad_of(loss, low).dtype == half


def test_memory_efficient_dice_and_focal_never_hold_the_full_resolution_batch(monkeypatch) -> None:
    """With chunks of 1/8 of the batch's full-resolution logits, no upsampled block is larger than a chunk."""
    from seg_template.losses import memory_efficient
    from seg_template.losses.resize import ChunkedBilinear

    logits, target = make_batch(n=2, c=5, low=(16, 16), size=(128, 128), dtype=torch.float32)
    full = logits.shape[0] * logits.shape[1] * target.shape[1] * target.shape[2]
    monkeypatch.setattr(memory_efficient, "default_chunk_bytes", lambda x: full * x.element_size() // 8)
    sizes: list[int] = []
    upsample = ChunkedBilinear.upsample

    def recorded(self, *args):  # noqa: ANN001, ANN002, ANN202
        out = upsample(self, *args)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(ChunkedBilinear, "upsample", recorded)
    for loss in (DiceLoss(memory_efficient=True), FocalLoss(memory_efficient=True),
                 FocalLoss(memory_efficient=True, thresh=0.7, min_kept=100)):
        sizes.clear()
        grad_of(loss(logits, target), logits)
        assert sizes and max(sizes) <= full / 8


# ----------------------------------------------------------------------------- TermSum and the aux term

def test_a_sum_is_the_weighted_sum_of_its_terms_each_reported() -> None:
    logits, target = make_batch()
    total = TermSum([{"term": "ce", "weight": 1.0}, {"term": "dice", "weight": 0.5, "smooth": 0.0},
                     {"term": "focal", "weight": 2.0, "gamma": 1.0, "name": "focal_g1"}], IGNORE, WEIGHT, False)
    parts = total.parts(logits, target)
    assert list(parts) == ["ce", "dice", "focal_g1"]
    torch.testing.assert_close(parts["ce"], CrossEntropy(IGNORE, WEIGHT)(logits, target))
    torch.testing.assert_close(parts["dice"], DiceLoss(0.0, IGNORE, WEIGHT)(logits, target))
    torch.testing.assert_close(parts["focal_g1"], FocalLoss(1.0, IGNORE, WEIGHT)(logits, target))
    expected = parts["ce"] + 0.5 * parts["dice"] + 2.0 * parts["focal_g1"]
    torch.testing.assert_close(total(logits, target), expected)
    torch.testing.assert_close(grad_of(total(logits, target), logits), grad_of(expected, logits))


def test_a_terms_own_class_weights_override_the_shared_ones() -> None:
    logits, target = make_batch()
    total = TermSum([{"term": "ce", "class_weights": [1, 1, 1, 1, 5]}], IGNORE, WEIGHT)
    torch.testing.assert_close(total(logits, target), CrossEntropy(IGNORE, [1, 1, 1, 1, 5])(logits, target))


def test_a_built_term_can_be_an_entry() -> None:
    logits, target = make_batch()
    total = TermSum([{"term": LovaszSoftmax(IGNORE, per_image=True), "weight": 0.3}])
    assert list(total.parts(logits, target)) == ["lovasz"]
    torch.testing.assert_close(total(logits, target), 0.3 * LovaszSoftmax(IGNORE, per_image=True)(logits, target))


@pytest.mark.parametrize(("terms", "match"), [
    ([], r"loss\.main\.terms=\[\]: a list of"),
    ("ce", r"loss\.main\.terms='ce': a list of"),
    ([{"weight": 1.0}], r"loss\.main\.terms\[0\]=.*each entry is \{term"),
    ([{"term": "dcie"}], r"loss\.main\.terms\[0\]\.term='dcie' is no loss term: one of ce, ohem, dice, focal, lovasz"),
    ([{"term": "dice", "smoth": 1.0}], r"loss\.main\.terms\[0\]\.smoth: dice has no option 'smoth'; its options: "
                                       r"eps, smooth, class_weights"),
    ([{"term": "ce"}, {"term": "ce"}], r"loss\.main\.terms\[1\]: a second term named 'ce'"),
    ([{"term": "ce", "name": "aux"}], r"'aux' is the auxiliary head's term"),
    ([{"term": "ce", "weight": -1.0}], r"loss\.main\.terms\[0\]\.weight"),
    ([{"term": "ce", "weight": "heavy"}], r"loss\.main\.terms\[0\]\.weight"),
    ([{"term": "focal", "gamma": -2.0}], r"loss\.main\.terms\[0\]\.gamma=-2\.0: expected a finite number in \[0, 10\]"),
])
def test_a_bad_sum_names_the_entry_and_the_fix(terms, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TermSum(terms, IGNORE)


def test_class_weights_in_an_entry_are_written_class_weights() -> None:
    with pytest.raises(ConfigError, match=r"loss\.aux\.weight: a term's class weights are written class_weights"):
        SegmentationLoss(CrossEntropy(), aux={"term": "ce", "weight": [1, 2]})


@pytest.mark.parametrize("aux", ["dice", {"term": "focal", "gamma": 1.0}, LovaszSoftmax(IGNORE)])
def test_the_aux_term_is_configurable(aux) -> None:
    logits, target = make_batch()
    aux_logits = (0.5 * logits.detach()).requires_grad_()
    loss = SegmentationLoss(CrossEntropy(IGNORE, WEIGHT), aux_weight=0.4, aux=aux)
    parts = loss.parts({"out": logits, "aux": aux_logits}, target)
    expected = {"dice": lambda: DiceLoss(1.0, IGNORE, WEIGHT), "focal": lambda: FocalLoss(1.0, IGNORE, WEIGHT),
                "lovasz": lambda: LovaszSoftmax(IGNORE)}[type(loss.aux).name]()
    torch.testing.assert_close(parts["loss/aux"], expected(aux_logits, target))
    torch.testing.assert_close(parts["loss"], parts["loss/ce"] + 0.4 * parts["loss/aux"])


def test_a_sum_as_main_logs_each_term_and_its_aux() -> None:
    logits, target = make_batch()
    main = TermSum([{"term": "ce"}, {"term": "lovasz", "weight": 0.5}], IGNORE, None, False)
    parts = SegmentationLoss(main).parts({"out": logits, "aux": logits.detach()}, target)
    assert set(parts) == {"loss", "loss/ce", "loss/lovasz", "loss/aux"}
    torch.testing.assert_close(parts["loss"], parts["loss/ce"] + 0.5 * parts["loss/lovasz"] + 0.4 * parts["loss/aux"])


def test_a_term_of_a_sum_that_ignores_another_label_is_refused_at_build() -> None:
    loss = SegmentationLoss(TermSum([{"term": "ce"}, {"term": DiceLoss(ignore_index=0)}],
                                    IGNORE, None, False))
    with pytest.raises(ConfigError, match=r"loss\.main\.terms\[1\]\.ignore_index=0 but data\.ignore_index=255"):
        check_loss_settings(loss, align_corners=False, ignore_index=IGNORE)


def test_every_named_term_is_logged_under_its_name() -> None:
    assert {name: cls.name for name, cls in TERMS.items()} == {name: name for name in TERMS}


def test_ohem_refuses_a_null_thresh() -> None:
    with pytest.raises(ConfigError, match=r"loss\.main\.thresh=null"):
        OhemCrossEntropy(thresh=None)


def test_named_ohem_terms_take_the_shared_min_kept() -> None:
    """An aux or sum entry that selects pixels uses the config's budget (data.ohem_min_kept), not the class
    default of 100000, which would make it plain CE on a small batch."""
    total = TermSum([{"term": "ohem"}, {"term": "focal", "thresh": 0.7, "name": "hard_focal"},
                     {"term": "ohem", "min_kept": 7, "name": "own"}], IGNORE, None, False, min_kept=50)
    assert [getattr(term, "min_kept", None) for term in total.terms] == [50, 50, 7]
    assert SegmentationLoss(CrossEntropy(), aux="ohem", min_kept=40).aux.min_kept == 40
    assert SegmentationLoss(OhemCrossEntropy(min_kept=30), aux="ohem").aux.min_kept == 30


@pytest.mark.parametrize("loss", ["ce", "ohem", "wce", "dice", "focal", "lovasz", "ce_dice"])
def test_every_loss_config_builds_and_names_its_parts(loss, compose_tmp) -> None:  # noqa: ANN001
    from hydra.utils import instantiate

    cfg = compose_tmp(f"loss={loss}", "loss.aux=ohem")
    built = instantiate(cfg.loss)
    logits, target = make_batch(c=6, dtype=torch.float32)
    parts = built.parts({"out": logits, "aux": logits.detach()}, target)
    names = {"ce_dice": ["ce", "dice"], "wce": ["ce"]}.get(loss, [loss])
    assert set(parts) == {"loss", *(f"loss/{n}" for n in names), "loss/aux"}
    assert built.aux.min_kept == cfg.data.ohem_min_kept
    check_loss_settings(built, cfg.model.align_corners, cfg.data.ignore_index)


def test_a_node_given_for_the_aux_term_on_the_command_line_is_taken_whole(compose_tmp) -> None:  # noqa: ANN001
    """ce.yaml writes ``aux: ce``; ``loss.aux={term: focal, gamma: 1.0}`` is the term's business, not two
    unknown options (the loss names a mistake in it at its own key)."""
    from hydra.utils import instantiate

    from seg_template.options import check_options

    cfg = compose_tmp("loss.aux={term: focal, gamma: 1.0}")
    check_options(cfg)
    assert instantiate(cfg.loss).aux.gamma == 1.0
    from hydra.errors import InstantiationException  # the app shows the ConfigError inside as one block

    with pytest.raises(InstantiationException, match=r"loss\.aux\.gama: focal has no option 'gama'"):
        instantiate(compose_tmp("loss.aux={term: focal, gama: 1.0}").loss)
    with pytest.raises(ConfigError, match=r"loss\.weight: .*SegmentationLoss takes no argument 'weight'"):
        check_options(compose_tmp("+loss.weight={a: 1}"))


@pytest.mark.parametrize(("entries", "match"), [
    ([{"term": "ce", "weight": 0}, {"term": "dice", "weight": 0.0}], r"every weight is 0 \(ce, dice\)"),
    ([{"term": "ce", "name": "a/b"}], r"loss\.main\.terms\[0\]\.name='a/b': a term's name is a metric name"),
    ([{"term": "ce", "name": "AUX"}], r"name='AUX'"),
    ([{"term": "ce", "name": ""}], r"name=''"),
    ([{"term": "ce", "name": 0}], r"name=0"),
    ([{"term": "ohem", "thresh": None}], r"loss\.main\.terms\[0\]\.thresh=null"),
])
def test_a_sum_that_would_train_silently_wrong_is_refused(entries, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TermSum(entries, IGNORE)


@pytest.mark.parametrize("terms", ["[{term:focal,weight:1}]",
                                   "[{term:ce},{term:dice,weight:0.5},{term:lovasz,weight:0.5}]"])
def test_a_sum_of_any_length_passes_the_option_check(terms, compose_tmp) -> None:  # noqa: ANN001
    """The files write a two-term list; a list of mappings is a collection, not a pair of fixed length."""
    from hydra.utils import instantiate

    from seg_template.options import check_options

    cfg = compose_tmp("loss=ce_dice", f"loss.main.terms={terms}")
    check_options(cfg)
    assert len(instantiate(cfg.loss).main.terms) == terms.count("term:")


@pytest.mark.parametrize("override", ["loss.main.terms.1.term={_target_:seg_template.losses.DiceLoss}",
                                      "loss.aux={_target_:seg_template.losses.DiceLoss}"])
def test_a_target_given_only_on_the_command_line_is_refused_before_training(override, compose_tmp) -> None:  # noqa: ANN001
    """Its checkpoints' recipe would be refused by eval, predict and resume: refused before the run instead."""
    from seg_template.train import train

    cfg = compose_tmp("loss=ce_dice", override)
    with pytest.raises(ConfigError, match=r"would call seg_template\.losses\.DiceLoss \(at loss\.(main\.terms\[1\]"
                                          r"\.term|aux)\._target_\), which no config file writes at that key.*"
                                          r"eval\.py, predict\.py and a resume would refuse"):
        train(cfg)


@pytest.mark.parametrize(("override", "key"), [
    ("+loss.main.terms.1.class_weights=[3.0]", r"loss\.main\.terms\[1\]\.class_weights"),
    ("+loss.main.terms.0.class_weights=[1,1,1,1,1,-1]", r"loss\.main\.terms\[0\]\.class_weights"),
    ("+loss.main.terms.0.class_weights=/no/such/weights.npy", r"loss\.main\.terms\[0\]\.class_weights"),
])
def test_an_entrys_own_class_weights_are_read_at_start_naming_the_entry(override, key, compose_tmp) -> None:  # noqa: ANN001
    """Before the model is built (the count needs data.num_classes), at the entry's key, not data.class_weights."""
    from seg_template.errors import MissingFileError
    from seg_template.options import check_options

    with pytest.raises((ConfigError, MissingFileError), match=rf"\(set by {key}\)|set by {key};"):
        check_options(compose_tmp("loss=ce_dice", override))


def test_a_node_is_taken_whole_only_where_the_files_write_a_value() -> None:
    """Where the files write a mapping (a node of options), its keys stay options of their own."""
    from omegaconf import OmegaConf

    from seg_template.option_keys import _taken_whole
    from seg_template.option_schema import Seen

    node = OmegaConf.create({"term": "focal"})
    target = "seg_template.losses.SegmentationLoss"
    assert _taken_whole(node, Seen(kinds={"str"}), target, "aux")
    assert not _taken_whole(node, Seen(kinds={"mapping"}), target, "aux")
    assert not _taken_whole(node, Seen(kinds={"str"}), target, "no_such_argument")
    assert not _taken_whole(OmegaConf.create({"_target_": "x"}), Seen(kinds={"str"}), target, "aux")
