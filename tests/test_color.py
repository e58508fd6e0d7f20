"""Reinhard colour normalisation: output statistics match the target, input untouched, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.preprocess.color import (
    LabStats, ReinhardNormalizer, lab_stats, make_normalizer, reinhard_normalize,
)


def _smear_like(rng, tint):
    img = np.full((48, 48, 3), 200, np.float64) + rng.normal(0, 12, (48, 48, 3))
    img[10:30, 12:34] = np.array(tint)[None, None, :] + rng.normal(0, 10, (20, 22, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_reinhard_matches_target_lab_mean_std(rng):
    src = _smear_like(rng, (120, 60, 160))
    ref = _smear_like(rng, (170, 90, 110))
    target = lab_stats(ref)
    out = reinhard_normalize(src, target)
    got = lab_stats(out)
    assert np.allclose(got.mean, target.mean, atol=1.0)
    assert np.allclose(got.std, target.std, rtol=0.08, atol=0.5)
    # and it really moved: the source statistics were far from the target's
    assert not np.allclose(lab_stats(src).mean, target.mean, atol=3.0)


def test_reinhard_is_pure_and_typed(rng):
    src = _smear_like(rng, (120, 60, 160))
    before = src.copy()
    out = reinhard_normalize(src, LabStats((70.0, 10.0, -5.0), (15.0, 8.0, 8.0)))
    assert np.array_equal(src, before)
    assert out.dtype == np.uint8 and out.shape == src.shape
    with pytest.raises(ValueError):
        reinhard_normalize(src.astype(np.float32), LabStats((70.0, 0, 0), (10.0, 5, 5)))


def test_normalizer_fit_and_dict_round_trip(rng):
    refs = [_smear_like(rng, (170, 90, 110)) for _ in range(3)]
    n = ReinhardNormalizer().fit(refs)
    m = make_normalizer(n.to_dict())
    img = _smear_like(rng, (100, 50, 150))
    assert np.array_equal(n(img), m(img))
    assert make_normalizer({"method": "none"}) is None
    with pytest.raises(ValueError, match="unknown colour normalisation"):
        make_normalizer({"method": "bogus"})
