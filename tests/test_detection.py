"""Detection / segmentation metrics against hand-computed values on hand-made GT and predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bloodsmear.metrics.detection import (
    cell_full_mask, coco_ap, counting_errors, evaluate_detection, match_cells, matched_prf,
    nucleus_coverage,
)
from bloodsmear.geometry import box_iou
from bloodsmear.types import AnnotatedImage, Cell

H, W = 100, 120


def square(x1: float, y1: float, x2: float, y2: float, *, label: str = "wbc", score: float | None = None,
           with_mask: bool = True) -> Cell:
    mask = np.ones((int(y2 - y1), int(x2 - x1)), dtype=bool) if with_mask else None
    return Cell(label=label, box=(x1, y1, x2, y2), mask=mask, score=score)


def image(name: str, cells: list[Cell]) -> AnnotatedImage:
    return AnnotatedImage(path=f"/x/{name}.png", width=W, height=H, cells=cells)


def gt_two() -> list[AnnotatedImage]:
    return [image("a", [square(10, 10, 40, 40), square(60, 50, 100, 90)])]


def test_perfect_prediction_scores_one():
    gt = gt_two()
    pred = [image("a", [square(10, 10, 40, 40, score=0.9), square(60, 50, 100, 90, score=0.8)])]
    box = coco_ap(gt, pred, iou_type="bbox")
    mask = coco_ap(gt, pred, iou_type="segm")
    for r in (box, mask):
        assert r.ap == pytest.approx(1.0)
        assert r.ap50 == pytest.approx(1.0)
        assert r.ap75 == pytest.approx(1.0)
    assert box.n_gt == 2 and box.n_pred == 2
    prf = matched_prf(gt, pred)
    assert prf["wbc"].precision == 1.0 and prf["wbc"].recall == 1.0 and prf["wbc"].f1 == 1.0


def test_one_missing_halves_recall_and_ap():
    gt = gt_two()
    pred = [image("a", [square(10, 10, 40, 40, score=0.9)])]
    prf = matched_prf(gt, pred)["wbc"]
    assert (prf.tp, prf.fp, prf.fn) == (1, 0, 1)
    assert prf.recall == 0.5 and prf.precision == 1.0 and prf.f1 == pytest.approx(2 / 3)
    # 101-point interpolated precision: 1.0 at recall 0..0.5 (51 points), 0 beyond.
    assert coco_ap(gt, pred).ap50 == pytest.approx(51 / 101)
    assert counting_errors(gt, pred).per_image == {"a.png": 1}


def test_false_positive_ranked_first_lowers_ap():
    gt = [image("a", [square(10, 10, 40, 40)])]
    pred = [image("a", [square(70, 60, 100, 90, score=0.95), square(10, 10, 40, 40, score=0.5)])]
    # precision at recall 1 is 1/2 -> every recall point interpolates to 0.5
    assert coco_ap(gt, pred).ap50 == pytest.approx(0.5)
    prf = matched_prf(gt, pred)["wbc"]
    assert prf.precision == 0.5 and prf.recall == 1.0


def test_shifted_box_counts_only_at_low_iou():
    gt = [image("a", [square(0, 0, 40, 40)])]
    pred = [image("a", [square(10, 0, 50, 40, score=0.9)])]  # IoU = 30*40 / (50*40) = 0.6
    assert box_iou((0, 0, 40, 40), (10, 0, 50, 40)) == pytest.approx(0.6)
    r = coco_ap(gt, pred)
    assert r.ap50 == pytest.approx(1.0) and r.ap75 == pytest.approx(0.0)
    # AP over IoU 0.50:0.95 -> thresholds 0.50, 0.55, 0.60 pass (3 of 10)
    assert r.ap == pytest.approx(0.3)
    assert matched_prf(gt, pred, iou_threshold=0.7)["wbc"].tp == 0


def test_greedy_matching_by_score():
    g = [square(0, 0, 40, 40)]
    p = [square(2, 0, 42, 40, score=0.3), square(0, 0, 40, 40, score=0.9)]
    m = match_cells(g, p)
    assert m == [(0, 1, 1.0)]


def test_class_aware_and_filtering():
    gt = [image("a", [square(10, 10, 40, 40, label="neutrophil"), square(60, 50, 100, 90, label="rbc")])]
    pred = [image("a", [square(10, 10, 40, 40, label="lymphocyte", score=0.9)])]
    # class-aware: wrong class is a miss and a false positive
    prf = matched_prf(gt, pred, labels=["neutrophil", "lymphocyte"])
    assert prf["neutrophil"].fn == 1 and prf["lymphocyte"].fp == 1
    # WBC-agnostic default: the rbc is ignored, the WBC found
    rep = evaluate_detection(gt, pred)
    assert rep.box.ap50 == pytest.approx(1.0)
    assert rep.per_class["wbc"].recall == 1.0 and rep.counting.mean_abs_error == 0.0


def test_images_paired_by_name_and_missing_predictions():
    gt = [image("a", [square(10, 10, 40, 40)]), image("b", [square(10, 10, 40, 40)])]
    pred = [AnnotatedImage(path="elsewhere/a.png", width=W, height=H, cells=[square(10, 10, 40, 40, score=1.0)])]
    prf = matched_prf(gt, pred)["wbc"]
    assert prf.tp == 1 and prf.fn == 1
    c = counting_errors(gt, pred)
    assert c.per_image == {"a.png": 0, "b.png": 1} and c.mean_abs_error == 0.5 and c.exact_fraction == 0.5


def test_mask_ap_sees_mask_shape_not_box():
    gt = [image("a", [square(10, 10, 50, 50)])]
    half = np.zeros((40, 40), dtype=bool)
    half[:, :15] = True  # mask IoU 15/40 < 0.5 although the box is perfect
    pred = [image("a", [Cell(label="wbc", box=(10, 10, 50, 50), mask=half, score=0.9)])]
    assert coco_ap(gt, pred, iou_type="bbox").ap50 == pytest.approx(1.0)
    assert coco_ap(gt, pred, iou_type="segm").ap50 == pytest.approx(0.0)


def test_no_predictions_and_no_gt():
    gt = gt_two()
    assert coco_ap(gt, [image("a", [])]).ap == 0.0
    assert coco_ap([image("a", [])], [image("a", [square(0, 0, 10, 10, score=1.0)])]).ap == -1.0


def test_cell_full_mask_variants():
    c = Cell(label="wbc", polygon=np.array([[10, 10], [30, 10], [30, 30], [10, 30]]))
    m = cell_full_mask(c, H, W)
    assert m.shape == (H, W) and m[20, 20] and not m[5, 5]
    box_only = Cell(label="wbc", box=(110, 90, 130, 110))  # runs off the image
    assert cell_full_mask(box_only, H, W).sum() == 10 * 10


def test_nucleus_coverage():
    pred = [image("a", [square(10, 10, 40, 40)])]
    nuc = np.zeros((H, W), dtype=np.uint8)
    nuc[20:30, 20:30] = 255  # 100 px inside
    nuc[20:30, 50:60] = 255  # 100 px outside
    r = nucleus_coverage(pred, [nuc])
    assert (r.nucleus_pixels, r.covered_pixels) == (200, 100) and r.fraction == 0.5
    assert math.isnan(nucleus_coverage(pred, [np.zeros((H, W))]).fraction)
