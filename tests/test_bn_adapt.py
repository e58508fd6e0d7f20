"""Batch-norm re-estimation on unlabelled data: statistics move to the new data, weights and input model don't."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bloodsmear.training.bn_adapt import adapt_batchnorm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


def _loader(shift: float, n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, 8, 8, generator=g) * 2 + shift, torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def test_statistics_move_to_the_new_data_and_weights_do_not():
    m = _model()
    m.train()
    with torch.no_grad():
        for x, _ in _loader(0.0):  # "source" statistics
            m(x)
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = _loader(5.0)
    out = adapt_batchnorm(m, data)
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    sd = out.state_dict()
    for k in before:
        if k.startswith("1.running") or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(sd[k], before[k]), k  # conv, BN affine and head weights unchanged
    # the running mean is the plain average over the batches of the conv output's channel means
    with torch.no_grad():
        means = torch.stack([m[0](x).mean(dim=(0, 2, 3)) for x, _ in data]).mean(0)
    assert torch.allclose(sd["1.running_mean"], means, atol=1e-5)
    assert not torch.allclose(sd["1.running_mean"], before["1.running_mean"])
    assert out[1].momentum == m[1].momentum and not out.training


def test_unlabelled_loader_and_unreached_batchnorm_keep_their_stats():
    trunk = nn.BatchNorm2d(3)
    trunk.running_mean.fill_(0.7)

    class Tail(nn.Module):  # like TailModel: a BN layer the forward never reaches
        def __init__(self):
            super().__init__()
            self.trunk, self.top = trunk, _model()

        def forward(self, x):
            return self.top(x)

    out = adapt_batchnorm(Tail(), [x for x, _ in _loader(2.0)])
    assert torch.allclose(out.trunk.running_mean, torch.full((3,), 0.7))


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        adapt_batchnorm(_model(), [])
