"""Activation maximisation, Grad-CAM and t-SNE on tiny networks (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bloodsmear.viz.insight import (
    activation_maximisation,
    actmax_grid,
    conv_layer_names,
    get_layer,
    grad_cam,
    overlay_heatmap,
    penultimate_features,
)
from bloodsmear.viz.tsne import tsne_plot


def _cnn(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


def test_layer_lookup_and_unknown_lists_convs():
    net = _cnn()
    assert conv_layer_names(net) == ["0", "2"]
    assert isinstance(get_layer(net, "2"), nn.Conv2d)
    with pytest.raises(KeyError, match="conv layers: 0, 2"):
        get_layer(net, "nope")


def test_actmax_shape_range_and_increases_activation():
    net = _cnn()
    r = activation_maximisation(net, "2", 1, size=24, steps=12, lr=0.05)
    assert r.image.shape == (24, 24, 3) and r.image.dtype == np.float32
    assert 0.0 <= r.image.min() and r.image.max() <= 1.0
    assert r.final_activation > r.start_activation
    assert all(p.requires_grad for p in net.parameters())  # restored
    grid = actmax_grid([r, r, r], cols=2)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and grid.shape[0] > 48 and grid.shape[1] > 48


class _Branchy(nn.Module):
    """A CNN with a conv the forward pass never runs and an auxiliary conv the logits do not depend on."""

    def __init__(self):
        super().__init__()
        self.net, self.unused, self.aux = _cnn(), nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)

    def forward(self, x):
        self.aux(x)
        return self.net(x)


def test_layers_that_cannot_serve_are_one_clear_error():
    from bloodsmear.errors import BloodsmearError
    from bloodsmear.viz.insight import LayerError, last_conv_layer

    x = torch.rand(2, 3, 16, 16)
    for layer, msg in [("net.6", r"layer 'net.6' has no spatial map \(its output is \(2, 16\)\)"),
                       ("unused", "layer 'unused' is not run by the model's forward pass"),
                       ("aux", "layer 'aux' gets no gradient from the class score")]:
        with pytest.raises(LayerError, match=msg) as e:
            grad_cam(_Branchy(), x, layer=layer)
        assert isinstance(e.value, BloodsmearError) and isinstance(e.value, ValueError)
    with pytest.raises(LayerError, match="layer 'net.6' has no spatial map"):
        activation_maximisation(_Branchy(), "net.6", 0, size=16, steps=1)
    with pytest.raises(LayerError, match="no Conv2d layer"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


def test_actmax_filter_out_of_range():
    with pytest.raises(IndexError, match="6 filters"):
        activation_maximisation(_cnn(), "2", 6, size=16, steps=1)


def test_grad_cam_shape_range_and_target():
    net = _cnn()
    x = torch.rand(2, 3, 20, 24)
    r = grad_cam(net, x)
    assert r.layer == "3"  # the last spatial map: the ReLU after the second conv
    assert r.maps.shape == (2, 20, 24)
    assert r.maps.min() >= 0.0 and r.maps.max() <= 1.0
    assert r.classes == net(x).argmax(1).tolist()
    assert r.probs.shape == (2, 3) and np.allclose(r.probs.sum(1), 1, atol=1e-5)
    r2 = grad_cam(net, x, layer="0", target=[2, 0])
    assert r2.classes == [2, 0] and r2.maps.shape == (2, 20, 24)


def test_grad_cam_works_with_frozen_backbone():
    net = _cnn()
    for p in net[:4].parameters():
        p.requires_grad_(False)
    r = grad_cam(net, torch.rand(1, 3, 16, 16))
    assert r.maps.shape == (1, 16, 16) and r.maps.max() <= 1.0


def test_grad_cam_localises_a_bright_patch():
    # a net whose class-1 logit is the mean of a channel that fires on bright red pixels
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
        conv.bias.zero_()
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        net[4].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        net[4].bias.zero_()
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 2:6, 10:14] = 1.0
    cam = grad_cam(net, x, target=1).maps[0]
    assert cam[2:6, 10:14].mean() > 0.9 and cam[10:, :6].mean() < 0.1


def test_overlay_keeps_input():
    rgb = np.full((10, 12, 3), 100, np.uint8)
    before = rgb.copy()
    out = overlay_heatmap(rgb, np.linspace(0, 1, 20).reshape(4, 5))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(rgb, before) and not np.array_equal(out, rgb)


def test_penultimate_features_are_head_input():
    net = _cnn()
    batches = [(torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 2])), (torch.rand(2, 3, 16, 16), torch.tensor([1, 1]))]
    f, y = penultimate_features(net, batches)
    assert f.shape == (5, 16) and y.tolist() == [0, 1, 2, 1, 1]
    assert (f >= 0).all()  # after the ReLU that feeds the last Linear


def test_tsne_plot_writes_png(tmp_path, rng):
    feats = np.concatenate([rng.normal(0, 1, (15, 8)), rng.normal(6, 1, (15, 8))]).astype(np.float32)
    labels = [0] * 15 + [1] * 15
    out = tmp_path / "t.png"
    emb = tsne_plot(feats, labels, out=out, class_names=["a", "b"], perplexity=5)
    assert emb.shape == (30, 2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # well-separated clusters stay separated
    c0, c1 = emb[:15].mean(0), emb[15:].mean(0)
    assert np.linalg.norm(c0 - c1) > 2 * max(emb[:15].std(), emb[15:].std())


def test_tsne_plot_with_domains(tmp_path, rng):
    feats = rng.normal(0, 1, (20, 4)).astype(np.float32)
    out = tmp_path / "d.png"
    emb = tsne_plot(feats, ["x", "y"] * 10, domains=["pbc"] * 10 + ["lisc"] * 10, out=out, perplexity=4)
    assert emb.shape == (20, 2) and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="domain"):
        tsne_plot(feats, [0] * 20, domains=[0] * 3, out=out)


def test_grad_cam_on_the_paper_classifier():
    from bloodsmear.models.classifier import build_classifier
    from bloodsmear.viz.insight import default_cam_layer

    model = build_classifier("tiny_cnn", 4, mode="frozen")
    x = torch.rand(2, 3, 32, 32)
    assert default_cam_layer(model, x) == "backbone.body"  # the whole feature extractor's output
    r = grad_cam(model, x)
    assert r.maps.shape == (2, 32, 32) and 0.0 <= r.maps.min() and r.maps.max() <= 1.0
    f, y = penultimate_features(model, [(x, torch.tensor([0, 3]))])
    assert f.shape == (2, 128)  # the paper's Dense(128)
