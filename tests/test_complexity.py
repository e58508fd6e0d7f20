"""Complexity counts on a small network whose numbers are computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bloodsmear.evaluation.complexity import (
    activation_bytes,
    count_layers,
    count_params,
    module_complexity,
    model_complexity,
    state_dict_bytes,
    time_inference,
    time_train_epoch,
)


def _net() -> nn.Sequential:
    # input 3x8x8
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 3*4*9 + 4 = 112 params, out 4x8x8 = 256
        nn.ReLU(),  # out 256
        nn.Conv2d(4, 2, 3, stride=2, padding=1),  # 4*2*9 + 2 = 74 params, out 2x4x4 = 32
        nn.Flatten(),  # out 32
        nn.Linear(32, 5),  # 32*5 + 5 = 165 params, out 5
    )


def test_layer_and_param_counts_by_hand():
    net = _net()
    assert count_layers(net).conv == 2
    assert count_layers(net).dense == 1
    pc = count_params(net)
    assert pc.total == 112 + 74 + 165 == 351
    assert pc.trainable == 351 and pc.non_trainable == 0 and pc.buffers == 0


def test_frozen_params_are_non_trainable():
    net = _net()
    for p in net[0].parameters():
        p.requires_grad_(False)
    pc = count_params(net)
    assert (pc.trainable, pc.non_trainable) == (74 + 165, 112)


def test_batchnorm_buffers_are_separate():
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    pc = count_params(net)
    assert pc.total == 12 + 8  # conv weights + BN gamma/beta
    assert pc.buffers == 8  # running mean + var (num_batches_tracked is an integer, not counted)


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, lin)
    assert count_params(net).total == 20
    assert count_layers(net).dense == 1  # modules() yields a shared module once


def test_activation_bytes_by_hand():
    net = _net()
    x = torch.rand(2, 3, 8, 8)
    per_sample = 256 + 256 + 32 + 5  # Flatten returns a view of the conv output: no new memory
    assert activation_bytes(net, x) == 2 * per_sample * 4  # fp32


def test_activation_bytes_counts_in_place_outputs_once():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True), nn.Identity(), nn.Conv2d(4, 2, 1))
    x = torch.rand(1, 3, 5, 5)
    assert activation_bytes(net, x) == (4 * 25 + 2 * 25) * 4


def test_state_dict_bytes_fp16_smaller():
    net = nn.Linear(256, 256)
    b32, b16 = state_dict_bytes(net), state_dict_bytes(net, half=True)
    assert b32 > 257 * 256 * 4 > b16 > 257 * 256 * 2
    assert next(net.parameters()).dtype == torch.float32  # the model itself is untouched


def test_timings_have_mean_std_and_repeats():
    net = _net()
    t = time_train_epoch(net, input_size=8, num_classes=5, n_images=6, batch_size=3, repeats=2)
    assert t.repeats == 2 and len(t.runs) == 2 and t.mean_s > 0 and t.std_s >= 0
    t = time_inference(net, input_size=8, batch_size=2, repeats=3)
    assert t.repeats == 3 and t.mean_s > 0


def test_module_complexity_row():
    r = module_complexity(_net(), name="tiny", input_size=8, batch_size=2, repeats=2)
    row = r.row()
    assert row["conv_layers"] == 2 and row["dense_layers"] == 1
    assert row["total_params_M"] == pytest.approx(351e-6, abs=1e-3)
    assert r.train_epoch is not None and r.infer_per_image is not None
    assert r.to_dict()["params"]["as_is"]["total"] == 351


def test_model_complexity_with_builder_modes():
    def build(name, mode, num_classes):
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        if mode == "frozen":
            net[0].requires_grad_(False)
        return net

    r = model_complexity("toy", input_size=8, batch_size=2, num_classes=3, repeats=1, builder=build)
    assert r.params["frozen"].trainable == 4 * 3 + 3
    assert r.params["finetune"].trainable == 112 + 15
    assert r.params["frozen"].total == r.params["finetune"].total
    with pytest.raises(ValueError):
        model_complexity("toy", train_mode="bogus", builder=build)


def test_model_complexity_builds_once_when_the_model_switches_modes():
    from bloodsmear.models.classifier import build_classifier

    built = []

    def build(name, mode, num_classes):
        built.append(mode)
        return build_classifier(name, num_classes, mode=mode)

    r = model_complexity("tiny_cnn", input_size=16, batch_size=2, num_classes=3, timing=False, train_mode="frozen",
                         builder=build)
    assert built == ["frozen"]
    assert r.params["frozen"].trainable == 16 * 128 + 128 + 128 * 3 + 3  # the head only
    assert r.params["finetune"].trainable == r.params["finetune"].total > r.params["frozen"].trainable
