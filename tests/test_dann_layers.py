"""Gradient reversal, the lambda schedule and the domain-adversarial loss."""

from __future__ import annotations

import math

import pytest
import torch

from bloodsmear.models.dann import (
    DomainAdversarialLoss, DomainClassifier, GradientReverseLayer, dann_lambda, grad_reverse,
)


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0, 2.5])
def test_reversal_gradient_is_exactly_minus_lambda_times_incoming(lam):
    torch.manual_seed(0)
    x = torch.randn(4, 7, requires_grad=True)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)  # identity forward
    g = torch.randn(4, 7)
    y.backward(g)
    assert torch.equal(x.grad, g.neg() * lam)


def test_reverse_layer_coefficient_is_settable():
    layer = GradientReverseLayer(0.5)
    x = torch.ones(3, requires_grad=True)
    layer.coeff = 2.0
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))


def test_lambda_schedule_values():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(1.0) > 0.9999
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(-1.0) == 0.0 and dann_lambda(3.0) == dann_lambda(1.0)  # clipped progress
    vals = [dann_lambda(p / 10) for p in range(11)]
    assert vals == sorted(vals)
    assert dann_lambda(1.0, max_value=0.3) == pytest.approx(0.3 * dann_lambda(1.0))


def test_domain_loss_reverses_only_the_feature_gradient():
    torch.manual_seed(0)
    head = DomainClassifier(5, hidden=8, n_hidden=1)
    loss_fn = DomainAdversarialLoss(head, coeff=1.0)
    f_s = torch.randn(6, 5, requires_grad=True)
    f_t = torch.randn(6, 5) + 2.0
    f_t.requires_grad_(True)
    head.eval()
    res = loss_fn(f_s, f_t)
    assert res.n == 12 and 0.0 <= res.accuracy <= 1.0
    res.loss.backward()
    g_rev = f_s.grad.clone()
    # the same loss without reversal gives the opposite feature gradient
    f_s2 = f_s.detach().clone().requires_grad_(True)
    logits = head(torch.cat([f_s2, f_t.detach()]))
    lab = torch.cat([torch.ones(6), torch.zeros(6)])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, lab, reduction="none")
    (0.5 * (per[:6].mean() + per[6:].mean())).backward()
    assert torch.allclose(g_rev, -f_s2.grad, atol=1e-7)
