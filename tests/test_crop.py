"""C-PBC crop: the paper's pipeline, the fast one, their agreement, and `bench_crop`."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.errors import InputError
from bloodsmear.geometry import box_iou
from bloodsmear.preprocess import crop as C

BG = (225, 220, 210)  # light, nearly unsaturated: outside the paper's HSV range
PURPLE = (120, 60, 160)  # OpenCV H ~138, S ~159, V 160: inside
RED = (220, 150, 130)  # red cell colour, H ~7: outside


def field(h=200, w=210, discs=(((105, 100), 40),), rbcs=(), noise=0, seed=0) -> np.ndarray:
    """A beige field with purple discs ((x, y), r) and red discs."""
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BG
    for (x, y), r in rbcs:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = RED
    for (x, y), r in discs:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = PURPLE
    if noise:
        rng = np.random.default_rng(seed)
        img = np.clip(img.astype(int) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
    return img


@pytest.mark.parametrize("method", ["paper", "fast"])
def test_single_disc_gives_square_of_its_diameter_at_image_centre(method):
    img = field()
    res = C.crop_box(img, method)
    # the mask is the disc dilated by 3 px (3 x 3x3 dilations): radius about 43
    assert res.found and 42.0 <= res.radius <= 45.0
    x1, y1, x2, y2 = res.box
    assert (x1 + x2) / 2 == pytest.approx(105, abs=1) and (y1 + y2) / 2 == pytest.approx(100, abs=1)
    assert x2 - x1 == pytest.approx(2 * res.radius, abs=1.5) and y2 - y1 == x2 - x1
    assert res.center[0] == pytest.approx(105, abs=1.5) and res.center[1] == pytest.approx(100, abs=1.5)


@pytest.mark.parametrize("method", ["paper", "fast"])
def test_crop_is_centred_on_the_image_not_on_the_cell(method):
    img = field(discs=[((70, 80), 30), ((170, 160), 8)], rbcs=[((160, 40), 25)])
    res = C.crop_box(img, method)
    assert 31 <= res.radius <= 35  # the largest circle is the big disc's
    assert res.center[0] == pytest.approx(70, abs=2) and res.center[1] == pytest.approx(80, abs=2)
    x1, y1, x2, y2 = res.box
    assert (x1 + x2) / 2 == pytest.approx(105, abs=1) and (y1 + y2) / 2 == pytest.approx(100, abs=1)


@pytest.mark.parametrize("method", ["paper", "fast"])
def test_circle_larger_than_image_is_clipped(method):
    img = field(h=120, w=130, discs=[((65, 60), 70)])  # covers most of the field
    res = C.crop_box(img, method)
    assert res.box == (0, 0, 130, 120)


@pytest.mark.parametrize("method", ["paper", "fast"])
def test_no_stain_keeps_the_whole_image(method):
    img = field(discs=[])
    res = C.crop_box(img, method)
    assert not res.found and res.box == (0, 0, img.shape[1], img.shape[0]) and res.radius == 0


@pytest.mark.parametrize("method", ["paper", "fast"])
def test_image_too_small_for_peaks(method):
    img = field(h=30, w=35, discs=[((17, 15), 8)])  # no pixel is 20 px from the border
    res = C.crop_box(img, method)
    assert not res.found and res.box == (0, 0, 35, 30)


def test_fast_agrees_with_paper_on_synthetic_fields():
    cases = [
        dict(discs=[((100, 95), 35), ((150, 120), 22)], rbcs=[((40, 40), 20)], noise=6),  # touching: split
        dict(discs=[((90, 110), 28), ((30, 30), 10), ((180, 170), 12)], noise=4, seed=1),
        dict(discs=[((105, 100), 45), ((170, 40), 15)], rbcs=[((40, 160), 25), ((60, 40), 22)], noise=8, seed=2),
    ]
    for kw in cases:
        img = field(**kw)
        p, f = C.paper_crop(img), C.fast_crop(img)
        assert box_iou(p.box, f.box) >= 0.9, (kw, p, f)


def test_inputs_are_not_modified_and_crop_is_a_copy():
    img = field(noise=5)
    before = img.copy()
    for method in C.METHODS:
        res = C.crop_box(img, method)
        out = C.crop(img, res)
        assert np.array_equal(img, before)
        out[:] = 0
        assert np.array_equal(img, before)
        x1, y1, x2, y2 = res.box
        assert out.shape == (y2 - y1, x2 - x1, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown crop method"):
        C.crop_box(field(), "magic")
    with pytest.raises(InputError, match="RGB"):
        C.paper_crop(np.zeros((20, 20), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        C.fast_crop(np.zeros((20, 20, 3), np.float32))


def test_box_iou_and_square_box():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert C.square_box(100, 80, 20) == (30, 20, 70, 60)
    assert C.square_box(100, 80, 60) == (0, 0, 100, 80)


def test_peaks_match_skimage_peak_local_max(rng):
    """The fast path's peaks follow peak_local_max(min_distance=20, labels=mask) exactly."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    for trial in range(4):
        h, w = 150, 170
        yy, xx = np.mgrid[:h, :w]
        mask = np.zeros((h, w), np.uint8)
        for _ in range(6):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(6, 35)
            mask[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = 255
        dist = ndimage.distance_transform_edt(mask)
        want = {tuple(p) for p in peak_local_max(dist, min_distance=20, labels=mask)}
        ys, xs = C._peaks(dist, mask, 20)
        assert set(zip(ys.tolist(), xs.tolist())) == want, trial


def _greedy_reference(ys, xs, b):
    keep = []
    for i in range(len(ys)):
        if all(abs(ys[i] - ys[j]) >= b or abs(xs[i] - xs[j]) >= b for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("n", [300, 1500])  # the conflict-matrix path and the incremental path
def test_greedy_spacing_matches_reference(rng, n):
    ys, xs = rng.integers(0, 300, n), rng.integers(0, 300, n)
    got = C._greedy_spacing(ys, xs, 20)
    assert got.tolist() == _greedy_reference(ys.tolist(), xs.tolist(), 20)


def test_bench_crop_reports_both_methods(tmp_path):
    from bloodsmear.io import write_image_atomic
    from bloodsmear.preprocess.crop_batch import bench_crop

    for i in range(3):
        write_image_atomic(tmp_path / f"im{i}.png", field(discs=[((100 + 5 * i, 100), 30 + 5 * i)]))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    b = bench_crop(tmp_path, repeat=2, progress=False)
    assert b.images == 3 and b.repeat == 2 and len(b.skipped) == 1
    assert b.paper_ms > 0 and b.fast_ms > 0 and b.ratio == pytest.approx(b.paper_ms / b.fast_ms)
    assert 0.9 <= b.iou <= 1.0 and b.iou_min <= b.iou
    assert set(b.to_dict()) >= {"paper_ms", "fast_ms", "ratio", "iou", "images"}


@pytest.mark.realdata
def test_fast_matches_paper_on_pbc_originals(data_root):
    from conftest import need

    from bloodsmear.io import list_images, read_image

    files = list_images(need(data_root, "pbc-original-sample"))[::40]  # 20 images, every class
    assert len(files) == 20
    ious = []
    for f in files:
        rgb = read_image(f)
        p, q = C.paper_crop(rgb), C.fast_crop(rgb)
        assert p.found and q.found
        ious.append(box_iou(p.box, q.box))
    assert np.mean(ious) >= 0.95, ious
