"""bloodsmear.geometry: box IoU (torchvision), mask <-> polygon, pasting a mask."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.geometry import (
    box_iou,
    box_iou_matrix,
    mask_to_polygon,
    paste_mask,
    polygon_to_mask,
)


def _iou_written_out(a, b) -> float:
    """The arithmetic the four former box-IoU helpers wrote out (metrics, crop, seg_train)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def test_box_iou_values_and_empty_union():
    assert box_iou((0, 0, 40, 40), (10, 0, 50, 40)) == pytest.approx(0.6)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # 0/0 in torchvision: no overlap here
    assert str(box_iou((5, 5, 1, 1), (0, 0, 1, 1))) == "0.0"  # a degenerate box: 0.0, not -0.0


def test_box_iou_same_digits_as_the_written_out_formula():
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = rng.uniform(-5, 30, 4), rng.uniform(-5, 30, 4)
        a[2:] = a[:2] + rng.uniform(0, 20, 2)
        b[2:] = b[:2] + rng.uniform(0, 20, 2)
        assert box_iou(a.tolist(), b.tolist()) == _iou_written_out(a.tolist(), b.tolist())  # to the last bit


def test_box_iou_matrix_shape_and_empty_inputs():
    m = box_iou_matrix([(0, 0, 10, 10), (5, 0, 15, 10)], [(0, 0, 10, 10)])
    assert m.shape == (2, 1) and m.dtype == np.float64
    assert m[1, 0] == pytest.approx(50 / 150)
    assert box_iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_mask_to_polygon_largest_component_and_chain():
    m = np.zeros((20, 20), bool)
    m[2:12, 3:13] = True  # 10 x 10 square
    m[15:17, 15:17] = True  # a smaller blob
    simple = mask_to_polygon(m, chain="simple")
    assert simple.shape == (4, 2) and simple.dtype == float
    assert simple.min(0).tolist() == [3, 2] and simple.max(0).tolist() == [12, 11]
    full = mask_to_polygon(m)
    assert len(full) == 36  # every boundary pixel of the square
    assert len(mask_to_polygon(m, epsilon=0.6)) == 4  # simplified
    assert mask_to_polygon(np.zeros((4, 4), bool)).shape == (0, 2)
    assert m.sum() == 104  # input untouched
    with pytest.raises(ValueError, match="valid: none, simple"):
        mask_to_polygon(m, chain="x")


def test_polygon_to_mask_whole_and_subpixel_with_origin():
    poly = np.array([[2.0, 2.0], [7.0, 2.0], [7.0, 7.0], [2.0, 7.0]])
    m = polygon_to_mask(poly, (10, 10))
    assert m.dtype == bool and m.sum() == 36 and m[2, 2] and m[7, 7] and not m[8, 8]
    shifted = polygon_to_mask(poly, (10, 10), origin=(2, 2), subpixel=True)
    assert shifted[0, 0] and shifted[5, 5] and not shifted[6, 6]
    assert np.array_equal(polygon_to_mask(mask_to_polygon(m, chain="simple"), (10, 10)), m)  # round trip


def test_paste_mask_clips_at_every_edge():
    m = np.ones((3, 4), bool)
    out = paste_mask(m, (1, 2), (6, 6))
    assert out.sum() == 12 and out[2:5, 1:5].all()
    assert paste_mask(m, (-2, -1), (6, 6)).sum() == 2 * 2  # cut at the top-left
    assert paste_mask(m, (4, 4), (6, 6)).sum() == 2 * 2  # cut at the bottom-right
    assert not paste_mask(m, (10, 0), (6, 6)).any()  # wholly outside
