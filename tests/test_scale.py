"""Red-cell size estimation (bloodsmear.preprocess.scale)."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.preprocess.resize import resize_to_scale
from bloodsmear.preprocess.scale import ScaleEstimate, estimate_rbc_diameter, pattern_spectrum, working_scale
from bloodsmear.training.synthetic_fields import synthetic_field
from tests.conftest import need


@pytest.mark.parametrize("d", [12.0, 20.0, 36.0, 64.0])
def test_synthetic_discs_within_10_percent(d):
    f = synthetic_field(int(d * 10), int(d * 13), d, seed=int(d))
    est = estimate_rbc_diameter(f.image)
    assert isinstance(est, ScaleEstimate)
    assert abs(est.diameter_px / d - 1) < 0.10, est
    assert 0 < est.confidence <= 1


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_estimate_follows_rescaling(factor):
    f = synthetic_field(300, 400, 30.0, seed=3)
    base = estimate_rbc_diameter(f.image).diameter_px
    scaled = estimate_rbc_diameter(resize_to_scale(f.image, factor)).diameter_px
    assert abs(scaled / (base * factor) - 1) < 0.10


def test_wbcs_do_not_move_the_estimate():
    d = 24.0
    wbc = [(80, 80, 2 * d), (220, 150, 2.2 * d), (300, 60, 1.9 * d)]
    f = synthetic_field(240, 360, d, wbc=wbc, seed=5)
    assert abs(estimate_rbc_diameter(f.image).diameter_px / d - 1) < 0.10


def test_input_unchanged_and_working_scale():
    f = synthetic_field(200, 260, 40.0, seed=1)
    before = f.image.copy()
    k = working_scale(f.image, 20.0)
    assert np.array_equal(f.image, before)
    assert abs(k - 0.5) < 0.05
    small = resize_to_scale(f.image, k)
    assert small.shape[1] == round(260 * k)
    assert np.array_equal(f.image, before)
    assert working_scale(f.image, 20.0, estimate=ScaleEstimate(float("nan"), 0.0)) == 1.0


def test_blank_image_gives_no_estimate():
    blank = np.full((64, 64, 3), 230, np.uint8)
    est = estimate_rbc_diameter(blank)
    assert not np.isfinite(est.diameter_px) or est.confidence == 0.0


def test_pattern_spectrum_of_one_disc():
    import cv2

    m = np.zeros((100, 100), np.uint8)
    cv2.circle(m, (50, 50), 20, 1, -1)
    areas = pattern_spectrum(m.astype(bool), np.array([5.0, 15.0, 19.0, 22.0]))
    assert areas[0] == pytest.approx(m.sum(), rel=0.02)
    assert areas[2] > 0.8 * m.sum() and areas[3] == 0


def test_rejects_non_rgb():
    with pytest.raises(ValueError):
        estimate_rbc_diameter(np.zeros((10, 10), np.uint8))


def test_real_fields(data_root):
    """BCCD red cells: median VOC RBC box side ~100 px, estimator ~88; LISC ~40 px (see the card)."""
    from bloodsmear.io import read_image

    bccd = need(data_root, "bccd", "JPEGImages")
    ests = [estimate_rbc_diameter(read_image(p)).diameter_px for p in sorted(bccd.glob("*.jpg"))[:8]]
    assert 65 < np.median(ests) < 110, ests
    lisc = need(data_root, "lisc", "neutrophil")
    ests = [estimate_rbc_diameter(read_image(p)).diameter_px for p in sorted(lisc.glob("*.jpg"))[:5]]
    assert 32 < np.median(ests) < 50, ests
