"""Domain-adversarial training (Ganin & Lempitsky 2015), after tllib's `alignment/dann.py`.

- `GradientReversal`: identity forward, gradient x -lambda backward (an autograd Function).
- `GradientReverseLayer`: the module form; its coefficient is set per step by the objective.
- `dann_lambda(p)`: the paper's schedule 2 / (1 + exp(-gamma p)) - 1 over training progress p in [0, 1].
- `DomainClassifier`: G_d, a small MLP from features to one logit (source = 1, target = 0).
- `DomainAdversarialLoss`: GRL -> G_d -> binary cross-entropy on source and target features,
  and the domain accuracy of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class GradientReversal(torch.autograd.Function):
    """y = x forward; dL/dx = -coeff * dL/dy backward (no gradient for `coeff`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, coeff)


class GradientReverseLayer(nn.Module):
    """Module form of the reversal; `coeff` (lambda) is an attribute the training objective updates."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff:g}"


def dann_lambda(progress: float, *, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """Ganin & Lempitsky's schedule: max_value * (2 / (1 + exp(-gamma * p)) - 1), p clipped to [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(max_value * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0))


class DomainClassifier(nn.Module):
    """G_d: features -> hidden (ReLU, BN, dropout) x n_hidden -> one domain logit (source = 1)."""

    def __init__(self, in_features: int, hidden: int = 256, *, n_hidden: int = 2, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(n_hidden):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class DomainLossResult:
    loss: torch.Tensor
    accuracy: float  # fraction of source + target images whose domain G_d gets right
    n: int


class DomainAdversarialLoss(nn.Module):
    """GRL -> G_d -> BCE(source -> 1, target -> 0), averaged over both domains (tllib's DANN loss).

    Call with the features of a source batch and a target batch; `coeff` is the reversal's lambda.
    """

    def __init__(self, domain_classifier: nn.Module, coeff: float = 1.0):
        super().__init__()
        self.grl = GradientReverseLayer(coeff)
        self.domain_classifier = domain_classifier

    @property
    def coeff(self) -> float:
        return self.grl.coeff

    @coeff.setter
    def coeff(self, value: float) -> None:
        self.grl.coeff = float(value)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> DomainLossResult:
        f = self.grl(torch.cat([f_s, f_t], dim=0))
        logits = self.domain_classifier(f)
        labels = torch.cat([torch.ones(len(f_s)), torch.zeros(len(f_t))]).to(logits)
        # each domain weighs half, whatever the batch sizes
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        loss = 0.5 * (per[: len(f_s)].mean() + per[len(f_s):].mean())
        with torch.no_grad():
            acc = float(((logits > 0).to(labels) == labels).float().mean())
        return DomainLossResult(loss=loss, accuracy=acc, n=len(labels))
