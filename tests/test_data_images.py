"""Bad image files: read_image raises InputError naming the file; folder readers skip non-images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bloodsmear.data.folders import fill_sizes, header_size, read_folders
from bloodsmear.errors import InputError
from bloodsmear.io import image_size, read_image, write_image_atomic


def test_rgb_jpeg_and_png_read(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    for name in ("a.png", "a.jpg"):
        out = read_image(write_image_atomic(tmp_path / name, rgb))
        assert out.shape == (6, 8, 3) and out.dtype == np.uint8 and out[..., 0].mean() > 150 > out[..., 2].mean()
        assert header_size(tmp_path / name) == (8, 6) == image_size(tmp_path / name)


def test_not_an_image(tmp_path):
    f = tmp_path / ".DS_169665.jpg"
    f.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    with pytest.raises(InputError, match=r"\.DS_169665\.jpg: not a decodable image"):
        read_image(f)
    with pytest.raises(InputError, match="DS_169665"):
        header_size(f)
    with pytest.raises(InputError, match="empty file"):
        (tmp_path / "e.png").write_bytes(b"")
        read_image(tmp_path / "e.png")
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.jpg")


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    f = write_image_atomic(tmp_path / "t.jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.jpg: truncated JPEG"):
        read_image(f)


def test_grayscale_rgba_16bit(tmp_path):
    g = tmp_path / "g.png"
    cv2.imwrite(str(g), np.full((5, 5), 128, np.uint8))
    with pytest.raises(InputError, match="g.png: grayscale"):
        read_image(g)
    assert read_image(g, allow_gray=True).shape == (5, 5, 3)
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.full((5, 5, 4), 100, np.uint8))
    out = read_image(rgba)  # a see-through alpha is composited on white (with a warning naming the file)
    assert out.shape == (5, 5, 3) and out.dtype == np.uint8 and int(out[0, 0, 0]) > 100
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((5, 5, 3), 60000, np.uint16))
    out = read_image(deep)  # 16-bit is scaled to 8 bit
    assert out.dtype == np.uint8 and abs(int(out[0, 0, 0]) - round(60000 / 257)) <= 1


def test_unreadable_header_recorded_by_fill_sizes(tmp_path):
    (tmp_path / "d" / "monocyte").mkdir(parents=True)
    (tmp_path / "d" / "monocyte" / "bad.jpg").write_bytes(b"garbage bytes, not a jpeg")
    write_image_atomic(tmp_path / "d" / "monocyte" / "ok.jpg", np.zeros((4, 7, 3), np.uint8))
    ds = read_folders(tmp_path / "d")
    errors = fill_sizes(ds)
    assert len(errors) == 1 and "bad.jpg" in errors[0] and ds.skipped == errors
    assert {im.name: (im.width, im.height) for im in ds.images} == {"bad.jpg": (0, 0), "ok.jpg": (7, 4)}
