"""Poly schedule with linear warmup (values by hand) and the no-decay parameter groups."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from seg_template.errors import ConfigError
from seg_template.optim import param_groups, poly_factor, poly_warmup


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def test_poly_without_warmup_matches_formula() -> None:
    opt = _optimizer()
    sched = poly_warmup(opt, total_steps=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * (1 - s / 10) ** 0.9 for s in range(10)])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_linear_warmup_then_poly() -> None:
    # warmup 4 steps from ratio 0.1: factor at step s < 4 is poly(s) * (1 - (1 - s/4) * 0.9)
    values = [poly_factor(s, 20, power=1.0, warmup_steps=4, warmup_ratio=0.1) for s in range(6)]
    expected = [(1 - s / 20) * (1 - (1 - s / 4) * 0.9) for s in range(4)] + [1 - 4 / 20, 1 - 5 / 20]
    assert values == pytest.approx(expected)
    assert values[0] == pytest.approx(0.1)


def test_warmup_fraction_and_min_lr() -> None:
    opt = _optimizer(1.0)
    sched = poly_warmup(opt, total_steps=100, warmup_steps=0.1, warmup_ratio=0.5, min_lr_ratio=0.2)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5)
    assert lrs[5] == pytest.approx((1 - 0.05) ** 0.9 * 0.75)
    assert min(lrs) == pytest.approx(0.2)  # floor reached near the end
    assert max(lrs) == lrs[10]  # the peak is right after warmup


@pytest.mark.parametrize("kwargs, match", [
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": 5, "power": -1}, "power"),
    ({"total_steps": 5, "warmup_steps": -2}, "warmup_steps"),
    ({"total_steps": 5, "warmup_ratio": 0.0}, "warmup_ratio"),
    ({"total_steps": 5, "power": float("nan")}, r"scheduler\.power=nan: expected a finite number >= 0"),
    ({"total_steps": 5, "min_lr_ratio": float("inf")}, r"scheduler\.min_lr_ratio=inf: expected a finite number"),
    ({"total_steps": 5, "warmup_steps": True}, r"scheduler\.warmup_steps=true"),
])
def test_bad_schedule_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        poly_warmup(_optimizer(), **kwargs)


def test_norm_and_bias_get_no_weight_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    groups = param_groups(model)
    decay, no_decay = groups
    assert "weight_decay" not in decay  # keeps the optimiser's default
    assert no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


@pytest.mark.parametrize(("exempt", "decayed"), [
    ((), {"conv0.weight", "bn.weight", "bn.bias", "conv2.weight", "conv2.bias"}),  # HRNet, torchvision, MMSeg R101
    (("norm",), {"conv0.weight", "conv2.weight", "conv2.bias"}),  # SegFormer (MMSeg's norm decay_mult 0)
    (("bias",), {"conv0.weight", "bn.weight", "bn.bias", "conv2.weight"}),  # a norm layer's bias is "norm"
])
def test_no_weight_decay_picks_the_exempt_kinds(exempt: tuple, decayed: set) -> None:
    model = nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, 4, 3, bias=False), bn=nn.BatchNorm2d(4),
                                      conv2=nn.Conv2d(4, 2, 1)))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, exempt)
    assert {names[id(p)] for p in groups[0]["params"]} == decayed
    assert len(groups) == (2 if exempt else 1)  # nothing exempt: one group, the optimiser's weight decay
    if exempt:
        assert groups[1]["weight_decay"] == 0.0
        assert {names[id(p)] for p in groups[1]["params"]} == set(names.values()) - decayed


@pytest.mark.parametrize("bad", ["norm", ["norms"], [1], ["bias", None]])
def test_a_bad_no_weight_decay_names_the_key(bad) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.no_weight_decay=.*norm / bias"):
        param_groups(nn.Conv2d(1, 1, 1), bad)


def test_min_lr_offset_is_mmsegs_poly_with_eta_min() -> None:
    """MMSeg's PolyLR(eta_min): eta_min + (lr - eta_min) * (1 - t / T) ** power; floor: max(poly, min)."""
    for step in (0, 5, 50, 99, 100):
        poly = (1 - step / 100) ** 0.9
        assert poly_factor(step, 100, 0.9, min_lr_ratio=0.01, min_lr_mode="offset") == pytest.approx(0.01 + 0.99 * poly)
        assert poly_factor(step, 100, 0.9, min_lr_ratio=0.01) == pytest.approx(max(poly, 0.01))
    with pytest.raises(ConfigError, match=r"scheduler\.min_lr_mode='linear': choose from floor, offset"):
        poly_warmup(_optimizer(), 10, min_lr_mode="linear")
