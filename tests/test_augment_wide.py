"""The wide augmentation preset (`stain_wide`): shape and dtype kept, seeded, pure, and it changes the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodsmear.preprocess.augment import get_augment, image_policy
from bloodsmear.preprocess.augment_wide import WidePolicy, hed_jitter


def _cells(n: int = 4, side: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    ims = np.full((n, side, side, 3), (230, 215, 220), dtype=np.uint8)
    disc = (yy - side // 2) ** 2 + (xx - side // 2) ** 2 <= (side // 4) ** 2
    ims[:, disc] = (110, 60, 150)
    return np.clip(ims.astype(int) + rng.integers(-10, 10, ims.shape), 0, 255).astype(np.uint8)


def test_policy_keeps_shape_and_dtype_square_and_not():
    p = WidePolicy()
    for im in (_cells(1)[0], _cells(1)[0][:, :24]):
        for s in range(20):
            out = p(im, s)
            assert out.shape == im.shape and out.dtype == np.uint8


def test_policy_is_deterministic_for_a_seed_and_leaves_the_input_alone():
    im = _cells(1)[0]
    before = im.copy()
    p = WidePolicy()
    assert np.array_equal(p(im, np.random.default_rng(7)), p(im, np.random.default_rng(7)))
    assert np.array_equal(im, before)
    outs = [p(im, s) for s in range(8)]
    assert all(not np.array_equal(o, im) for o in outs)  # the colour jitter always runs
    assert len({o.tobytes() for o in outs}) == 8


def test_policy_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="RGB uint8"):
        WidePolicy()(np.zeros((8, 8), np.uint8), 0)


def test_hed_jitter_identity_and_effect():
    f = _cells(1)[0].astype(float) / 255
    same = hed_jitter(f, np.ones(3), np.zeros(3))
    assert np.abs(same - f).max() < 0.02  # colour deconvolution round trip
    more_h = hed_jitter(f, np.array([1.5, 1.0, 1.0]), np.zeros(3))
    assert more_h.mean() < same.mean()  # more haematoxylin: darker


def test_batch_preset_seeded_pure_and_registered():
    x = torch.from_numpy(_cells()).permute(0, 3, 1, 2).float()
    before = x.clone()
    aug = get_augment("stain_wide")
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert torch.equal(x, before)


def test_image_policy_for_the_cached_views():
    assert isinstance(image_policy("stain_wide"), WidePolicy)
    assert image_policy("paper_dann") is not None
    assert image_policy("flips") is None and image_policy(None) is None
    with pytest.raises(KeyError, match="unknown augment preset"):
        image_policy("nope")


def test_colour_only_preset_has_no_optics_or_camera_ops():
    p = image_policy("stain_colour")
    assert (p.p_blur, p.p_down, p.p_noise, p.p_jpeg) == (0.0, 0.0, 0.0, 0.0) and p.p_hed > 0
    x = torch.from_numpy(_cells(2)).permute(0, 3, 1, 2).float()
    assert get_augment("stain_colour")(x, torch.Generator().manual_seed(0)).shape == x.shape
