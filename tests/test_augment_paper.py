"""The paper's augmentation policy: seeded reproducibility, each flag changes the image, purity."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.preprocess.augment_paper import CASTS, FLAGS, PaperPolicy, flip, only


def _cell(rng) -> np.ndarray:
    img = np.full((40, 40, 3), (225, 215, 220), np.float64) + rng.normal(0, 3, (40, 40, 3))
    yy, xx = np.mgrid[:40, :40]
    img[(yy - 18) ** 2 + (xx - 16) ** 2 < 100] = (130, 60, 160)  # an off-centre, asymmetric "nucleus"
    img[5:9, 28:36] = (200, 120, 140)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_policy_has_eleven_flags():
    assert len(FLAGS) == 11 and len(set(FLAGS)) == 11
    assert len(CASTS) == 6  # 3 warm + 3 cool, p = 1/6 each


def test_reproducible_under_a_seed(rng):
    img = _cell(rng)
    pol = PaperPolicy()
    a = [pol(img, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    outs = {pol(img, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(outs) > 4  # different seeds give different images


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_changes_the_image(flag, rng):
    img = _cell(rng)
    before = img.copy()
    changed = 0
    for s in range(5):
        out = only(flag)(img, np.random.default_rng(s))
        assert out.shape == img.shape and out.dtype == np.uint8
        changed += int(np.abs(out.astype(int) - img.astype(int)).mean() > 0.5)
    assert np.array_equal(img, before)  # pure
    assert changed == 5


def test_no_flag_is_identity_and_flip_modes(rng):
    img = _cell(rng)
    out = PaperPolicy(flags=(False,) * 11)(img, 0)
    assert np.array_equal(out, img) and out is not img
    assert np.array_equal(flip(img, 0), img[:, ::-1]) and np.array_equal(flip(img, 2), img[::-1, ::-1])


def test_flip_modes_each_about_a_third(rng):
    img = _cell(rng)
    pol = only("flip")
    seen = np.zeros(3)
    for s in range(600):
        out = pol(img, np.random.default_rng(s))
        seen[[k for k in range(3) if np.array_equal(out, flip(img, k))][0]] += 1
    assert np.allclose(seen / 600, 1 / 3, atol=0.06)
    with pytest.raises(ValueError):
        PaperPolicy(flags=(True,) * 3)(np.zeros((8, 8, 3), np.uint8), 0)


def test_paper_dann_batch_preset_is_registered_and_seeded():
    import torch

    import bloodsmear.preprocess.augment_paper  # noqa: F401 - registers the preset
    from bloodsmear.preprocess.augment import get_augment

    aug = get_augment("paper_dann")
    x = torch.rand(4, 3, 24, 24) * 255
    before = x.clone()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before) and a.shape == x.shape and a.dtype == x.dtype
