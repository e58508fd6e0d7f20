"""Classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.metrics.classification import ClassificationReport, classification_report_arrays, report_markdown
from bloodsmear.metrics.plots import plot_confusion


def test_metrics_hand_computed():
    classes = ["a", "b", "c"]
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    r = classification_report_arrays(y_true, y_pred, classes)
    # a: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8
    # b: tp 1, fp 1, fn 1 -> P .5, R .5, F1 .5
    # c: tp 1, fp 1, fn 0 -> P .5, R 1, F1 2/3
    assert r.per_class["a"].precision == pytest.approx(1.0)
    assert r.per_class["a"].recall == pytest.approx(2 / 3)
    assert r.per_class["a"].f1 == pytest.approx(0.8)
    assert r.per_class["b"].f1 == pytest.approx(0.5)
    assert r.per_class["c"].recall == pytest.approx(1.0)
    assert r.macro_precision == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert r.macro_recall == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert r.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r.weighted_f1 == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r.confusion_normalized[0] == pytest.approx([2 / 3, 1 / 3, 0])
    assert r.n == 6


def test_metrics_string_labels_and_roundtrip(tmp_path):
    classes = ["neutrophil", "lymphocyte"]
    r = classification_report_arrays(["neutrophil", "lymphocyte"], ["neutrophil", "neutrophil"], classes)
    assert r.confusion == [[1, 0], [1, 0]]
    again = ClassificationReport.from_dict(r.to_dict())
    assert again == r
    png = plot_confusion(r, tmp_path / "cm.png")
    assert png.stat().st_size > 1000
    assert "neutrophil" in report_markdown(r)


def test_metrics_errors():
    with pytest.raises(ValueError):
        classification_report_arrays([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match="not in classes"):
        classification_report_arrays(["x"], ["a"], ["a", "b"])


def test_absent_class_not_in_macro():
    # class "c" never occurs nor is predicted: it does not drag the macro average down
    r = classification_report_arrays(np.array([0, 1]), np.array([0, 1]), ["a", "b", "c"])
    assert r.macro_f1 == pytest.approx(1.0)
    assert r.per_class["c"].support == 0
