"""Temperature scaling and risk–coverage (metrics/calibration.py) on synthetic logits."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.metrics.calibration import (fit_temperature, logits_from_probs, nll, risk_coverage, softmax_t,
                                            threshold_for_accuracy)


def _overconfident(n=600, c=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(0, 1, (n, c))
    z[np.arange(n), y] += 1.5  # a real signal ...
    return z * 4.0, y  # ... shouted four times too loud


def test_temperature_scaling_lowers_the_validation_nll_and_keeps_the_answers():
    z, y = _overconfident()
    z_in = z.copy()
    fit = fit_temperature(z, y)
    assert fit.temperature > 2.0 and fit.nll_after < fit.nll_before - 0.1
    assert np.array_equal(z, z_in)  # input untouched
    assert np.array_equal(softmax_t(z, fit.temperature).argmax(1), z.argmax(1))
    zv, yv = _overconfident(seed=1)  # it generalises to held-out data from the same source
    assert nll(zv, yv, fit.temperature) < nll(zv, yv, 1.0)


def test_a_calibrated_model_keeps_temperature_near_one():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1, (4000, 4))
    p = softmax_t(z)
    y = np.array([rng.choice(4, p=row) for row in p])  # labels drawn from the model's own probabilities
    assert fit_temperature(z, y).temperature == pytest.approx(1.0, abs=0.12)
    assert fit_temperature(logits_from_probs(p), y).temperature == pytest.approx(1.0, abs=0.12)


def test_risk_coverage_and_the_review_threshold():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])  # right, wrong, right, wrong (ranked 0.9, 0.8, 0.7, 0.55)
    rc = risk_coverage(probs, y)
    assert rc.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert rc.accuracy.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert rc.at_coverage(0.25) == 1.0 and rc.at_coverage(1.0) == 0.5
    assert threshold_for_accuracy(probs, y, 0.97) == pytest.approx(0.9)  # only the top cell stays unflagged
    assert threshold_for_accuracy(probs, y, 0.5) == pytest.approx(0.55)
    assert threshold_for_accuracy(np.array([[0.6, 0.4]]), np.array([1]), 0.97) > 1.0  # nothing is good enough


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, int))
    with pytest.raises(ValueError, match="labels must lie"):
        nll(np.zeros((2, 2)), np.array([0, 2]))
