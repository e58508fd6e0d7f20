"""bloodsmear.preprocess.resize: one function per interpolation rule, sizes and identities kept."""

from __future__ import annotations

import cv2
import numpy as np

from bloodsmear.preprocess.resize import (
    resize_bilinear,
    resize_by,
    resize_by_to,
    resize_longer_side,
    resize_square,
    resize_square_bicubic,
    resize_to_scale,
)


def _img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_by_interpolation_sizes_and_tolerance():
    img = _img(10, 15)
    small = resize_by(img, 0.5)
    assert small.shape == (5, 8, 3)  # round(7.5) = 8 (half to even)
    assert np.array_equal(small, cv2.resize(img, (8, 5), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize_by(img, 2.0), cv2.resize(img, (30, 20), interpolation=cv2.INTER_LINEAR))
    lab = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert set(np.unique(resize_by(lab, 3.3, nearest=True))) == set(range(6))  # labels stay labels
    assert resize_by(img, 1.0) is img and resize_by(img, 1.0005, tol=1e-3) is img
    assert resize_by(img, 1.0, tol=0) is not img  # tol=0: always a resized copy
    assert resize_by(img, 0.001).shape[:2] == (1, 1)


def test_resize_to_scale_always_a_new_array():
    img = _img(8, 8)
    out = resize_to_scale(img, 1.0)
    assert out is not img and np.array_equal(out, img)


def test_resize_longer_side_keeps_aspect():
    img = _img(20, 40)
    out = resize_longer_side(img, 10)
    assert out.shape == (5, 10, 3)
    assert np.array_equal(out, cv2.resize(img, (10, 5), interpolation=cv2.INTER_AREA))
    assert resize_longer_side(_img(9, 9), 9).shape == (9, 9, 3)


def test_resize_square_rules_differ_where_they_should():
    img = _img(12, 12)
    assert np.array_equal(resize_square(img, 20), cv2.resize(img, (20, 20), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize_square_bicubic(img, 20), cv2.resize(img, (20, 20), interpolation=cv2.INTER_CUBIC))
    assert np.array_equal(resize_square(img, 6), resize_square_bicubic(img, 6))  # both AREA when shrinking
    tall = _img(30, 10)  # longer side 30 > 20, height 30 > 20: AREA for both
    assert np.array_equal(resize_square(tall, 20), cv2.resize(tall, (20, 20), interpolation=cv2.INTER_AREA))
    wide = _img(10, 30)  # height under 20: the bicubic rule enlarges by its height
    assert np.array_equal(resize_square_bicubic(wide, 20), cv2.resize(wide, (20, 20), interpolation=cv2.INTER_CUBIC))
    assert resize_square(img, 12) is img and resize_square_bicubic(img, 12) is not img
    before = img.copy()
    resize_square(img, 5), resize_square_bicubic(img, 30), resize_by(img, 0.3)
    assert np.array_equal(img, before)  # inputs untouched


def test_resize_by_to_keeps_the_rescale_rule_at_a_given_size_and_bilinear_always_is():
    """`evaluate --rescale`: the field at its annotation's rescaled size, AREA when shrinking, bilinear
    enlarging (as it was, figures unchanged); `evaluate --errors` overlays: bilinear whichever way."""
    img = _img(10, 15)
    assert np.array_equal(resize_by_to(img, 0.5, (7, 6)), cv2.resize(img, (7, 6), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize_by_to(img, 2.0, (31, 20)), cv2.resize(img, (31, 20), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize_by_to(img, 0.5, (8, 5)), resize_by(img, 0.5, tol=0))  # its own size: resize_by
    assert np.array_equal(resize_bilinear(img, (7, 5)), cv2.resize(img, (7, 5), interpolation=cv2.INTER_LINEAR))
