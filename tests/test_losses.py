"""Adaptive Mining Loss (RemoteTrimmer sec. 2.3), distillation and the loss registry."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rtdeploy.errors import ConfigError, RegistryError
from rtdeploy.train.losses import LOSSES, AdaptiveMiningLoss, Distilled, create_loss

# Two samples, three classes; logits = log(p) so that softmax(z) = p exactly.
#   sample 1 (easy): p = (0.5, 0.25, 0.25), y = 0: d = (0.5 + 0.25 + 0.25) / 3 = 1/3
#   sample 2 (hard): p = (0.8, 0.1, 0.1),  y = 2: d = (0.8 + 0.1 + 0.9) / 3 = 0.6
#   exp(d + d^2): exp(4/9) = 1.5596235, exp(0.96) = 2.6116965; mean = 2.0856600
#   CE: (-ln 0.5 - ln 0.1) / 2 = (0.6931472 + 2.3025851) / 2 = 1.4978661
#   L = 1 * 2.0856600 + 1 * 1.4978661 = 3.5835261
P = torch.tensor([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]], dtype=torch.float64)
Y = torch.tensor([0, 2])
EXPECTED_TERM, EXPECTED_CE = 2.0856600, 1.4978661


def test_aml_matches_hand_computed_batch():
    z = P.log()
    assert AdaptiveMiningLoss()(z, Y).item() == pytest.approx(EXPECTED_TERM + EXPECTED_CE, abs=1e-6)
    assert AdaptiveMiningLoss(r1=2.0, r2=0.5)(z, Y).item() == pytest.approx(2 * EXPECTED_TERM + 0.5 * EXPECTED_CE, abs=1e-6)
    assert AdaptiveMiningLoss.distance(z, Y).tolist() == pytest.approx([1 / 3, 0.6])


def test_distance_is_two_times_missing_probability_over_classes():
    z = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(1))
    p_true = z.softmax(1)[torch.arange(50), y]
    assert torch.allclose(AdaptiveMiningLoss.distance(z, y), 2 * (1 - p_true) / 7)


def test_aml_is_vectorised_and_equals_per_sample_formula():
    z = torch.randn(64, 5, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(3))
    per_sample = []
    for zi, yi in zip(z, y):  # the formula, one sample at a time
        d = (zi.softmax(0) - F.one_hot(yi, 5).float()).abs().mean()
        per_sample.append(math.exp(d + d * d))
    expected = sum(per_sample) / len(per_sample) + F.cross_entropy(z, y).item()
    assert AdaptiveMiningLoss()(z, y).item() == pytest.approx(expected, rel=1e-5)


def test_hard_sample_gets_more_gradient_than_under_ce():
    z = P.log().requires_grad_(True)
    (g_aml,) = torch.autograd.grad(AdaptiveMiningLoss()(z, Y), z)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(z, Y), z)
    # hard sample (p_true = 0.1): AML pushes its logits harder than CE does: 0.836 vs 0.604
    assert g_aml[1].norm() > 1.3 * g_ce[1].norm()
    # and in the same direction (the extra term also raises the true-class logit)
    assert torch.dot(g_aml[1], g_ce[1]) > 0 and g_aml[1, 2] < g_ce[1, 2] < 0


def test_extra_term_gradient_is_ce_gradient_times_closed_form_factor():
    # Why AML ~ CE on 21 classes (benchmarks/results/ablation.md): on every logit the exp term's
    # gradient is CE's times exp(d + d^2)(1 + 2d)(2/C)p_true. Relative to CE it is largest for
    # confident samples and near zero for the hardest ones, and never above ~2.4/C.
    c = 21
    p_true = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    rest = ((1 - p_true) / (c - 1)).unsqueeze(1).expand(-1, c - 1)
    z = torch.cat([p_true.unsqueeze(1), rest], 1).log().requires_grad_(True)
    y = torch.zeros(5, dtype=torch.long)
    (g_term,) = torch.autograd.grad(AdaptiveMiningLoss(r1=1.0, r2=0.0)(z, y) * 5, z)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    ratio = g_term[:, 0] / g_ce[:, 0]
    d = 2 * (1 - p_true) / c
    assert torch.allclose(ratio, torch.exp(d + d * d) * (1 + 2 * d) * (2 / c) * p_true)
    assert torch.allclose(g_term, g_ce * ratio.unsqueeze(1))  # same direction on every logit
    assert (ratio.diff() > 0).all() and ratio[0] < 0.002 and ratio[-1] < 2.4 / c


def test_label_smoothing_reaches_the_cross_entropy_terms():
    z = P.log()
    smoothed = F.cross_entropy(z, Y, label_smoothing=0.1).item()
    assert create_loss("ce", label_smoothing=0.1)(z, Y).item() == pytest.approx(smoothed)
    assert create_loss("aml", label_smoothing=0.1)(z, Y).item() == pytest.approx(EXPECTED_TERM + smoothed, abs=1e-6)
    assert smoothed != pytest.approx(EXPECTED_CE)


def test_extra_term_grows_as_true_probability_falls():
    p_true = torch.linspace(0.95, 0.05, 10, dtype=torch.float64)
    rest = (1 - p_true) / 2
    z = torch.stack([p_true, rest, rest], 1).log()
    d = AdaptiveMiningLoss.distance(z, torch.zeros(10, dtype=torch.long))
    term = torch.exp(d + d * d)
    assert (term.diff() > 0).all()


def test_distilled_is_weighted_sum_and_zero_kd_for_identical_logits():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(4))
    t = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(6))
    base = create_loss("ce")
    loss = Distilled(base, temperature=2.0, weight=0.25)
    kd = F.kl_div(F.log_softmax(z / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    assert loss(z, y, t).item() == pytest.approx(0.75 * F.cross_entropy(z, y).item() + 0.25 * kd.item(), rel=1e-5)
    assert Distilled(base, 2.0, 1.0)(z, y, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        loss(z, y)  # no teacher logits


def test_registry_and_settings_name_the_flag():
    assert {"ce", "aml"} <= set(LOSSES)
    with pytest.raises(RegistryError, match="choose one of"):
        create_loss("focal")
    with pytest.raises(ConfigError, match="--r1"):
        AdaptiveMiningLoss(r1=-1)
    with pytest.raises(ConfigError, match="--kd-weight"):
        Distilled(create_loss("ce"), 4.0, 0.0)
