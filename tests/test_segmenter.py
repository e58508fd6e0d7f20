"""The fast WBC segmenter: post-processing, network shapes, model folder round trip, training pieces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from bloodsmear.models.segmenter import (FastSegConfig, FastSegmenter, UNet, build_net, cells_from_labels,
                                         instances_from_maps, mask_polygon)
from bloodsmear.models.segmenter_base import Segmenter, load_segmenter
from bloodsmear.training.synthetic_fields import synthetic_field

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _maps_for_discs(h, w, discs):
    """Ideal foreground and centredness maps for discs (x, y, r)."""
    fg = np.zeros((h, w), np.float32)
    cen = np.zeros((h, w), np.float32)
    for x, y, r in discs:
        yy, xx = np.mgrid[:h, :w]
        d = np.hypot(xx - x, yy - y)
        inside = d <= r
        fg[inside] = 1.0
        cen[inside] = np.maximum(cen[inside], 1 - d[inside] / r)
    return fg, cen


def test_two_touching_discs_give_two_instances():
    fg, cen = _maps_for_discs(80, 120, [(40, 40, 20), (78, 40, 20)])  # overlapping by 2 px
    before = (fg.copy(), cen.copy())
    lab = instances_from_maps(fg, cen)
    assert np.array_equal(fg, before[0]) and np.array_equal(cen, before[1])
    assert lab.max() == 2
    assert lab[40, 40] != lab[40, 78] and lab[40, 40] > 0 and lab[40, 78] > 0
    assert abs((lab == lab[40, 40]).sum() - (lab == lab[40, 78]).sum()) < 0.1 * (lab > 0).sum()


def test_blob_without_marker_is_kept_and_small_ones_dropped():
    fg, cen = _maps_for_discs(60, 60, [(20, 20, 10), (45, 45, 3)])
    cen[:] = 0.0  # no markers at all
    lab = instances_from_maps(fg, cen, min_area=50)
    assert lab.max() == 1 and lab[20, 20] == 1 and lab[45, 45] == 0
    assert instances_from_maps(np.zeros((5, 5)), np.zeros((5, 5))).max() == 0


def test_cells_from_labels_box_mask_polygon_agree():
    lab = np.zeros((50, 70), np.int32)
    cv2.rectangle(lab, (10, 5), (29, 24), 1, -1)
    cv2.circle(lab, (50, 30), 8, 2, -1)
    prob = np.where(lab == 1, 0.9, np.where(lab == 2, 0.6, 0.0)).astype(np.float32)
    cells = cells_from_labels(lab, prob, score_threshold=0.5)
    assert [round(c.score, 2) for c in cells] == [0.9, 0.6]
    sq = cells[0]
    assert sq.label == "wbc" and sq.box == (10.0, 5.0, 30.0, 25.0) and sq.mask.shape == (20, 20) and sq.mask.all()
    assert sq.polygon[:, 0].min() == 10 and sq.polygon[:, 0].max() == 29
    assert len(cells_from_labels(lab, prob, score_threshold=0.7)) == 1
    assert mask_polygon(np.zeros((4, 4), bool)).shape == (0, 2)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (120, 161)])
def test_unet_output_shape_any_size(shape):
    torch.manual_seed(0)
    seg = FastSegmenter(UNet(base=4, levels=3), FastSegConfig(base_channels=4, levels=3))
    img = (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.uint8)
    before = img.copy()
    fg, cen = seg.maps(img)
    assert fg.shape == shape and cen.shape == shape
    assert 0 <= fg.min() and fg.max() <= 1
    assert isinstance(seg.predict(img), list)
    assert np.array_equal(img, before)


def test_model_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = FastSegConfig(base_channels=4, levels=3, rbc_diameter_px=18.0)
    net = build_net(cfg)
    # make BatchNorm statistics non-trivial so the fusion is exercised
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    seg = FastSegmenter(net.eval(), cfg)
    seg.save(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "weights.pt").is_file()
    loaded = load_segmenter(tmp_path / "m")
    assert isinstance(loaded, Segmenter) and loaded.kind == "fast-unet" and loaded.rbc_diameter_px == 18.0
    img = synthetic_field(64, 96, 18.0).image
    a, _ = seg.maps(img)
    b, _ = loaded.maps(img)
    assert np.abs(a - b).max() < 5e-3  # fp16 weights, BatchNorm folded
    with pytest.raises(ValueError):
        loaded.save(tmp_path / "fused")


def test_training_targets_and_batch():
    from bloodsmear.training.seg_data import SegField
    from bloodsmear.training.seg_train import SegTrainConfig, instance_targets, make_batch

    lab = np.zeros((40, 60), np.int32)
    cv2.circle(lab, (15, 20), 10, 1, -1)
    cv2.circle(lab, (34, 20), 10, 2, -1)  # touching the first
    fg, cen = instance_targets(lab)
    assert fg.sum() == (lab > 0).sum()
    assert cen[20, 15] > 0.9 and cen[20, 34] > 0.9 and cen.max() == pytest.approx(1.0)
    assert cen[20, 25] < 0.3  # the border between the two cells is low
    f = synthetic_field(160, 200, 40.0, seed=2)
    fields = {"bccd": [SegField(f.image, f.labels, "bccd", "s")]}
    cfg = SegTrainConfig(crop=64, batch_size=3)
    x, fgb, cb = make_batch(fields, cfg, 20.0, 40.0, np.random.default_rng(0))
    assert x.shape == (3, 3, 64, 64) and fgb.shape == (3, 1, 64, 64) and cb.shape == fgb.shape
    assert float(cb.max()) <= 1.0


def test_quickly_fitted_net_segments_synthetic_wbcs():
    """A tiny net fitted for a few seconds on synthetic fields finds the purple discs as instances."""
    from bloodsmear.training.seg_data import SegField
    from bloodsmear.training.seg_train import SegTrainConfig, make_batch, seg_loss

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = []
    for s in range(4):
        wbc = [(rng.uniform(60, 340), rng.uniform(60, 240), rng.uniform(70, 90)) for _ in range(2)]
        f = synthetic_field(300, 400, 40.0, wbc=wbc, seed=s)
        train.append(SegField(f.image, f.labels, "bccd", str(s)))
    cfg = SegTrainConfig(crop=64, batch_size=8, scale_min=0.9, scale_max=1.1)
    x, fg, cen = make_batch({"bccd": train}, cfg, 20.0, 40.0, rng)  # one fixed batch, fitted repeatedly
    mcfg = FastSegConfig(base_channels=8, levels=3, rbc_diameter_px=20.0)
    net = build_net(mcfg)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        loss = seg_loss(net(x), fg, cen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seg = FastSegmenter(net.eval(), mcfg)
    test = synthetic_field(150, 200, 20.0, wbc=[(60, 70, 38), (150, 80, 36)], seed=9)
    cells = seg.predict(test.image)
    centres = [((c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2) for c in cells]
    for x, y in test.wbc_centres:
        assert any(np.hypot(x - cx, y - cy) < 8 for cx, cy in centres), (centres, test.wbc_centres)


def test_expanded_instances_grow_but_stay_apart():
    fg, cen = _maps_for_discs(80, 120, [(40, 40, 20), (80, 40, 20)])
    a = instances_from_maps(fg, cen)
    b = instances_from_maps(fg, cen, expand_px=2)
    assert b.max() == 2
    assert (b > 0).sum() > (a > 0).sum()
    assert ((b == 1) & (b == 2)).sum() == 0 and (b[a > 0] == a[a > 0]).all()
