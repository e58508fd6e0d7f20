"""The DANN objective on tiny synthetic two-domain data: learns labels, confuses domains, ignores target labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bloodsmear.training.dann_objective import DANNObjective


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield
    torch.set_num_threads(n)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.h = nn.Linear(8, 3)

    def forward_features(self, x):
        return self.g(x)

    def head(self, f):
        return self.h(f)

    def forward(self, x):
        return self.head(self.forward_features(x))


def _domains(seed=0, n=96):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 2.0, (3, 8))
    ys = rng.integers(3, size=n)
    yt = rng.integers(3, size=n)
    xs = means[ys] + rng.normal(0, 0.6, (n, 8))
    shift = np.zeros(8)
    shift[5:] = 4.0  # the target domain differs along three directions
    xt = means[yt] + shift + rng.normal(0, 0.6, (n, 8))
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f(xs), torch.tensor(ys), f(xt), torch.tensor(yt)


def _train(lam, y_target=None, steps=60, seed=0):
    torch.manual_seed(seed)
    xs, ys, xt, yt = _domains()
    if y_target is not None:
        yt = y_target
    model = TinyNet()
    obj = DANNObjective(8, domain_hidden=16, domain_layers=1, domain_dropout=0.0, lambda_schedule=lam)
    opt = torch.optim.Adam(list(model.parameters()) + list(obj.parameters()), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    logs = []
    obj.on_epoch_start(0, 1)
    for _ in range(steps):
        i = torch.randperm(len(xs), generator=g)[:32]
        j = torch.randperm(len(xt), generator=g)[:32]
        out = obj(model, (xs[i], ys[i]), (xt[j], yt[j]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        logs.append(out.logs)
    return model, obj, logs


def test_dann_lowers_label_loss_and_drives_domain_accuracy_to_chance():
    _, _, plain = _train(0.0, steps=120)  # lambda 0: no reversal, the domains stay separable
    _, _, dann = _train(1.0, steps=120)
    first = np.mean([d["label_loss"] for d in dann[:5]])
    last = np.mean([d["label_loss"] for d in dann[-10:]])
    assert last < 0.5 * first
    acc_plain = np.mean([d["domain_acc"] for d in plain[-20:]])
    acc_dann = np.mean([d["domain_acc"] for d in dann[-20:]])
    assert acc_plain > 0.95
    assert acc_dann < 0.7  # near chance (0.5) once the features are domain-invariant
    assert all(d["lambda"] == 1.0 for d in dann)


def test_target_labels_are_never_used():
    m1, o1, _ = _train("ganin", steps=15)
    scrambled = torch.randint(0, 3, (96,), generator=torch.Generator().manual_seed(99))
    m2, o2, _ = _train("ganin", y_target=scrambled, steps=15)
    for a, b in zip(list(m1.state_dict().values()) + list(o1.state_dict().values()),
                    list(m2.state_dict().values()) + list(o2.state_dict().values())):
        assert torch.equal(a, b)
    # and a target batch without labels at all works too
    x = torch.randn(4, 8)
    o1.on_epoch_start(0, 1)
    assert torch.isfinite(o1(m1, (x, torch.zeros(4, dtype=torch.long)), (x + 1,)).loss)


def test_equal_batch_sizes_and_schedule_progress():
    model = TinyNet()
    obj = DANNObjective(8, domain_hidden=16, steps_per_epoch=4)
    obj.on_epoch_start(0, 2)
    assert obj.current_lambda() == 0.0
    out = obj(model, (torch.randn(6, 8), torch.zeros(6, dtype=torch.long)), (torch.randn(3, 8), None))
    assert out.logits.shape == (3, 3)  # both cut to the smaller batch
    for _ in range(3):
        obj(model, (torch.randn(2, 8), torch.zeros(2, dtype=torch.long)), (torch.randn(2, 8), None))
    obj.on_epoch_start(1, 2)
    assert obj.progress() == pytest.approx(0.5)
    assert obj.current_lambda() == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    with pytest.raises(ValueError, match="target"):
        obj(model, (torch.randn(2, 8), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError):
        DANNObjective(8, lambda_schedule="linear")
