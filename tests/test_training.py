"""Training engine: config loading, loaders, checkpoint resume after a kill, early stopping, target loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodsmear.config import TrainConfig, load_train_config
from bloodsmear.errors import InputError
from bloodsmear.models.classifier import build_classifier
from bloodsmear.training.loaders import ArrayLoader
from bloodsmear.training.objectives import StepOutput, SupervisedObjective, build_objective
from bloodsmear.training.trainer import build_optimizer, build_scheduler, fit

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def arrays(n_per_class: int = 12, size: int = 32, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(k):
        x = rng.integers(0, 60, (n_per_class, size, size, 3)).astype(np.uint8)
        x[..., c] += 150
        xs.append(x)
        ys += [c] * n_per_class
    return np.concatenate(xs), np.array(ys)


def test_config_yaml_and_unknown_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("kind: classifier\nmodel: {backbone: tiny_cnn}\noptim: {lr: 0.001}\nepochs: 3\n")
    c = load_train_config(f)
    assert c.model.backbone == "tiny_cnn" and c.optim.lr == 0.001 and c.epochs == 3 and c.optim.name == "adam"
    assert TrainConfig.from_dict(c.to_dict()) == c
    f.write_text("model: {backbone: tiny_cnn, lrr: 1}\n")
    with pytest.raises(InputError, match="model.lrr"):
        load_train_config(f)
    with pytest.raises(InputError, match="no such config"):
        load_train_config(tmp_path / "missing.yaml")


def test_array_loader_shapes_determinism_and_balance():
    x, y = arrays()
    y = np.array([0] * 30 + [1] * 3 + [2] * 3)
    ld = ArrayLoader(x, y, batch_size=8, mean=MEAN, std=STD, shuffle=True, augment="flips", seed=3)
    a = [b for b in ld]
    b = [b for b in ld]
    assert len(a) == len(ld) == 5
    assert a[0][0].shape == (8, 3, 32, 32) and a[0][0].dtype == torch.float32
    assert torch.equal(a[0][0], b[0][0])  # same epoch -> same batches
    ld.set_epoch(1)
    assert not torch.equal(next(iter(ld))[0], a[0][0])
    bal = ArrayLoader(x, y, batch_size=36, mean=MEAN, std=STD, balanced=True, seed=0)
    counts = np.zeros(3)
    for e in range(20):
        bal.set_epoch(e)
        for _, yy in bal:
            counts += np.bincount(yy.numpy(), minlength=3)
    assert counts.min() / counts.max() > 0.7  # roughly equal per class despite 30/3/3
    # evaluation order is the array order
    ev = ArrayLoader(x, y, batch_size=8, mean=MEAN, std=STD)
    assert torch.equal(torch.cat([yy for _, yy in ev]), torch.from_numpy(y))


def _setup(tmp_path, epochs=3):
    torch.manual_seed(0)
    x, y = arrays()
    cfg = TrainConfig.from_dict({"model": {"backbone": "tiny_cnn", "pretrained": False}, "optim": {"lr": 0.01},
                                 "schedule": {"name": "onecycle"}, "epochs": epochs, "batch_size": 8})
    model = build_classifier("tiny_cnn", 3)
    tr = ArrayLoader(x, y, batch_size=8, mean=MEAN, std=STD, shuffle=True, augment="flips", drop_last=True)
    va = ArrayLoader(x, y, batch_size=16, mean=MEAN, std=STD)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, len(tr))
    return model, tr, va, opt, sched


def test_checkpoint_resume_continues_from_saved_epoch(tmp_path):
    ck = tmp_path / "ck.pt"
    model, tr, va, opt, sched = _setup(tmp_path)

    class Killed(Exception):
        pass

    seen = []

    def kill_at_2(row):
        seen.append(row["epoch"])
        if row["epoch"] == 2:
            raise Killed  # dies after epoch 2's work, before its checkpoint: epoch 1 is saved

    with pytest.raises(Killed):
        fit(model, SupervisedObjective(), tr, va, opt, epochs=3, classes=["a", "b", "c"], scheduler=sched,
            checkpoint=ck, progress=False, on_epoch_end=kill_at_2)
    saved = torch.load(ck, weights_only=False)
    assert saved["epoch"] == 1
    # a fresh process: new objects, same checkpoint
    model2, tr2, va2, opt2, sched2 = _setup(tmp_path)
    resumed = []
    res = fit(model2, SupervisedObjective(), tr2, va2, opt2, epochs=3, classes=["a", "b", "c"], scheduler=sched2,
              checkpoint=ck, progress=False, on_epoch_end=lambda r: resumed.append(r["epoch"]))
    assert resumed == [2, 3]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[0] == saved["history"][0]
    assert sched2.last_epoch == 3 * len(tr2)  # the LR schedule continued, not restarted
    # finished: running again trains nothing
    again = []
    fit(model2, SupervisedObjective(), tr2, va2, opt2, epochs=3, classes=["a", "b", "c"], scheduler=sched2,
        checkpoint=ck, progress=False, on_epoch_end=lambda r: again.append(r))
    assert again == []


def test_early_stopping_and_time_budget(tmp_path):
    model, tr, va, opt, _ = _setup(tmp_path)
    for g in opt.param_groups:
        g["lr"] = 0.0  # nothing improves after epoch 1
    res = fit(model, SupervisedObjective(), tr, va, opt, epochs=10, classes=["a", "b", "c"], patience=2,
              progress=False)
    assert res.stopped == "early_stopping" and res.epochs_run < 10
    res = fit(model, SupervisedObjective(), tr, va, opt, epochs=10, classes=["a", "b", "c"], max_minutes=0.0,
              progress=False)
    assert res.stopped == "time_budget" and res.epochs_run == 1


def test_target_loader_reaches_the_objective(tmp_path):
    """A DANN-style objective gets a target batch each step and can use the feature/head split."""
    model, tr, va, opt, _ = _setup(tmp_path)
    xt, _ = arrays(seed=5)
    tgt = ArrayLoader(xt, None, batch_size=4, mean=MEAN, std=STD, shuffle=True)
    calls = []

    class TwoDomain(SupervisedObjective):
        needs_target = True

        def forward(self, model, batch, target_batch=None):
            calls.append(target_batch[0].shape[0])
            f_t = model.forward_features(target_batch[0])
            out = super().forward(model, batch)
            return StepOutput(loss=out.loss + 0.0 * f_t.sum(), logs={**out.logs, "target_n": float(len(f_t))},
                              logits=out.logits, targets=out.targets)

    res = fit(model, TwoDomain(), tr, va, opt, epochs=1, classes=["a", "b", "c"], target_loader=tgt, progress=False)
    assert len(calls) == len(tr) and set(calls) == {4}
    assert res.history[0]["train_target_n"] == 4.0


def test_objective_registry():
    assert isinstance(build_objective("supervised", label_smoothing=0.1), SupervisedObjective)
    with pytest.raises(KeyError, match="supervised"):
        build_objective("nope")
