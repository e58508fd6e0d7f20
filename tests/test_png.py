"""`bloodsmear.io.encode_png`: the lossless PNG writer of overlays and `write_image_atomic`."""

import io as pyio

import cv2
import numpy as np
import pytest
from PIL import Image

from bloodsmear.io import encode_png, read_image, write_image_atomic


def _shapes():
    return [(1, 1, 3), (1, 7, 3), (9, 1, 3), (37, 53, 3), (64, 48), (5, 3)]


@pytest.mark.parametrize("shape", _shapes())
@pytest.mark.parametrize("level", [0, 1, 3])
def test_png_round_trip_is_lossless_in_opencv_and_pillow(shape, level):
    rng = np.random.default_rng(sum(shape) + level)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[..., :1] = 255  # some runs of equal bytes, some wrap-around differences (255 - 0)
    before = img.copy()
    data = encode_png(img, level=level)
    assert np.array_equal(img, before)  # the input is not modified
    pil = np.asarray(Image.open(pyio.BytesIO(data)))
    assert pil.shape == img.shape and np.array_equal(pil, img)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    cv = cv if cv.ndim == 2 else cv[..., ::-1]  # OpenCV gives BGR
    assert np.array_equal(cv, img)


def test_png_of_a_view_is_the_png_of_its_copy():
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    view = img[5:30:2, 10:50]  # not contiguous
    assert encode_png(view) == encode_png(view.copy())


def test_png_compresses_a_flat_image():
    assert len(encode_png(np.full((300, 400, 3), 200, np.uint8))) < 5_000


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4,), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_png_refuses_what_it_cannot_write(bad):
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(bad)


def test_write_image_atomic_png_reads_back(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    dest = write_image_atomic(tmp_path / "a" / "x.png", img)
    assert np.array_equal(read_image(dest), img)
    assert [p.name for p in dest.parent.iterdir()] == ["x.png"]  # no temp file left
